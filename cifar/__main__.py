"""Command line: python -m cifar COMMAND (train, evaluate, calibrate, versions, promote, rollback, push, pull, bench-*)."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _print_progress(fraction: float, message: str) -> None:
    print(f"\r[{fraction:6.1%}] {message}   ", end="", file=sys.stderr, flush=True)


def cmd_train(args) -> None:
    from . import cpu, data, evaluate, model as net, predict, registry, train, versions
    from .learning import calibration

    started = time.time()
    x, y = data.load(args.data, "train")
    x_test, y_test = data.load(args.data, "test")
    print(f"training on {len(x)} images from {args.data}; evaluating on {len(x_test)}; CPU {cpu.describe()}",
          flush=True)
    held_out = data.balanced_subset(y_test, 200, seed=0)
    result = train.train_from_scratch(x, y, epochs=args.epochs, seed=args.seed,
                                      validation=(x_test[held_out], y_test[held_out]),
                                      report=_print_progress, verbose=0)
    print(f"\ntrained {result.epochs} epochs in {result.seconds:.0f}s", flush=True)
    predictor = predict.Predictor(result.model)
    fitted = calibration.fit_on_holdout(predictor)
    predictor.calibration, predictor.temperature = fitted, fitted["temperature"]
    print(f"calibrated: temperature {fitted['temperature']:.3f}, held-out ECE {fitted['ece_before']:.2%} -> "
          f"{fitted['ece']:.2%}", flush=True)
    metrics = evaluate.evaluate(predictor, x_test, y_test)
    metrics["accuracy_by_tta_level"] = {
        str(level): float((predict.Predictor(result.model, tta_level=level).predict_arrays(x_test).argmax(1)
                           == y_test).mean()) for level in (0, 1, 2)}
    print(evaluate.format_table(metrics), flush=True)
    metadata = {
        "seed": args.seed, "epochs": result.epochs, "hyperparameters": {k: str(v) for k, v in net.HYP.items()},
        "train_data": str(args.data), "train_count": int(len(x)), "eval_data": str(args.data),
        "eval_count": int(len(x_test)), "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.time() - started, 1), "parent": None,
        "serving": predict.measure_serving(predictor),
    }
    reg = registry.Registry(args.out)
    version = versions.save_model_version(reg, "scratch", result.model, metadata, metrics, result.history,
                                          calibration=fitted)
    reg.promote(version.id, reason="trained from scratch")
    print(f"saved version {version.id} in {version.path}", flush=True)


def _model_file(path: str) -> Path:
    path = Path(path)
    return path / "model.keras" if path.is_dir() else path


def cmd_evaluate(args) -> None:
    from . import CLASSES, data, evaluate, predict

    model_file = _model_file(args.model)
    x, y = data.load(args.data, args.split)
    predictor = predict.Predictor.load(model_file, tta_level=args.tta)
    metrics = evaluate.evaluate(predictor, x, y)
    metrics["data"] = f"{args.data} ({args.split})"
    print(evaluate.format_table(metrics))
    out = model_file.parent
    (out / "evaluation.json").write_text(json.dumps(metrics, indent=2))
    evaluate.save_png(evaluate.plot_confusion(metrics), out / "eval_confusion.png")
    evaluate.save_png(evaluate.plot_per_class(metrics), out / "eval_per_class.png")
    evaluate.save_png(evaluate.plot_confidences(metrics["confidence_histogram"]), out / "eval_confidence.png")
    counts = {args.split: {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}}
    evaluate.save_png(evaluate.plot_distribution(counts), out / "eval_distribution.png")
    if (out / "history.json").exists():
        evaluate.save_png(evaluate.plot_history(json.loads((out / "history.json").read_text())),
                          out / "eval_history.png")
    print(f"wrote evaluation.json and eval_*.png in {out}")


def _version_folder(path: str):
    from .registry import Version

    folder = Path(path)
    folder = folder.parent if folder.suffix == ".keras" else folder
    return Version(folder.name, folder)


def cmd_calibrate(args) -> None:
    """Fit and store the calibration of a version made before calibration existed."""
    from . import predict, registry
    from .learning import calibration

    version = _version_folder(args.model)
    if version.calibration and not args.force:
        sys.exit(f"error: {version.path} already has {calibration.CALIBRATION_FILE}; versions are immutable "
                 "(--force refits it)")
    fitted = calibration.fit_on_holdout(predict.Predictor.load(version.model_path, tta_level=args.tta))
    registry.write_json_atomic(version.path / calibration.CALIBRATION_FILE, fitted)
    print(f"{version.id}: temperature {fitted['temperature']:.4f}; ECE on {fitted['count']:,} held-out images "
          f"{fitted['ece_before']:.2%} -> {fitted['ece']:.2%}; wrote {version.path / calibration.CALIBRATION_FILE}")


def cmd_bench_calibration(args) -> None:
    """ECE and top-1 of a version as the app serves it (its calibration, TTA) on a test split."""
    import numpy as np

    from . import data, predict
    from .learning import calibration

    version = _version_folder(args.model)
    predictor = predict.Predictor.for_version(version, args.tta)
    x, y = data.load(args.data, "test")
    started = time.time()
    logits = predictor.logits(x)
    held = set(map(bytes, data.holdout()[0].reshape(2000, -1)))
    unseen = np.array([bytes(row) not in held for row in x.reshape(len(x), -1)])
    print(f"{version.id}, TTA level {args.tta}, temperature {predictor.temperature:.4f} "
          f"(fitted on {predictor.calibration['fitted_on']}); {time.time() - started:.0f} s of inference")
    print(f"| images | top-1 raw | top-1 calibrated | ECE raw ({calibration.ECE_BINS} bins) | ECE calibrated | "
          "mean confidence raw | calibrated |\n|---|---|---|---|---|---|---|")
    for name, rows in ((f"all {len(x):,} test images", np.ones(len(x), bool)),
                       (f"the {int(unseen.sum()):,} not used to fit the temperature", unseen),
                       (f"the {int((~unseen).sum()):,} held-out images it was fitted on", ~unseen)):
        raw = calibration.reliability(calibration.softmax(logits[rows]), y[rows])
        cal = calibration.reliability(calibration.softmax(logits[rows], predictor.temperature), y[rows])
        print(f"| {name} | {raw['top1']:.2%} | {cal['top1']:.2%} | {raw['ece']:.2%} | {cal['ece']:.2%} | "
              f"{raw['mean_confidence']:.1%} | {cal['mean_confidence']:.1%} |")


def cmd_bench_monitor(args) -> None:
    """What the field monitor costs a prediction: observe() per served image, and one summary."""
    import numpy as np

    from . import cpu
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
    import tempfile

    import keras
    import numpy as np

    from . import cpu, data, model as net, predict, runtime

    version = _version_folder(args.model)
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
    print(f"| network path ({predict.tta.VIEWS[args.tta]} views an image) | 1 image, ms | images/s at batch 32 | "
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
                    f"{level} ({predict.tta.NAMES[level]}) {acc:.2%}"
                    for level, acc in levels.items()))


def cmd_convert(args) -> None:
    """Make (or remake) the serving runtime's checked OpenVINO model of a version folder."""
    from . import model as net, runtime

    version = _version_folder(args.model)
    if (version.path / runtime.FOLDER / "runtime.json").exists() and not args.force:
        sys.exit(f"error: {version.path} already has {runtime.FOLDER}/; versions are immutable (--force remakes it)")
    report = runtime.build(net.load(version.model_path), version.path, args.tta)
    print(f"{version.id}: {runtime.describe(report)}")
    for precision, result in report.get("tried", {}).items():
        print(f"  {precision}: {result['why']}")


def _registry(args):
    """The registry the app uses (seeded with the shipped versions on a fresh CIFAR_HOME, as
    the app does), or the one --registry names, as it is."""
    from . import config, registry

    reg = registry.Registry(args.registry or config.registry_dir())
    if not args.registry:
        reg.seed_from(config.shipped_models_dir())
    return reg


def cmd_versions(args) -> None:
    reg = _registry(args)
    current = reg.current().id if reg.list() else None
    for version in reg.list():
        accuracy = version.metrics.get("accuracy")
        print(f"{'*' if version.id == current else ' '} {version.id:<32} {version.metadata.get('kind', ''):<8} "
              f"acc={accuracy if accuracy is None else f'{accuracy:.4f}'} parent={version.metadata.get('parent')}")


def cmd_promote(args) -> None:
    print(f"current: {_registry(args).promote(args.id).id}")


def cmd_rollback(args) -> None:
    print(f"current: {_registry(args).rollback(args.id).id}")


def cmd_push(args) -> None:
    from . import hub

    reg = _registry(args)
    version = reg.get(args.id) if args.id else reg.current()
    print(f"pushed {version.id}: commit {hub.push(version)}")


def cmd_pull(args) -> None:
    from . import hub

    version = hub.pull(_registry(args), args.revision)
    print(f"pulled {version.id} into {version.path}")


def cmd_bench_retrain_time(args) -> None:
    """Upload N unlabeled test images through the upload store and time one app retrain."""
    import tempfile

    from PIL import Image

    from . import cpu, data

    print(f"CPU: {cpu.describe()}", flush=True)
    from .service import Service

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
    result = service.retrain(report=_print_progress)
    print(f"\nretrain on {report.accepted} uploaded images ({result['pseudo_used']} pseudo-labeled) took "
          f"{time.time() - started:.0f} s; held-out accuracy {result['before']['accuracy']:.4f} -> "
          f"{result['after']['accuracy']:.4f}; {result['message']}")
    steps = result.get("train_steps") or ["?", "?"]
    print("phases (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in result["phases"].items()) +
          f"; training budget {result['train_budget_seconds']:.0f} s, {steps[0]} of {steps[1]} planned steps run")


def cmd_bench_retrain(args) -> None:
    from . import bench_retrain, train

    shifts = args.shifts.split(",") if args.shifts else [*bench_retrain.CLEAN, *bench_retrain.SHIFTS, *bench_retrain.JUNK]
    for setting in filter(None, (args.recipe or "").split(",")):  # e.g. epochs=8,lr_scale=0.2
        key, value = setting.split("=")
        if key not in train.RETRAIN:
            sys.exit(f"error: unknown recipe setting {key!r}; known: {', '.join(train.RETRAIN)}")
        current = train.RETRAIN[key]
        train.RETRAIN[key] = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
    if args.calibrate:
        from . import config, data, predict, registry

        x, y = data.load(args.data, "test")
        subset = data.balanced_subset(y, args.eval_per_class or 100, seed=2)
        current = predict.Predictor.load(registry.Registry(config.shipped_models_dir()).current().model_path)
        bench_retrain.calibrate(current, x[subset], y[subset], {s: bench_retrain.CANDIDATES[s] for s in shifts
                                                               if s in bench_retrain.CANDIDATES})
        return
    bench_retrain.run(shifts, args.data, Path(args.out), args.images, args.eval_per_class, args.labeled, args.review)
    print((Path(args.out) / "bench_retrain.md").read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cifar", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train the shipped architecture from scratch")
    p.add_argument("--data", default=None, help='CIFAR-10 folder, or "official" for the Keras download')
    p.add_argument("--out", default=None, help="registry folder that receives the new version")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_train)
    p = commands.add_parser("bench-serving", help="Keras and OpenVINO (float, int8) on this CPU: speed and accuracy")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--data", default=None)
    p.add_argument("--tta", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="timing per batch size and path")
    p.add_argument("--images", type=int, default=None, help="top-1 on this many test images (default: all)")
    p.set_defaults(run=cmd_bench_serving)
    p = commands.add_parser("convert", help="make the checked OpenVINO model of a version that has none")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--tta", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=cmd_convert)
    p = commands.add_parser("calibrate", help="fit and store the calibration of a version that has none")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--tta", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=cmd_calibrate)
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
                   help="comma-separated subset of clean,noise,blur,contrast,haze,jpeg,colour,pixelate,junk")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default="data/bench-retrain")
    p.add_argument("--eval-per-class", type=int, default=None, help="score on this many eval images a class")
    p.add_argument("--calibrate", action="store_true", help="only score the shipped model at candidate strengths")
    p.add_argument("--labeled", action="store_true",
                   help="upload the field images with their true labels: the ceiling of pseudo-labelling")
    p.add_argument("--recipe", default=None, help="override retrain settings, e.g. epochs=8,lr_scale=0.2")
    p.add_argument("--review", type=int, default=0, metavar="K",
                   help="also retrain after a simulated reviewer labeled the K uploads the Review tab shows first, "
                        "and after K random ones were labeled")
    p.set_defaults(run=cmd_bench_retrain)
    p = commands.add_parser("evaluate", help="metrics, table and plots of a model on a data split")
    p.add_argument("--model", required=True, help="a model.keras file or a version folder")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--tta", type=int, default=2, help="test-time augmentation: 0 none, 1 flip, 2 flip+shift")
    p.set_defaults(run=cmd_evaluate)
    for name, run, help_text in (("versions", cmd_versions, "list versions (* = current)"),
                                 ("promote", cmd_promote, "make a version current"),
                                 ("rollback", cmd_rollback, "make an earlier version current"),
                                 ("push", cmd_push, "push a version to HF_REPO_ID"),
                                 ("pull", cmd_pull, "download a version from HF_REPO_ID")):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--registry", default=None, help="registry folder (default CIFAR_HOME/models)")
        if name == "promote":
            p.add_argument("id")
        elif name in ("rollback", "push"):
            p.add_argument("id", nargs="?")
        elif name == "pull":
            p.add_argument("--revision", default=None, help="version tag (default: the newest)")
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    from . import config

    if getattr(args, "data", "x") is None:
        args.data = str(config.dataset_dir())
    if getattr(args, "out", "x") is None:
        args.out = str(config.registry_dir())
    from .hub import HubError
    from .registry import RegistryError

    try:
        args.run(args)
    except (HubError, RegistryError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
