"""The benchmark commands (python -m cifar bench-*): speed, calibration, the monitor's cost, the
retrain's time and the retrain on shifted images. Each prints the CPU it ran on; RESULTS.md
keeps what they measured.

Each command imports the heavy modules (TensorFlow, the app) when it runs, for start-up time: the
command line parses and answers `--help` or `versions` without loading TensorFlow.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import cpu
from .registry import Version


def print_progress(fraction: float, message: str) -> None:
    print(f"\r[{fraction:6.1%}] {message}   ", end="", file=sys.stderr, flush=True)


def cmd_bench_calibration(args) -> None:
    """ECE and top-1 of a version as the app serves it (its calibration, TTA) on a test split."""
    from . import data, evaluate, serving
    from .logits import softmax

    version = Version.at(args.model)
    predictor = serving.load_predictor(version, args.tta)
    x, y = data.load(args.data, "test")
    started = time.time()
    logits = predictor.logits(x)
    held = set(map(bytes, data.holdout()[0].reshape(2000, -1)))
    unseen = np.array([bytes(row) not in held for row in x.reshape(len(x), -1)])
    print(f"{version.id}, TTA level {args.tta}, temperature {predictor.temperature:.4f} "
          f"(fitted on {predictor.calibration['fitted_on']}); {time.time() - started:.0f} s of inference")
    print(f"| images | top-1 raw | top-1 calibrated | ECE raw ({evaluate.ECE_BINS} bins) | ECE calibrated | "
          "mean confidence raw | calibrated |\n|---|---|---|---|---|---|---|")
    for name, rows in ((f"all {len(x):,} test images", np.ones(len(x), bool)),
                       (f"the {int(unseen.sum()):,} not used to fit the temperature", unseen),
                       (f"the {int((~unseen).sum()):,} held-out images it was fitted on", ~unseen)):
        raw = evaluate.reliability(softmax(logits[rows]), y[rows])
        cal = evaluate.reliability(softmax(logits[rows], predictor.temperature), y[rows])
        print(f"| {name} | {raw['top1']:.2%} | {cal['top1']:.2%} | {raw['ece']:.2%} | {cal['ece']:.2%} | "
              f"{raw['mean_confidence']:.1%} | {cal['mean_confidence']:.1%} |")


def cmd_bench_monitor(args) -> None:
    """What the field monitor costs a prediction: observe() per served image, and one summary."""
    from .monitor import Monitor

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(10, 0.3), size=args.n).astype(np.float32)
    monitor = Monitor()
    started = time.perf_counter()
    for p in probabilities:
        monitor.observe(p[None], 0.05, -0.3)
    per_prediction = (time.perf_counter() - started) / args.n
    started = time.perf_counter()
    monitor.field({"atc_threshold": -0.3, "reference_accuracy": 0.92, "confidence_histogram": [1] * 20},
                  {"cat": 0.1})
    summary = time.perf_counter() - started
    print(f"CPU: {cpu.describe()}")
    print(f"observe(): {per_prediction * 1e6:.1f} us a prediction ({args.n:,} single predictions); "
          f"field(): {summary * 1e3:.1f} ms for a window of {monitor.field({}, {})['predictions']:,}")


def cmd_bench_serving(args) -> None:
    """Each network path on this CPU, in one run: Keras as the app would run it (bf16 where
    native), Keras float32, OpenVINO float and int8; single-image latency, images/s at batch 32
    and 256 (with the TTA views), top-1 on the test split and answers shared with Keras; then the
    accuracy of each TTA level on the path the app serves with."""
    import keras

    from . import data, model as net, predict, runtime, tta

    version = Version.at(args.model)
    print(f"CPU: {cpu.describe()}; Keras {keras.__version__} (TensorFlow), OpenVINO {runtime.available()}")
    x, y = data.load(args.data, "test")
    if args.images:  # a class-balanced subset: a slow path (bf16 emulated) needs minutes for all 10,000
        picks = data.balanced_subset(y, args.images // 10, seed=0)
        x, y = x[picks], y[picks]
    keras_model = net.load(version.model_path)
    paths = {f"Keras, {cpu.precision()} (as the app chooses for this CPU)": (keras_model, None)}  # (model, network)
    if cpu.precision() != "float32":
        paths["Keras, float32"] = (net.to_float32(keras_model), None)
    else:  # the version as saved: the app's path on every CPU before it read the CPU's features
        as_saved = keras.saving.load_model(version.model_path, compile=False)
        if net.to_float32(as_saved) is not as_saved:  # it has bfloat16 layers
            paths["Keras, mixed_bfloat16 (as saved; bf16 emulated on this CPU)"] = (as_saved, None)
    print(f"| network path ({tta.VIEWS[args.tta]} views an image) | 1 image, ms | images/s at batch 32 | "
          f"at batch 256 | top-1 on {len(x):,} test images | same answer as Keras |\n|---|---|---|---|---|---|")
    reference = None
    with tempfile.TemporaryDirectory() as work:
        exported = runtime.export(keras_model, Path(work))
        for precision in ("float", "int8"):
            paths[f"OpenVINO {precision}"] = (keras_model, runtime.OpenVINONetwork(exported[precision], precision))
        for name, (model, network) in paths.items():
            predictor = predict.Predictor(model, tta_level=args.tta, network=network)
            predictor.warm_up()
            speed = predict.measure_serving(predictor, batch_sizes=(1, 32, 256), seconds=args.seconds)
            answers = predictor.logits(x).argmax(1)
            reference = answers if reference is None else reference
            print(f"| {name} | {speed['1']['latency_ms_p50']:.1f} | {speed['32']['images_per_s']:.1f} | "
                  f"{speed['256']['images_per_s']:.1f} | {(answers == y).mean():.2%} | {(answers == reference).mean():.2%} |",
                  flush=True)
            if name == "OpenVINO int8":
                levels = {level: float((predictor.logits(x, level).argmax(1) == y).mean()) for level in (0, 1, 2)}
                print("\nOpenVINO int8, top-1 by test-time level: " + ", ".join(
                    f"{level} ({tta.NAMES[level]}) {acc:.2%}"
                    for level, acc in levels.items()))


def cmd_bench_retrain_time(args) -> None:
    """Upload N unlabeled test images through the upload store and time one app retrain (in its
    own process, as the app runs it)."""
    from PIL import Image

    from . import data
    from .service import Service

    print(f"CPU: {cpu.describe()}", flush=True)
    os.environ["CIFAR_HOME"] = tempfile.mkdtemp(prefix="bench-home-")  # leave the user's data alone
    x, y = data.load(args.data, "test")
    picks = data.balanced_subset(y, args.images // 10, seed=2)
    folder = Path(tempfile.mkdtemp(prefix="bench-uploads-"))
    paths = []
    for i in picks:
        paths.append(folder / f"img{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    service = Service()
    report = service.upload(paths)
    started = time.time()
    job = service.wait_for_retrain(service.start_retrain()["id"], print_progress)  # as the app runs it
    if job["state"] != "done":
        sys.exit(f"the retrain {job['state']}: {job['error']}")
    result = job["result"]
    print(f"\nretrain on {report.accepted} uploaded images ({result['pseudo_used']} pseudo-labeled) took "
          f"{time.time() - started:.0f} s; held-out accuracy {result['before']['accuracy']:.4f} -> "
          f"{result['after']['accuracy']:.4f}; {result['message']}")
    steps = result.get("train_steps") or ["?", "?"]
    print("phases (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in result["phases"].items()) +
          f"; training budget {result['train_budget_seconds']:.0f} s, {steps[0]} of {steps[1]} planned steps run")


def cmd_bench_retrain(args) -> None:
    """Retrain on each shift's uploads and score before and after (cifar.bench_retrain)."""
    from . import bench_retrain, config, data, predict, registry
    from .retrain_rules import RETRAIN

    shifts = ([name for token in args.shifts.split(",") for name in bench_retrain.GROUPS.get(token, [token])]
              if args.shifts else [*bench_retrain.CLEAN, *bench_retrain.SHIFTS, *bench_retrain.JUNK])
    for setting in filter(None, (args.recipe or "").split(",")):  # e.g. epochs=8,lr_scale=0.2
        key, value = setting.split("=")
        if key not in RETRAIN:
            sys.exit(f"error: unknown recipe setting {key!r}; known: {', '.join(RETRAIN)}")
        current = RETRAIN[key]
        RETRAIN[key] = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
    if args.calibrate:
        x, y = data.load(args.data, "test")
        subset = data.balanced_subset(y, args.eval_per_class or 100, seed=2)
        current = predict.Predictor.load(registry.Registry(config.shipped_models_dir()).current().model_path)
        bench_retrain.calibrate(current, x[subset], y[subset], {s: bench_retrain.CANDIDATES[s] for s in shifts
                                                               if s in bench_retrain.CANDIDATES})
        return
    if args.estimate_only:
        bench_retrain.estimates_only(shifts, args.data, args.images)
        return
    bench_retrain.run(shifts, args.data, Path(args.out), args.images, args.eval_per_class, args.labeled, args.review)
    print((Path(args.out) / "bench_retrain.md").read_text())


def cmd_bench_corruptions(args) -> None:
    """CIFAR-10-C's corruptions against the served model and its label-free estimate."""
    from . import bench_corruptions

    if args.quick:
        names, severities, images = bench_corruptions.QUICK, (5,), 200
    else:
        names = (args.corruptions.split(",") if args.corruptions
                 else [*bench_corruptions.CORRUPTIONS, *bench_corruptions.HELD_OUT])
        severities, images = [int(s) for s in args.severities.split(",")], args.images
    started = time.time()
    bench_corruptions.run(names, severities, images, args.data, Path(args.out),
                          Path(args.cifar10c) if args.cifar10c else None)
    print((Path(args.out) / "corruptions.md").read_text())
    print(f"{len(names)} corruptions x {len(severities)} severities, {images} images each, in "
          f"{time.time() - started:.0f} s on {cpu.describe()}")


def add_commands(commands) -> None:
    """The bench-* subcommands, on the command line's subparsers."""
    p = commands.add_parser("bench-serving", help="Keras and OpenVINO (float, int8) on this CPU: speed and accuracy")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--data", default=None)
    p.add_argument("--tta", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="timing per batch size and path")
    p.add_argument("--images", type=int, default=None, help="top-1 on this many test images (default: all)")
    p.set_defaults(run=cmd_bench_serving)
    p = commands.add_parser("bench-calibration", help="calibration error of a version as served, on the test split")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--data", default=None)
    p.add_argument("--tta", type=int, default=2)
    p.set_defaults(run=cmd_bench_calibration)
    p = commands.add_parser("bench-monitor", help="the field monitor's cost per prediction")
    p.add_argument("--n", type=int, default=20000)
    p.set_defaults(run=cmd_bench_monitor)
    p = commands.add_parser("bench-retrain-time", help="time one app retrain on N uploaded images")
    p.add_argument("--data", default=None)
    p.add_argument("--images", type=int, default=1000)
    p.set_defaults(run=cmd_bench_retrain_time)
    p = commands.add_parser("bench-retrain", help="distribution-shift benchmark of retraining")
    p.add_argument("--data", default=None)
    p.add_argument("--shifts", default=None,
                   help="comma-separated subset of clean,noise,blur,contrast,haze,jpeg,colour,pixelate,junk; c10c-<name> "
                        "for a CIFAR-10-C corruption (severity 5); 'corruptions' for the 15, 'held-out' for the other 4")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default="data/bench-retrain")
    p.add_argument("--eval-per-class", type=int, default=None, help="score on this many eval images a class")
    p.add_argument("--calibrate", action="store_true", help="only score the shipped model at candidate strengths")
    p.add_argument("--estimate-only", action="store_true",
                   help="only the served model's label-free estimate on each shift's uploads, no retrain (a minute)")
    p.add_argument("--labeled", action="store_true",
                   help="upload the field images with their true labels: the ceiling of pseudo-labelling")
    p.add_argument("--recipe", default=None, help="override retrain settings, e.g. epochs=8,lr_scale=0.2")
    p.add_argument("--review", type=int, default=0, metavar="K",
                   help="also retrain after a simulated reviewer labeled the K uploads the Review tab shows first, "
                        "and after K random ones were labeled")
    p.set_defaults(run=cmd_bench_retrain)
    p = commands.add_parser("bench-corruptions", help="CIFAR-10-C's corruptions: accuracy, adapted copy, estimate")
    p.add_argument("--data", default=None)
    p.add_argument("--corruptions", default=None, help="comma-separated (default: the 15 and the 4 held out)")
    p.add_argument("--severities", default="3,5")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default="data/bench-corruptions")
    p.add_argument("--cifar10c", default=None, help="a folder of the published CIFAR-10-C .npy files")
    p.add_argument("--quick", action="store_true", help="3 corruptions at severity 5 on 200 images (a smoke test)")
    p.set_defaults(run=cmd_bench_corruptions)
