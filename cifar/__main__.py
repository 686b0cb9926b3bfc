"""Command line: python -m cifar {train,evaluate,versions,promote,rollback,push,pull,bench-retrain}."""
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
    from . import data, evaluate, model as net, predict, registry, train, versions

    started = time.time()
    x, y = data.load(args.data, "train")
    x_test, y_test = data.load(args.data, "test")
    print(f"training on {len(x)} images from {args.data}; evaluating on {len(x_test)}", flush=True)
    held_out = data.balanced_subset(y_test, 200, seed=0)
    result = train.train_from_scratch(x, y, epochs=args.epochs, seed=args.seed,
                                      validation=(x_test[held_out], y_test[held_out]),
                                      report=_print_progress, verbose=0)
    print(f"\ntrained {result.epochs} epochs in {result.seconds:.0f}s", flush=True)
    predictor = predict.Predictor(result.model)
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
    version = versions.save_model_version(reg, "scratch", result.model, metadata, metrics, result.history)
    reg.promote(version.id, reason="trained from scratch")
    print(f"saved version {version.id} in {version.path}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cifar", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train the shipped architecture from scratch")
    p.add_argument("--data", default=None, help='CIFAR-10 folder, or "official" for the Keras download')
    p.add_argument("--out", default=None, help="registry folder that receives the new version")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_train)
    args = parser.parse_args(argv)
    from . import config

    if getattr(args, "data", "x") is None:
        args.data = str(config.dataset_dir())
    if getattr(args, "out", "x") is None:
        args.out = str(config.registry_dir())
    args.run(args)


if __name__ == "__main__":
    main()
