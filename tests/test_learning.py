"""The learning loop's numbers: calibrated confidences and accuracy estimated without labels."""
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import outside_holdout

from cifar import bench_retrain, config, data, evaluate, predict, serving, train
from cifar.learning import calibration, estimate
from cifar.logits import softmax
from cifar.monitor import AGREEMENT_EVERY_S, Monitor
from cifar.registry import Registry
from cifar.retrain_rules import RETRAIN


def test_ece_of_known_cases():
    p = np.full((10, 10), 0.1 / 9)
    p[:, 0] = 0.9                                   # every answer 90% sure
    right, wrong = np.zeros(10, int), np.ones(10, int)
    assert evaluate.ece(p, right) == pytest.approx(0.1)       # 100% right: 10 points under-confident
    half = np.array([0] * 9 + [1])
    assert evaluate.ece(p, half) == pytest.approx(0.0, abs=1e-6)  # 90% right at 90%: perfect
    assert evaluate.ece(p, wrong) == pytest.approx(0.9)


def test_ece_by_hand_on_ten_predictions_in_two_bins():
    """Five answers 95% sure (4 right) fall in the top one of 15 bins, five 55% sure (3 right) in
    bin 8: ECE = 5/10 x |0.8 - 0.95| + 5/10 x |0.6 - 0.55| = 0.075 + 0.025 = 0.1."""
    p = np.zeros((10, 10))
    p[:5], p[5:] = 0.05 / 9, 0.45 / 9
    p[:5, 0], p[5:, 0] = 0.95, 0.55
    labels = np.array([0, 0, 0, 0, 3, 0, 0, 0, 3, 3])
    table = evaluate.reliability(p, labels)
    assert table["counts"][14] == 5 and table["counts"][8] == 5 and sum(table["counts"]) == 10
    assert table["accuracy"][14] == pytest.approx(0.8) and table["accuracy"][8] == pytest.approx(0.6)
    assert table["ece"] == pytest.approx(0.1)


def test_temperature_undoes_a_known_scaling():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, (4000, 10))
    labels = np.array([rng.choice(10, p=row) for row in softmax(true_logits)])
    fitted = calibration.fit_temperature(true_logits / 4.0, labels)   # logits shrunk 4x, as label smoothing does
    assert fitted == pytest.approx(0.25, rel=0.1)


def test_calibration_of_a_tiny_model_lowers_its_ece_on_images_it_did_not_see(test_split):
    x, y = test_split
    # 100 images, 40 epochs: over-fitted, so over-confident whatever the CPU's threads (200 images and
    # 30 epochs came out near calibrated with one thread, ECE 0.033, and failed)
    picks = data.balanced_subset(y, 10, seed=0)
    result = train.train_from_scratch(x[picks], y[picks], epochs=40, widths=(16, 32, 32), seed=0)
    model = predict.Predictor(result.model, tta_level=1)
    held_x, held_y = data.holdout()
    fitted = calibration.fit(model.logits(held_x[:1000]), held_y[:1000], 1, "first 1,000 held-out images")
    unseen = np.setdiff1d(np.arange(len(y)), picks)[::3]          # ~3,300 images of every class
    logits = model.logits(x[unseen])
    before = evaluate.ece(softmax(logits), y[unseen])
    after = evaluate.ece(softmax(logits, fitted["temperature"]), y[unseen])
    assert fitted["temperature"] > 1 and after < before - 0.05, (before, after, fitted["temperature"])
    assert (softmax(logits, fitted["temperature"]).argmax(1) == logits.argmax(1)).all()


def _shipped(level: int) -> predict.Predictor:
    return serving.load_predictor(Registry(config.shipped_models_dir()).current(), tta_level=level)


@pytest.fixture(scope="module")
def shipped():
    """The shipped version at one view (the suite's level, CIFAR_TTA; a sixth of 6 views' work)."""
    return _shipped(0)


@pytest.fixture(scope="module")
def shipped_six_views():
    return _shipped(2)


def test_the_shipped_temperature_is_the_fit_on_the_held_out_images_and_calibrates_them(shipped):
    x, y = data.holdout()
    assert shipped.calibration["tta_level"] == 0 and shipped.temperature < 1  # stored with the version, by level
    logits = shipped.logits(x)
    # Fitted on these images (on Keras' logits; the served runtime's differ a little: 0.536 vs 0.551 on int8)
    assert calibration.fit_temperature(logits, y) == pytest.approx(shipped.temperature, rel=0.05)
    calibrated = softmax(logits, shipped.temperature)
    assert evaluate.ece(softmax(logits), y) > 0.15      # raw: far less sure than right (label smoothing)
    assert evaluate.ece(calibrated, y) < 0.03               # calibrated: within 3 points in every bin on average
    assert (calibrated.argmax(1) == logits.argmax(1)).all()             # accuracy untouched


def test_estimate_on_a_synthetic_case_with_a_known_answer():
    sure, unsure = np.full(10, 0.002), np.full(10, 0.09)
    sure[0], unsure[0] = 0.982, 0.19
    reference = np.array([sure] * 80 + [unsure] * 20)
    labels = np.array([0] * 80 + [1] * 20)         # the sure ones right, the unsure ones wrong: 80%
    threshold = estimate.fit_threshold(reference, labels)
    target = np.array([sure] * 30 + [unsure] * 70)
    assert estimate.estimate_accuracy(target, threshold) == pytest.approx(0.3)
    assert estimate.estimate_accuracy(reference, threshold) == pytest.approx(0.8)
    assert estimate.estimate_accuracy(np.zeros((0, 10)), threshold) is None
    # With a copy adapted to the images the estimate is the lower of its agreement and COT.
    # Served answers spread evenly over the ten classes, sure ones: COT moves each image to its own
    # class at a cost of 1 - 0.982, so 0.982; the copy gives each served answer 0.4: the estimate is 0.4.
    spread = np.array([np.roll(sure, i % 10) for i in range(100)])
    adapted = np.full((100, 10), 0.6 / 9)
    adapted[np.arange(100), np.arange(100) % 10] = 0.4
    assert estimate.transport(spread) == pytest.approx(0.982)
    assert estimate.estimate_accuracy(spread, threshold, adapted) == pytest.approx(0.4)
    # Every answer class 0 (30 sure, 70 unsure), the copy again 0.4 on it. Even classes mean only 10
    # of the 100 can be class 0: the 10 cheapest to move there are sure ones (cost 0.018 each); the
    # other 20 sure ones go elsewhere at 0.998 and the 70 unsure at 0.91. Cost (0.18 + 19.96 + 63.7)
    # / 100 = 0.8384: COT says 0.1616, below the copy's 0.4, and is the estimate.
    adapted = np.full((100, 10), 0.6 / 9)
    adapted[:, 0] = 0.4
    assert estimate.estimate_accuracy(target, threshold, adapted) == pytest.approx(0.1616, abs=1e-6)
    assert estimate.agreement(target, adapted) == pytest.approx(0.4)


def test_confidence_optimal_transport_of_cases_worked_by_hand():
    # Two classes, two images: both sure of class 0, but one of them must be class 1: half right.
    assert estimate.transport(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)
    # 0.8 / 0.2 and 0.3 / 0.7: each to its own class costs 0.2 + 0.3, the swap 0.8 + 0.7: 1 - 0.25.
    assert estimate.transport(np.array([[0.8, 0.2], [0.3, 0.7]])) == pytest.approx(0.75)
    # Three classes, three images all 0.5 / 0.5 / 0 over classes 0 and 1: one must go to class 2 at
    # cost 1, the others at 0.5: (0.5 + 0.5 + 1) / 3 = 2/3 of cost, a third right.
    assert estimate.transport(np.array([[0.5, 0.5, 0.0]] * 3)) == pytest.approx(1 / 3)
    # More images than it solves on, in a regular order (an evenly spaced pick would take only one kind).
    many = np.array([[0.8, 0.2], [0.3, 0.7]] * (estimate.TRANSPORT_MAX_IMAGES + 1))
    assert estimate.transport(many) == pytest.approx(0.75, abs=0.01)


def test_the_adapted_copy_takes_its_single_view_temperature_scaled():
    """The copy sees one view: its temperature is the version's level-0 calibration (times the
    scale chosen on the held-out corruptions), wherever the served level's calibration comes from."""
    scale = estimate.COPY_TEMPERATURE_SCALE
    stored = {"tta_level": 2, "temperature": 0.52, "by_level": {"0": {"tta_level": 0, "temperature": 0.55},
                                                                "1": {"tta_level": 1, "temperature": 0.53}}}
    version = SimpleNamespace(id="v", calibration=stored)
    for level in (2, 1, 0):  # served at 6 views, flip only, the image alone
        served = calibration.for_version(version, level)
        assert served["tta_level"] == level
        assert estimate.copy_temperature(served) == pytest.approx(0.55 * scale)
    assert estimate.copy_temperature({"tta_level": 1, "temperature": 0.53}) == pytest.approx(0.53 * scale)  # unknown


def test_estimate_of_the_shipped_model_on_clean_and_shifted_images(shipped, test_split):
    x, y = test_split
    candidates = outside_holdout(x)
    outside = candidates[data.balanced_subset(y[candidates], 100, seed=5)]   # 1,000, class-balanced
    clean = shipped.predict_arrays(x[outside])
    true_clean = float((clean.argmax(1) == y[outside]).mean())
    estimated_clean = estimate.estimate_served(shipped, clean)
    assert abs(estimated_clean - true_clean) <= 0.03, (estimated_clean, true_clean)
    pixelated = bench_retrain.apply_shift("pixelate", x[outside], seed=0)
    shifted = shipped.predict_arrays(pixelated)
    true_shifted = float((shifted.argmax(1) == y[outside]).mean())
    estimated_shifted = estimate.estimate_served(shipped, shifted, pixelated)    # with the adapted copy's opinion
    assert estimated_shifted < estimated_clean - 0.3
    assert abs(estimated_shifted - true_shifted) <= 0.06, (estimated_shifted, true_shifted)
    assert estimate.estimate_served(shipped, shifted) > true_shifted + 0.1      # confidence alone is fooled here
    # 1,000 clean pictures of one class (label shift): the adapted copy fails (its statistics assume
    # the training mix), confidence says they look like the training images, and the estimate trusts it.
    cars = np.flatnonzero(y == 1)[:1000]
    served = shipped.predict_arrays(x[cars])
    true_cars = float((served.argmax(1) == 1).mean())
    assert abs(estimate.estimate_served(shipped, served, x[cars]) - true_cars) <= 0.03, true_cars
    copy = estimate.adapted_view(shipped.model, x[cars], shipped.temperature)
    assert estimate.agreement(served, copy) < true_cars - 0.3                   # what the copy alone would say


def test_a_fifth_of_the_unlabeled_uploads_is_held_back_where_that_is_200_or_more():
    from cifar.learning import retrain

    few = np.array([False] * 500 + [True] * 999)
    assert not retrain.hold_back(few, seed=1).any()                   # a fifth is 199: too few to judge on
    uploads = np.array([False] * 500 + [True] * 1000)
    held = retrain.hold_back(uploads, seed=1)
    assert held.sum() == 200 and not held[:500].any()                 # a person's labels always train
    again = retrain.hold_back(uploads, seed=2)
    assert again.sum() == 200 and (again != held).any()               # each retrain draws anew


def test_after_a_retrain_the_estimate_is_judged_on_the_held_back_uploads(shipped_six_views, test_split):
    """800 clean and 200 pixelated uploads, the pixelated ones held back: the estimate is of those
    200 (far under the clean ones' 90%), and near their true accuracy. (Not a retrain: what holding
    back buys after one is measured by bench-retrain, RESULTS.md.) At 6 views, as an AMX CPU serves:
    there it misses by 4 points, at one view by 8 (2026-12-03), both within the 10 asserted."""
    from cifar.learning import retrain

    shipped = shipped_six_views
    x, y = test_split
    picks = data.balanced_subset(y, 100, seed=7)
    uploads = x[picks].copy()
    held_back = np.zeros(len(picks), bool)
    held_back[::5] = True                                             # 20 of each class
    uploads[held_back] = bench_retrain.apply_shift("pixelate", uploads[held_back], seed=0)
    true = float((shipped.predict_arrays(uploads[held_back]).argmax(1) == y[picks][held_back]).mean())
    after = retrain.estimate_after(shipped, uploads, held_back)
    assert after < 0.75 and abs(after - true) <= 0.1, (after, true)
    everything = retrain.estimate_after(shipped, uploads, np.zeros(len(picks), bool))
    assert everything > after + 0.1                                   # judged on all 1,000, mostly clean


def test_monitor_alerts_when_the_field_estimate_drops():
    reference = {"atc_threshold": -0.2, "reference_accuracy": 0.9, "confidence_histogram": [0] * 19 + [10]}
    prior = {c: 0.1 for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
    monitor = Monitor(predictions=100)
    sure = np.full((60, 10), 0.001)
    sure[:, 3] = 0.991
    monitor.observe(sure, 0.02, reference["atc_threshold"])
    field = monitor.field(reference, prior)
    assert field["predictions"] == 60 and field["estimated_accuracy"] == 1.0 and not field["alert"]
    assert field["class_mix"]["cat"]["served"] == 1.0 and field["timeline"][0]["predictions_per_minute"] > 0
    monitor.observe(np.full((100, 10), 0.1), 0.02, reference["atc_threshold"])   # uniform: nobody is sure
    field = monitor.field(reference, prior)
    assert field["predictions"] == 100 and field["estimated_accuracy"] == 0.0 and field["alert"]
    monitor.reset_window()
    assert monitor.field(reference, prior)["estimated_accuracy"] is None


def test_the_field_estimate_turns_to_the_adapted_copys_agreement_once_200_images_are_scored():
    reference = {"atc_threshold": -0.2, "reference_accuracy": 0.9, "confidence_histogram": [0] * 20}
    prior = {c: 0.1 for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
    monitor = Monitor(predictions=300)
    unsure = np.full((150, 10), 0.5 / 9)
    unsure[np.arange(150), np.arange(150) % 10] = 0.5     # below ATC's threshold: ATC counts none right
    pictures = np.zeros((150, 32, 32, 3), np.uint8)
    monitor.observe(unsure, 0.02, reference["atc_threshold"], pictures)
    assert monitor.unscored() is None                     # 150 kept: too few for an adapted copy
    monitor.observe(unsure[:100], 0.02, reference["atc_threshold"], pictures[:100])
    ids, kept, classes = monitor.unscored()
    assert len(ids) == len(kept) == 250 and (classes == np.r_[np.arange(150), np.arange(100)] % 10).all()
    monitor.score(ids[:220], np.full(220, 0.25))          # the copy gives the served class 0.25 on average
    field = monitor.field(reference, prior)               # COT: every answer to its own class, 0.5
    assert field["estimate_method"] == "agreement" and field["estimate_scored"] == 220
    assert field["estimated_accuracy"] == 0.25 and field["alert"]       # not ATC's 0.0, nor COT's 0.5
    assert field["timeline"][-1]["estimated_accuracy"] == 0.25
    assert monitor.unscored() is None                     # scored a moment ago: not again so soon
    monitor.scored_at -= AGREEMENT_EVERY_S + 1
    assert len(monitor.unscored()[0]) == 250              # 30 still unscored

    one_class = np.full((300, 10), 0.5 / 9)
    one_class[:, 3] = 0.5                                 # every answer "cat": at most a tenth of them can be
    monitor.observe(one_class, 0.02, reference["atc_threshold"], np.zeros((300, 32, 32, 3), np.uint8))
    monitor.score(monitor.unscored()[0], np.full(300, 0.25))
    field = monitor.field(reference, prior)               # COT: 30 to "cat" at 0.5, 270 elsewhere at 1 - 0.5/9
    assert field["estimate_method"] == "transport" and field["estimated_accuracy"] == pytest.approx(0.1, abs=1e-4)
    assert field["timeline"][-1]["estimated_accuracy"] == pytest.approx(0.1, abs=1e-4)
    monitor.scored_at -= AGREEMENT_EVERY_S + 1

    sure = np.full((300, 10), 0.001)
    sure[:, 3] = 0.991                                    # the window turns to images ATC counts right: 1.0 >= 0.9 - 0.05
    monitor.observe(sure, 0.02, reference["atc_threshold"], np.zeros((300, 32, 32, 3), np.uint8))
    assert monitor.unscored(reference["reference_accuracy"]) is None      # familiar: no copy is made for it
    monitor.score(monitor.unscored()[0], np.full(300, 0.25))               # (were it scored anyway)
    field = monitor.field(reference, prior)
    assert field["estimate_method"] == "atc" and field["estimate_scored"] == 300 and field["estimated_accuracy"] == 1.0
    assert field["looks_familiar"]
    monitor.reset_window()                                # a new model: nothing kept describes it
    assert monitor.unscored() is None and monitor.field(reference, prior)["estimated_accuracy"] is None

def test_the_training_budget_leaves_room_for_the_work_after_training():
    """The retrain prices what follows training at this machine's measured Keras speed: a fast
    CPU keeps most of the 3 minutes for training, a slow one less, never under the minimum."""
    from cifar.learning import retrain

    fast = retrain.training_budget(12, 1 / 1000, 1 / 700, uploads=1000, views=6, train_images=4000)   # AMX-like
    slow = retrain.training_budget(30, 1 / 400, 1 / 300, uploads=1000, views=6, train_images=4000)    # AVX-512 f32
    slowest = retrain.training_budget(60, 1 / 150, 1 / 100, uploads=1000, views=6, train_images=4000)
    assert fast > slow > slowest == RETRAIN["min_train_seconds"]
    assert 12 + fast + 30 < RETRAIN["seconds"]  # the judging, check and estimates still fit
    # The refreshes cost what they pass: fewer uploads, less to refresh, more time left to train.
    assert retrain.training_budget(30, 1 / 400, 1 / 300, uploads=1000, views=6, train_images=3500) == slow
    assert retrain.training_budget(30, 1 / 400, 1 / 300, uploads=300, views=6, train_images=3300) > slow
