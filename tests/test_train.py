"""A few training steps on a few hundred real images give a model that loads back and learns."""
import time
import types

import keras
import numpy as np
import pytest

from cifar import data, model as net, predict, registry, train, versions
from cifar.learning.pseudo_labels import pseudo_labels


def test_short_training_learns_and_round_trips(test_split, tmp_path):
    x, y = test_split
    picks = data.balanced_subset(y, 30, seed=0)          # 300 real CIFAR-10 images
    result = train.train_from_scratch(x[picks], y[picks], epochs=8, widths=(32, 64, 64), seed=0)
    assert result.history["loss"][-1] < result.history["loss"][0]
    model_predictor = predict.Predictor(result.model, tta_level=1)
    accuracy = (model_predictor.predict_arrays(x[picks]).argmax(1) == y[picks]).mean()
    assert accuracy > 0.2  # chance is 0.1

    reg = registry.Registry(tmp_path / "reg")
    version = versions.save_model_version(reg, "scratch", result.model, {"train_count": 300},
                                          {"accuracy": float(accuracy)}, result.history)
    loaded = predict.Predictor.load(version.model_path, tta_level=1)
    np.testing.assert_allclose(loaded.predict_arrays(x[picks[:50]]), model_predictor.predict_arrays(x[picks[:50]]),
                               atol=1e-5)
    for name in ("model.keras", "metadata.json", "metrics.json", "history.json", "README.md"):
        assert (version.path / name).exists()
    meta = version.metadata
    assert meta["file_size_bytes"] == version.model_path.stat().st_size and meta["libraries"]["keras"]


def test_augmentations_keep_shapes_and_flip_halves():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    mask = rng.random(64) < 0.5
    even, odd = train.alternating_flip(x, 0, mask), train.alternating_flip(x, 1, mask)
    assert np.array_equal(even[mask], x[mask, :, ::-1]) and np.array_equal(even[~mask], x[~mask])
    assert np.array_equal(odd[~mask], x[~mask, :, ::-1])
    shifted = train.random_translate(x, 2, rng)
    assert shifted.shape == x.shape and not np.array_equal(shifted, x)


def test_training_batches_keep_every_image_once_in_order_and_do_not_autotune():
    """fit shuffles each epoch itself (seeded) and hands Keras a pipeline that does not autotune:
    Keras' own one waited seconds for its autotuner at the end of every epoch."""
    x = np.arange(10 * 32 * 32 * 3, dtype=np.uint32).reshape(10, 32, 32, 3).astype(np.uint8)
    y = train.one_hot(np.arange(10))
    pipeline = train.batches(x, y, batch_size=4)
    assert pipeline.options().autotune.enabled is False
    got = list(pipeline.as_numpy_iterator())
    assert [len(b[0]) for b in got] == [4, 4, 2]  # the last batch partial, nothing dropped
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]).argmax(1), np.arange(10))


def test_batchnorm_refresh_gives_the_statistics_of_all_the_images_once():
    """1,000 images in two chunks of 500: the first BatchNorm's moving mean becomes the mean of
    its inputs over all 1,000 (the chunks' means, equally weighted), and its momentum is kept."""
    keras.utils.set_random_seed(0)
    model = net.build_network((16, 32, 32))
    x = np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
    x[:500] //= 2  # two chunks that differ: an exponential average would lean to one of them
    bn = model.get_layer("block1_bn1")
    inputs = keras.Model(model.inputs[0], bn.input)(x.astype(np.float32), training=False)
    expected = np.asarray(inputs, np.float64).mean(axis=(0, 1, 2))
    train.refresh_batchnorm(model, x)
    assert train.refresh_images(len(x)) == 1000 and train.refresh_images(50_000) == 3000
    assert bn.momentum == net.HYP["bn_momentum"]
    np.testing.assert_allclose(np.asarray(bn.moving_mean), expected, rtol=1e-3, atol=1e-3)


def test_pseudo_labels_respect_threshold():
    p = np.array([[0.95, 0.05] + [0] * 8, [0.6, 0.4] + [0] * 8])
    labels, mask = pseudo_labels(p, 0.9)
    assert labels.tolist() == [0, 0] and mask.tolist() == [True, False]


def test_pseudo_labels_keep_each_classs_surest_share_when_none_clear_the_threshold():
    p = np.full((6, 10), 0.05)
    for row, (label, confidence) in enumerate([(0, 0.5), (0, 0.4), (0, 0.3), (0, 0.2), (3, 0.35), (3, 0.3)]):
        p[row, label] = confidence
    labels, mask = pseudo_labels(p, 0.9, min_fraction=0.5)
    assert labels.tolist() == [0, 0, 0, 0, 3, 3]
    assert mask.tolist() == [True, True, False, False, True, False]


def test_batchnorm_biases_take_bias_scaler_times_larger_steps():
    import keras

    from cifar import model as net

    def one_step(scaler):
        keras.utils.set_random_seed(0)
        m = net.build_network((8, 8, 8))
        before = {v.path: v.numpy().copy() for v in m.trainable_variables}
        optimizer = net.BiasScaledSGD(bias_scaler=scaler, learning_rate=0.1, momentum=0.0)
        x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype("float32")
        y = train.one_hot(np.arange(16) % 10)
        import tensorflow as tf
        with tf.GradientTape() as tape:
            loss = net.make_loss()(y, m(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
        return {v.path: v.numpy() - before[v.path] for v in m.trainable_variables}

    plain, scaled = one_step(1.0), one_step(64.0)
    np.testing.assert_allclose(scaled["block1_bn1/beta"], 64 * plain["block1_bn1/beta"], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(scaled["block1_conv1/kernel"], plain["block1_conv1/kernel"], rtol=1e-5, atol=1e-8)
    assert np.abs(plain["block1_bn1/beta"]).max() > 0


def test_pseudo_labels_keep_none_when_too_few_are_recognised():
    p = np.full((20, 10), 0.08)
    p[:, 3] = 0.28                       # every image a weak "cat"
    p[0, 3], p[0, 0] = 0.9, 0.01         # one confident image: 5% recognised
    labels, mask = pseudo_labels(p, 0.75, min_fraction=0.5, min_recognised=0.1)
    assert (labels == 3).all() and not mask.any()
    labels, mask = pseudo_labels(p, 0.75, min_fraction=0.5, min_recognised=0.05)
    assert mask.sum() == 10              # at the bar: the class's surest half is kept


def test_lookahead_moves_weights_to_their_average_every_few_steps_and_ends_on_it():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    kernel = model.layers[0].kernel
    kernel.assign([[0.0]])
    lookahead = train.Lookahead(total_steps=10)
    lookahead.set_model(model)
    lookahead.on_train_begin()                      # the average starts at 0
    assert net.HYP["lookahead"] == (5, 0.95, 3.0)   # every 5 steps; decay 0.95^5 x (t/T)^3
    kernel.assign([[1.0]])
    for step in range(4):
        lookahead.on_train_batch_end(step)
    assert kernel.numpy()[0, 0] == 1.0              # between pulls the weights train freely
    lookahead.on_train_batch_end(4)                 # step 5 of 10: pulled to the average
    # By hand: decay 0.95^5 x (5/10)^3 = 0.7737809375 x 0.125 = 0.0967226171875; the average was 0,
    # the weight 1: 0.0967226 x 0 + (1 - 0.0967226) x 1.
    np.testing.assert_allclose(kernel.numpy()[0, 0], 0.9032773828125, rtol=1e-6)
    lookahead.on_train_begin()                      # a new epoch keeps the average
    kernel.assign([[2.0]])
    for step in range(5):
        lookahead.on_train_batch_end(step)
    np.testing.assert_allclose(kernel.numpy()[0, 0], 0.9032773828125, rtol=1e-6)  # last step: the average itself


def test_the_time_box_follows_the_recipe_schedule_and_stops_at_its_budget(test_split):
    """On a fast CPU the time box is the step schedule itself; on a slow one (here: a budget far
    below what the steps need) training ends early, at the schedule's last learning rate."""
    assert net.HYP["schedule"] == (0.2, 0.23, 0.07)  # x peak: 0.2 at the start, 1 at 23% of the steps, 0.07 at the end
    schedule = net.TriangleSchedule(1.0, 100, *net.HYP["schedule"])
    box = train.TimeBox(100, None, 1.0)
    # By hand: step 10 is 0.2 + 0.8 x 0.10/0.23 = 0.547826 up the warm-up; step 50 is
    # 1 - 0.93 x (0.50-0.23)/(1-0.23) = 0.673896 down the decay.
    for step, expected in ((0, 0.2), (10, 0.547826), (23, 1.0), (50, 0.673896), (100, 0.07)):
        box.steps = step
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-6)
        assert box.learning_rate(box.progress()) == pytest.approx(expected, abs=1e-6)

    # With 7 s of a 10-s budget spent, a 4-s step would end past it: stop now, not one step late.
    box, state = train.TimeBox(100, 10.0, 1.0), types.SimpleNamespace(stop_training=False, optimizer=types.SimpleNamespace())
    box.set_model(state)
    box.started, box.step_began = time.time() - 7, time.time() - 4
    box.on_train_batch_end(0)
    assert box.done and state.stop_training and box.progress() < 1.0
    box, state.stop_training = train.TimeBox(100, 10.0, 1.0), False
    box.set_model(state)
    box.started, box.step_began = time.time() - 5, time.time() - 4  # 5 + 4 < 10: one more fits
    box.on_train_batch_end(0)
    assert not box.done and not state.stop_training

    x, y = test_split
    picks = data.balanced_subset(y, 60, seed=0)
    model = train.train_from_scratch(x[picks], y[picks], epochs=1, widths=(16, 32, 32)).model
    result = train.fit(model, x[picks], y[picks], epochs=20, batch_size=64, lr_scale=0.05, time_budget_s=0.5)
    run, planned = result.history["steps"]
    assert planned == 20 * 10 and 1 <= run < planned and result.epochs < 20
    assert abs(float(model.optimizer.learning_rate) - 0.05 * net.HYP["lr"] * net.HYP["schedule"][2]) < 1e-4
