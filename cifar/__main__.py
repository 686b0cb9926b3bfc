"""Command line: python -m cifar COMMAND (get-data, train, evaluate, calibrate, convert, record-checks, versions,
promote, rollback, push, pull, serve-cluster, and the bench-* commands of cifar.benchmarks).

Each command imports the heavy modules (TensorFlow, OpenVINO, the Hub client) when it runs, for
start-up time: `versions` or `--help` answers without loading TensorFlow.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from . import benchmarks, config, cpu
from .benchmarks import print_progress
from .registry import Registry, RegistryError, Version

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TTA_HELP = ("test-time views: 0 the image alone, 1 and its mirror, 2 six views (default: the level the app serves "
            "with on this CPU, CIFAR_TTA if set)")


def cmd_train(args) -> None:
    import numpy as np

    from . import cpu, data, evaluate, model as net, predict, registry, train, versions
    from .learning import calibration

    started = time.time()
    x, y = data.load(args.data, "train")
    x_test, y_test = data.load(args.data, "test")
    print(f"training on {len(x)} images from {args.data}; evaluating on {len(x_test)}; CPU {cpu.describe()}",
          flush=True)
    held_out = data.balanced_subset(y_test, min(200, *np.bincount(y_test, minlength=10)), seed=0)  # a small folder too
    result = train.train_from_scratch(x, y, epochs=args.epochs, seed=args.seed,
                                      validation=(x_test[held_out], y_test[held_out]),
                                      report=print_progress, verbose=0)
    print(f"\ntrained {result.epochs} epochs in {result.seconds:.0f}s", flush=True)
    predictor = predict.Predictor(result.model, tta_level=cpu.tta_level())  # as the app will serve it
    fitted = calibration.fit_on_holdout(predictor)
    predictor.calibrate(fitted)
    print(f"calibrated: temperature {fitted['temperature']:.3f}, held-out ECE {fitted['ece_before']:.2%} -> "
          f"{fitted['ece']:.2%}", flush=True)
    metrics = evaluate.evaluate(predictor, x_test, y_test)
    metrics["accuracy_by_tta_level"] = {
        str(level): float((predict.Predictor(result.model, tta_level=level).predict_arrays(x_test).argmax(1)
                           == y_test).mean()) for level in (0, 1, 2)}
    print(evaluate.format_table(metrics), flush=True)
    metadata = {
        "seed": args.seed, "epochs": result.epochs, "hyperparameters": {k: str(v) for k, v in net.HYP.items()},
        "train_data": str(args.data), "train_count": len(x), "eval_data": str(args.data),
        "eval_count": len(x_test), "train_seconds": round(result.seconds, 1),
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


def cmd_calibrate(args) -> None:
    """Fit and store the calibration of a version made before calibration existed."""
    from . import predict, registry
    from .learning import calibration

    version = Version.at(args.model)
    if version.calibration and not args.force:
        sys.exit(f"error: {version.path} already has {calibration.CALIBRATION_FILE}; versions are immutable "
                 "(--force refits it)")
    fitted = calibration.fit_on_holdout(predict.Predictor.load(version.model_path, tta_level=args.tta))
    registry.write_json_atomic(version.path / calibration.CALIBRATION_FILE, fitted)
    print(f"{version.id}: temperature {fitted['temperature']:.4f}; ECE on {fitted['count']:,} held-out images "
          f"{fitted['ece_before']:.2%} -> {fitted['ece']:.2%}; wrote {version.path / calibration.CALIBRATION_FILE}")


def cmd_convert(args) -> None:
    """Make (or remake) the serving runtime's checked OpenVINO model of a version folder."""
    from . import runtime

    version = Version.at(args.model)
    if (version.path / runtime.FOLDER / "runtime.json").exists() and not args.force:
        sys.exit(f"error: {version.path} already has {runtime.FOLDER}/; versions are immutable (--force remakes it)")
    from . import model as net  # Keras (seconds to import): only once there is something to convert

    report = runtime.build(net.load(version.model_path), version.path, args.tta)
    print(f"{version.id}: {runtime.describe(report)}")
    for precision, result in report.get("tried", {}).items():
        print(f"  {precision}: {result['why']}")


def cmd_record_checks(args) -> None:
    """For a maintainer shipping a version: check its OpenVINO models on this CPU at every test-time
    level and record the results in it (with what those levels need: Keras' answers, calibrations,
    and the float model beside an int8 one), so an app on this kind of CPU starts without a check
    or TensorFlow. Run it once on each kind of CPU the version will serve on."""
    import functools

    from . import data, model as net, registry, runtime, tta
    from .learning import calibration

    version = Version.at(args.model)
    x, y = data.holdout()
    model = functools.cache(lambda: net.load(version.model_path))
    logits = functools.cache(lambda: runtime.keras_logits_on(model(), x, max(tta.LEVELS)))  # one pass, every level
    if runtime.add_fallback(model, version.path):
        print(f"{version.id}: kept the float model beside the int8 one in {runtime.FALLBACK}/")
    fitted = version.calibration
    missing = [level for level in tta.LEVELS if level != fitted.get("tta_level") and str(level) not in fitted.get("by_level", {})]
    if fitted and missing:
        fitted["by_level"] = {**fitted.get("by_level", {}), **{
            str(level): calibration.fit(logits()[level], y, level, data.HOLDOUT_NAME) for level in missing}}
        registry.write_json_atomic(version.path / calibration.CALIBRATION_FILE, fitted)
        print(f"{version.id}: calibrated at levels {', '.join(map(str, missing))} too")
    for sub, results in runtime.record_checks(version.path, logits).items():
        for level, result in results.items():
            print(f"  {sub} at {tta.NAMES[level]}: {'passed' if result['passed'] else 'failed'}: {result['why']}")
    print(f"recorded for {runtime.check_label(0).rsplit(' | ', 1)[0]}")


def _registry(args):
    """The registry the app uses (seeded with the shipped versions on a fresh CIFAR_HOME, as
    the app does), or the one --registry names, as it is."""
    reg = Registry(args.registry or config.registry_dir())
    if not args.registry:
        reg.seed_from(config.shipped_models_dir())
    return reg


def cmd_get_data(args) -> None:
    import socket

    from . import data

    target = Path(args.out or config.dataset_dir()).resolve()  # where the tests and training look
    if (target / "test").is_dir() and (target / "train").is_dir():
        print(f"CIFAR-10 is already at {target}")
        return
    socket.setdefaulttimeout(60)  # offline, fail within a minute instead of hanging
    print("downloading the official CIFAR-10 release (163 MB) through keras.datasets ...", flush=True)
    try:
        data.write_official(target)
    except Exception as exc:  # no network, a proxy, a full disk: say which, and what else works
        sys.exit(f"error: could not get CIFAR-10 ({exc.__class__.__name__}: {exc}). Without internet, point "
                 "CIFAR_DATA at a folder laid out as train/<class>/*.png and test/<class>/*.png.")
    print(f"CIFAR-10 written to {target} (60,000 PNGs)")


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
    try:
        print(f"pushed {version.id}: commit {hub.push(version)}")
    except hub.HubError as exc:
        sys.exit(f"error: {exc}")


def cmd_pull(args) -> None:
    from . import hub

    try:
        version = hub.pull(_registry(args), args.revision)
    except hub.HubError as exc:
        sys.exit(f"error: {exc}")
    print(f"pulled {version.id} into {version.path}")


def cmd_serve_cluster(args) -> None:
    from .cluster import Cluster

    if not config.hub_repo_id():
        print("warning: HF_REPO_ID is not set, so the replicas share nothing (versions, uploads, labels, "
              "retrains stay on the replica that made them); set HF_REPO_ID and HF_TOKEN to share them "
              "through the Hub", flush=True)
    home = Path(args.home) if args.home else None
    cluster = Cluster(args.replicas, port=args.port, home=home, host=args.host)

    def stop(signum, frame):
        raise KeyboardInterrupt
    # Ctrl-C, or a supervisor's SIGTERM, stops the replicas and HAProxy too (never orphans); set
    # here because a shell that starts this in the background hands it SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    print(f"starting {args.replicas} replicas and HAProxy (replica logs in {cluster.home})", flush=True)
    try:
        cluster.start()
        for replica in cluster.replicas:
            print(f"  {replica.name}: {replica.url} (CIFAR_HOME {replica.home})", flush=True)
        print(f"serving at http://{args.host}:{cluster.port} (HAProxy stats: http://127.0.0.1:{cluster.stats_port}/stats); "
              "Ctrl-C stops everything", flush=True)
        while True:  # a replica that exits is started again, as a supervisor would
            time.sleep(2)
            for replica in cluster.replicas:
                if replica.proc.poll() is not None:
                    print(f"{replica.name} exited ({replica.proc.returncode}); starting it again", flush=True)
                    replica.start()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cifar", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("get-data", help="download the official CIFAR-10 into a folder (tests and training use it)")
    p.add_argument("--out", default=None, help="folder to write (default: CIFAR_DATA, else ./datasets/cifar10)")
    p.set_defaults(run=cmd_get_data)
    p = commands.add_parser("train", help="train the shipped architecture from scratch")
    p.add_argument("--data", default=None, help='CIFAR-10 folder, or "official" for the Keras download')
    p.add_argument("--out", default=None, help="registry folder that receives the new version")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_train)
    p = commands.add_parser("convert", help="make the checked OpenVINO model of a version that has none")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--tta", type=int, default=None, help=TTA_HELP)
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=cmd_convert)
    p = commands.add_parser("record-checks", help="check a version's OpenVINO models on this CPU and record it in the version")
    p.add_argument("--model", required=True, help="a version folder")
    p.set_defaults(run=cmd_record_checks)
    p = commands.add_parser("calibrate", help="fit and store the calibration of a version that has none")
    p.add_argument("--model", required=True, help="a version folder")
    p.add_argument("--tta", type=int, default=None, help=TTA_HELP)
    p.add_argument("--force", action="store_true")
    p.set_defaults(run=cmd_calibrate)
    p = commands.add_parser("evaluate", help="metrics, table and plots of a model on a data split")
    p.add_argument("--model", required=True, help="a model.keras file or a version folder")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--tta", type=int, default=None, help=TTA_HELP)
    p.set_defaults(run=cmd_evaluate)
    p = commands.add_parser("serve-cluster", help="N replicas of the app behind HAProxy on this machine")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=7860, help="the balancer's port")
    p.add_argument("--host", default="127.0.0.1", help="the balancer's address (0.0.0.0: every interface)")
    p.add_argument("--home", default=None, help="folder of the replicas' CIFAR_HOMEs (default: a new temporary one)")
    p.set_defaults(run=cmd_serve_cluster)
    benchmarks.add_commands(commands)
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
    if getattr(args, "data", "x") is None:  # train, evaluate, the bench-* commands
        args.data = str(config.dataset_dir())
    if getattr(args, "tta", 0) is None:  # evaluate, calibrate, convert: as the app would serve
        args.tta = cpu.tta_level()
    if args.command == "train" and args.out is None:
        args.out = str(config.registry_dir())
    try:
        args.run(args)
    except RegistryError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
