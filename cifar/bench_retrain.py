"""Distribution-shift benchmark of retraining: does a retrain on unlabeled uploads learn?

The 10,000 test images split class-balanced into a 'field' half and an 'eval' half. For each
shift, 1,000 shifted field images go, unlabeled, through the app's own upload and retrain code;
the retrained version is scored on the shifted and the clean eval half.

    python -m cifar bench-retrain [--shifts noise,blur,contrast,haze,jpeg] [--out DIR]
    python -m cifar bench-retrain --shifts jpeg --labeled   # true labels: what pseudo-labels could reach
"""
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageFilter

from . import CLASSES, config, corruptions, data, evaluate, serving
from .learning.adapt import upload_probabilities
from .learning.estimate import adapted_view, agreement, copy_temperature, estimate_accuracy, transport
from .learning.pseudo_labels import pseudo_labels
from .registry import Registry
from .retrain_rules import RETRAIN
from .service import Service, UserError

# name -> (strength, what it does). Each strength is chosen to cost the shipped model 10 points
# or more without leaving it at chance (the table shows the cost); `calibrate` measures that.
SHIFTS = {
    "noise": (6.0, "gaussian noise, sigma {:g} of 255"),
    "blur": (1.0, "gaussian blur, radius {:g} px"),
    "contrast": (0.35, "contrast cut to {:.0%}"),
    "haze": (0.55, "a bright, uneven veil over {:.0%} of the picture"),
    "jpeg": (10, "JPEG quality {:d}"),
    # Two more kinds for the accuracy estimate: a colour cast (a camera's white balance) and
    # pixelation (a low-resolution source scaled up).
    "colour": (0.6, "colour cast: red x(1+{0:g}), blue x(1-{0:g})"),
    "pixelate": (16, "pixelated to {:d}x{:d} px and scaled back"),
}
# Strengths tried by `python -m cifar bench-retrain --calibrate`.
CANDIDATES = {"noise": (6.0, 9.0, 12.0, 16.0), "blur": (0.8, 1.0, 1.2, 1.5), "contrast": (0.15, 0.25, 0.35),
              "haze": (0.45, 0.55, 0.65), "jpeg": (5, 10, 15), "colour": (0.3, 0.45, 0.6),
              "pixelate": (10, 12, 16)}
# Not a shift but a control: uniform random pixels, which the promotion rule must turn down.
JUNK = {"junk": (None, "uniform random pixels (control: must not be promoted)")}
# No shift: clean field images, the accuracy estimate's baseline and the cost of a needless retrain.
CLEAN = {"clean": (None, "no shift: clean test images")}
# The field's standard corruptions (cifar.corruptions), at severity 5 unless a strength says else:
# `--shifts corruptions` is the 15 reported ones, `--shifts held-out` the 4 for choosing settings.
# Named c10c-<corruption>: two of them (contrast, pixelate) share a name with this file's own shifts.
CORRUPTED = {f"c10c-{name}": (5, name.replace("_", " ") + " (imagecorruptions), severity {:d}")
             for name in (*corruptions.CORRUPTIONS, *corruptions.HELD_OUT)}
GROUPS = {group: [f"c10c-{name}" for name in names]
          for group, names in (("corruptions", corruptions.CORRUPTIONS), ("held-out", corruptions.HELD_OUT))}
ERROR_KEPT = 0.43  # Tent (ICLR 2021) left 18.6% of the source model's 43.5% error at severity 5
KINDS = {**CLEAN, **SHIFTS, **JUNK, **CORRUPTED}


def describe(name: str) -> str:
    strength, text = KINDS[name]
    return text.format(strength, strength)


def apply_shift(name: str, x: np.ndarray, seed: int = 0, strength=None) -> np.ndarray:
    if name not in KINDS:
        raise ValueError(f"unknown shift {name!r}; known: {', '.join(KINDS)}")
    strength = strength if strength is not None else KINDS[name][0]
    rng = np.random.default_rng(seed)
    pixels = x.astype(np.float32)
    if name == "clean":
        return x.copy()
    if name in CORRUPTED:
        return corruptions.corrupt(x, name.removeprefix("c10c-"), int(strength), seed=seed)
    if name == "junk":
        return rng.integers(0, 256, size=x.shape, dtype=np.uint8)
    if name == "pixelate":
        size = int(strength)
        return np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.Resampling.BOX)
                                    .resize((32, 32), Image.Resampling.NEAREST)) for i in x])
    if name == "blur":
        return np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(strength))) for i in x])
    if name == "jpeg":
        def recode(i):
            buffer = io.BytesIO()
            Image.fromarray(i).save(buffer, format="JPEG", quality=int(strength))
            return np.asarray(Image.open(buffer).convert("RGB"))
        return np.stack([recode(i) for i in x])
    if name == "noise":
        out = pixels + rng.normal(0, strength, x.shape)
    elif name == "colour":
        out = pixels * np.array([1 + strength, 1.0, 1 - strength], np.float32)
    elif name == "contrast":
        mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
        out = mean + (pixels - mean) * strength
    else:  # haze: a smooth random veil, denser in places, towards a light grey
        veil = rng.normal(0, 1, (len(x), 4, 4, 1)).astype(np.float32)
        veil = np.stack([np.asarray(Image.fromarray(v[:, :, 0]).resize((32, 32), Image.Resampling.BICUBIC))
                         for v in veil])[..., None]
        alpha = np.clip(strength + 0.1 * veil, 0.3, 0.8)
        out = pixels * (1 - alpha) + 225 * alpha
    return np.clip(out, 0, 255).round().astype(np.uint8)


def calibrate(predictor, x, y, strengths: dict, report=print) -> dict:
    """Accuracy of `predictor` on x under each shift at each candidate strength."""
    results = {"clean": accuracy(predictor, x, y)}
    report(f"clean: {results['clean']:.4f}")
    for name, candidates in strengths.items():
        for strength in candidates:
            results[f"{name}@{strength}"] = accuracy(predictor, apply_shift(name, x, 2, strength), y)
            report(f"{name} at {strength}: {results[f'{name}@{strength}']:.4f}")
    return results


def accuracy(predictor, x, y) -> float:
    return float((predictor.predict_arrays(x).argmax(1) == y).mean())


def estimation(predictor, x, y, when: str) -> dict:
    """True accuracy on (x, y) and the model's own estimate of it without the labels, with its
    parts (ATC; the adapted copy's agreement; COT) so other rules can be scored on the same run."""
    probabilities = predictor.predict_arrays(x)
    true = float((probabilities.argmax(1) == y).mean())
    adapted = adapted_view(predictor.model, x, copy_temperature(predictor.calibration))
    threshold = predictor.calibration["atc_threshold"]
    estimated = estimate_accuracy(probabilities, threshold, adapted,  # as estimate_served, keeping the parts
                                  predictor.calibration.get("reference_accuracy"))
    return {f"true_{when}": true, f"estimated_{when}": estimated, f"estimate_error_{when}": estimated - true,
            f"atc_{when}": estimate_accuracy(probabilities, threshold),
            f"agreement_{when}": agreement(probabilities, adapted) if adapted is not None else None,
            f"transport_{when}": transport(probabilities)}


def split_field(y: np.ndarray, field_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which test images are uploaded (their indices and labels: `field_count`, class-balanced, from
    one half of each class) and which score the retrained model (the indices of the other half)."""
    field = data.balanced_subset(y, len(y) // 20, seed=0)              # half of each class
    uploads = field[data.balanced_subset(y[field], field_count // len(CLASSES), seed=1)]
    return uploads, y[uploads], np.setdiff1d(np.arange(len(y)), field)


def estimates_only(shifts: list[str], source, field_count: int = 1000, report=print) -> list[dict]:
    """The served model's label-free estimate on each shift's uploads against the truth, with its
    parts, and no retrain: the "before" columns of `run` in a minute instead of an hour."""
    x, y = data.load(source, "test")
    uploads, y_field, _ = split_field(y, field_count)
    os.environ["CIFAR_HOME"] = tempfile.mkdtemp(prefix="bench-estimates-")
    shipped = Service().predictor
    rows = []
    for shift in shifts:
        rows.append({"shift": shift, **estimation(shipped, apply_shift(shift, x[uploads], seed=1), y_field, "before")})
        r = rows[-1]
        report(f"{shift}: true {r['true_before']:.2%}, estimated {r['estimated_before']:.2%} "
               f"({100 * r['estimate_error_before']:+.1f}; ATC alone {r['atc_before']:.2%})")
    errors = [100 * abs(r["estimate_error_before"]) for r in rows if r["shift"] not in JUNK]
    report(f"estimate off by {np.mean(errors):.2f} points on average, {np.max(errors):.2f} at worst "
           f"({len(errors)} shifts, {field_count:,} images each)")
    return rows


def run(shifts: list[str], source, out: Path, field_count: int = 1000, eval_per_class: int | None = None,
        labeled: bool = False, review: int = 0, report=print) -> list[dict]:
    """`labeled`: upload the field images under class names, so the retrain trains on their true
    labels instead of pseudo-labels: the most any pseudo-labelling could give the same retrain.
    `review`: also retrain, per shift, after a simulated reviewer labeled the `review` uploads the
    Review tab shows first (through the app's own queue and label code), and after the same number
    of uploads chosen at random were labeled: what a person's labels buy, against chance."""
    x, y = data.load(source, "test")
    uploads, y_field, evaluation = split_field(y, field_count)
    x_field = x[uploads]
    if eval_per_class:  # a smaller eval half for quick comparisons of recipes
        evaluation = evaluation[data.balanced_subset(y[evaluation], eval_per_class, seed=2)]
    x_eval, y_eval = x[evaluation], y[evaluation]
    variants = ["labeled" if labeled else "pseudo"] + (["review", "random"] if review else [])
    rows = []
    clean_before = None
    for shift in shifts:
        shifted_field = apply_shift(shift, x_field, seed=1)
        shifted_eval = apply_shift(shift, x_eval, seed=2)
        before = None
        for variant in variants if shift not in JUNK else variants[:1]:
            os.environ["CIFAR_HOME"] = tempfile.mkdtemp(prefix=f"bench-{shift}-{variant}-")
            service = Service()
            shipped = service.predictor
            if before is None:
                clean_before = clean_before or accuracy(shipped, x_eval, y_eval)  # the same shipped model each time
                before = {"shifted_before": accuracy(shipped, shifted_eval, y_eval), "clean_before": clean_before}
            row = {"shift": shift, "description": describe(shift), "labels": VARIANTS[variant].format(review), **before,
                   **_retrain_once(service, shifted_field, y_field, variant, review)}
            retrained = row.pop("predictor")
            row["shifted_after"] = accuracy(retrained, shifted_eval, y_eval)
            row["clean_after"] = accuracy(retrained, x_eval, y_eval)
            app_estimate = row.pop("app_estimate") or {}
            if variant == variants[0]:  # the accuracy estimate (no labels) on the uploads, before and after
                row.update(estimation(shipped, shifted_field, y_field, "before"))
                row.update(estimation(retrained, shifted_field, y_field, "after"))
                if row["held_back"] and app_estimate.get("after") is not None:
                    # The retrain's own, on the uploads it held back, against the truth on other
                    # images of the same shift (what "images like these" means).
                    row["estimated_after_held_back"] = app_estimate["after"]
                    row["estimate_error_after_held_back"] = app_estimate["after"] - row["shifted_after"]
            lost = row["clean_before"] - row["shifted_before"]
            row["recovered_fraction"] = (row["shifted_after"] - row["shifted_before"]) / lost if lost > 0 else None
            seconds = row["retrain_seconds"]
            if shift in JUNK:
                row["recovered_fraction"], row["passes"] = None, not row["promoted"]
            elif shift in CORRUPTED:  # the bar: 57% of the error gone, as Tent on CIFAR-10-C
                row["passes"] = bool(1 - row["shifted_after"] <= ERROR_KEPT * (1 - row["shifted_before"])
                                     and row["clean_before"] - row["clean_after"] <= 0.005)
            elif shift in CLEAN:
                row["recovered_fraction"] = None
                row["passes"] = bool(row["clean_before"] - row["clean_after"] <= 0.005 and seconds <= 180)
            else:
                row["passes"] = bool(row["recovered_fraction"] is not None and row["recovered_fraction"] >= 0.5
                                     and row["clean_before"] - row["clean_after"] <= 0.005 and seconds <= 180)
            rows.append(row)
            report(f"{shift} ({row['labels']}): shifted {row['shifted_before']:.4f} -> {row['shifted_after']:.4f}, "
                   f"clean {row['clean_before']:.4f} -> {row['clean_after']:.4f}, pseudo {row['pseudo_coverage']:.0%} "
                   f"covered at {row['pseudo_accuracy'] or 0:.1%}, {seconds:.0f} s ({row['phases']}, steps "
                   f"{row['train_steps']}, served by {row['runtime']}), promoted {row['promoted']}")
    write_report(rows, out)
    return rows


VARIANTS = {"pseudo": "pseudo-labels", "labeled": "true labels (upper bound)",
            "review": "pseudo + {} reviewed", "random": "pseudo + {} random labeled"}


def _retrain_once(service, shifted_field: np.ndarray, y_field: np.ndarray, variant: str, review: int) -> dict:
    """Upload the field images into `service`'s fresh home, label some as `variant` says, retrain."""
    shipped = service.predictor
    # The pseudo-labels the app's retrain will assign, recomputed here to score them.
    probabilities = upload_probabilities(service.registry.current().model_path, shifted_field,
                                         shipped.tta_level, shipped.temperature)
    labels, confident = pseudo_labels(probabilities, RETRAIN["threshold"], RETRAIN["min_fraction"],
                                      RETRAIN["min_recognised"])
    folder = Path(os.environ["CIFAR_HOME"]) / "incoming"
    folder.mkdir()
    paths = []
    for i, image in enumerate(shifted_field):  # plain names carry no label; class-named ones do
        paths.append(folder / (f"{CLASSES[y_field[i]]}_{i:04d}.png" if variant == "labeled" else f"img{i:04d}.png"))
        Image.fromarray(image).save(paths[-1])
    service.upload(paths)
    truth = {hashlib.sha1(image.tobytes()).hexdigest(): CLASSES[label] for image, label in zip(shifted_field, y_field)}
    if variant == "review":    # the reviewer labels what the Review tab shows first, one by one
        chosen = [item["id"] for item in service.review_queue(review)]
    elif variant == "random":
        chosen = list(np.random.default_rng(3).choice(sorted(truth), size=review, replace=False))
    else:
        chosen = []
    for upload_id in chosen:
        service.label(upload_id, truth[upload_id])
    started = time.time()
    try:
        result = service.retrain()
    except UserError as exc:  # turned down before training: the current version stays
        result = {"version": service.registry.current().id, "promoted": False, "message": str(exc)}
    seconds = time.time() - started
    home = Path(os.environ["CIFAR_HOME"])
    retrained = serving.load_predictor(Registry(home / "models").get(result["version"]), shipped.tta_level,
                                      config.cache_dir())
    return {"predictor": retrained, "pseudo_coverage": float(confident.mean()),
            "pseudo_accuracy": float((labels[confident] == y_field[confident]).mean()) if confident.any() else None,
            "reviewed": len(chosen), "retrain_seconds": round(seconds, 1), "promoted": result["promoted"],
            "app_estimate": result.get("estimated_on_uploads"), "held_back": result.get("held_back", 0),
            "phases": result.get("phases"), "train_steps": result.get("train_steps"), "runtime": result.get("runtime")}


def write_report(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_retrain.json").write_text(json.dumps(rows, indent=2))
    lines = ["| shift | shifted eval before | after | clean eval before | after | recovered | pseudo-labels: "
             "coverage, accuracy | retrain s | promoted | passes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recovered = f"{r['recovered_fraction']:.0%}" if r["recovered_fraction"] is not None else "-"
        name = r["shift"] if r["labels"] in ("pseudo-labels", "true labels (upper bound)") else f"{r['shift']}, {r['labels']}"
        lines.append(f"| {name} ({r['description']}) | {r['shifted_before']:.2%} | {r['shifted_after']:.2%} | "
                     f"{r['clean_before']:.2%} | {r['clean_after']:.2%} | {recovered} | {r['pseudo_coverage']:.0%}, "
                     f"{(r['pseudo_accuracy'] or 0):.1%} | {r['retrain_seconds']} | {r['promoted']} | "
                     f"{'yes' if r['passes'] else 'no'} |")
    lines += ["", "Accuracy estimated without labels on the 1,000 uploaded images, against the truth; last, the "
              "retrain's own estimate of the new version on the uploads it held back from training, against its "
              "accuracy on the other images of the same shift (the eval half):", "",
              "| shift | before: true | estimated | error | after: true | estimated | error | after, held back: "
              "true on the eval half | estimated | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    errors, held_back_errors = [], []
    for r in rows:
        if r["shift"] in JUNK or "estimated_before" not in r:
            continue
        errors += [r["estimate_error_before"], r["estimate_error_after"]]
        held = r.get("estimated_after_held_back")
        if held is not None:
            held_back_errors.append(r["estimate_error_after_held_back"])
        lines.append(f"| {r['shift']} | {r['true_before']:.2%} | {r['estimated_before']:.2%} | "
                     f"{100 * r['estimate_error_before']:+.1f} | {r['true_after']:.2%} | {r['estimated_after']:.2%} | "
                     f"{100 * r['estimate_error_after']:+.1f} | {r['shifted_after']:.2%} | "
                     + (f"{held:.2%} | {100 * r['estimate_error_after_held_back']:+.1f} |" if held is not None
                        else "- | - |"))
    reviewed = [r for r in rows if r["labels"].endswith("reviewed")]
    if reviewed:
        lines += ["", "What a person's labels buy (recovered share of what the shift cost; clean eval change):", "",
                  "| shift | pseudo-labels alone | + reviewed | + random labeled |", "|---|---|---|---|"]
        for r in reviewed:
            alone, rand = (next(o for o in rows if o["shift"] == r["shift"] and o["labels"] == name)
                           for name in ("pseudo-labels", VARIANTS["random"].format(r["reviewed"])))
            cell = lambda o: (f"{o['recovered_fraction']:.0%}" if o["recovered_fraction"] is not None else "-") + \
                f" ({100 * (o['clean_after'] - o['clean_before']):+.2f})"
            lines.append(f"| {r['shift']} | {cell(alone)} | {cell(r)} | {cell(rand)} |")
    reported = [r for r in rows if r["shift"] in GROUPS["corruptions"]]
    if reported:
        before, after = (100 * np.mean([1 - r[k] for r in reported]) for k in ("shifted_before", "shifted_after"))
        drops = [100 * (r["clean_before"] - r["clean_after"]) for r in reported]
        lines.append(f"\nOver {len(reported)} of the 15 corruptions: mean error {before:.1f}% before, {after:.1f}% after "
                     f"the retrain ({after / before:.0%} of the served model's; the bar: {ERROR_KEPT:.0%}); clean "
                     f"accuracy down {np.mean(drops):.2f} points on average, {max(drops):.2f} at worst (the bar: 0.5); "
                     f"{sum(r['passes'] for r in reported)} cells pass both.")
    if errors:
        lines.append(f"\nMean absolute error {100 * np.mean(np.abs(errors)):.2f} points, worst "
                     f"{100 * np.max(np.abs(errors)):.2f} ({len(errors)} estimates).")
    if held_back_errors:
        lines.append(f"\nThe retrain's estimate on the uploads it held back: mean absolute error "
                     f"{100 * np.mean(np.abs(held_back_errors)):.2f} points, worst "
                     f"{100 * np.max(np.abs(held_back_errors)):.2f} ({len(held_back_errors)} retrains).")
    (out / "bench_retrain.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(rows)), 3.6 if len(rows) < 10 else 4.4))
    positions = np.arange(len(rows))
    for offset, key, name in ((-0.3, "shifted_before", "shifted, before"), (-0.1, "shifted_after", "shifted, after"),
                              (0.1, "clean_before", "clean, before"), (0.3, "clean_after", "clean, after")):
        ax.bar(positions + offset, [r[key] for r in rows], 0.2, label=name)
    ax.set_xticks(positions, [r["shift"].removeprefix("c10c-") for r in rows], rotation=35 if len(rows) > 9 else 0,
                  ha="right" if len(rows) > 9 else "center")
    ax.set_ylabel("accuracy on the eval half")
    ax.set_ylim(0, 1), ax.legend(ncol=4, fontsize=8, loc="lower center")
    ax.set_title("Retraining on 1,000 unlabeled shifted images")
    fig.tight_layout()
    evaluate.save_png(fig, out / "bench_retrain.png")
