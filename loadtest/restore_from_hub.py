"""How long an app on an empty disk takes to get its state back from the Hub, and how many commits
the state took to get there (the local Hub-compatible server of the tests stands in for the Hub).

    python loadtest/restore_from_hub.py [--uploads 1000 --labels 500 --versions 3]

1. One app's state: 3 versions (the shipped one and copies), the last one current, 1,000 uploads
   (one bulk upload) and 500 review labels; cifar.state_sync commits it all: the commits per repository
   and the seconds are printed.
2. The real app (`python app.py`) on a new, empty CIFAR_HOME with the same repositories: the restore
   time it logs, and the time until it answered on its port.
"""
import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from run import ROOT, App  # loadtest/run.py: it puts the repository on sys.path

sys.path.insert(0, str(ROOT / "tests"))
import huggingface_hub.constants as constants
from hub_server import HubServer
from PIL import Image

from cifar import CLASSES, config, cpu, data
from cifar.registry import Registry
from cifar.state_sync import StateSync
from cifar.uploads import UploadStore

TOKEN, MODELS = "hf_restorebenchtoken1234567", "bench/cifar"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--versions", type=int, default=3)
    args = parser.parse_args()
    server = HubServer(token=TOKEN).start()
    work = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    env = {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(work / "hf"),
           "HF_REPO_ID": MODELS, "CIFAR_SYNC_SPACING_S": "0"}
    os.environ.update(env)
    # huggingface_hub read the endpoint when cifar.hub imported it: point it at the server
    constants.ENDPOINT, constants.HF_HUB_DISABLE_XET = server.url, True
    constants.HUGGINGFACE_CO_URL_TEMPLATE = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    try:
        home = work / "first"
        registry = Registry(home / "models")
        registry.seed_from(config.shipped_models_dir())
        for n in range(1, args.versions):
            registry.add_folder(registry.current().path, version_id=f"20261201T00000{n}Z-copy")
        if args.versions > 1:
            registry.promote(f"20261201T00000{args.versions - 1}Z-copy")
        uploads = UploadStore(home / "uploads")
        x, _ = data.load_npz(data.replay_path())
        folder = work / "images"
        folder.mkdir()
        paths = []
        for i in range(args.uploads):
            paths.append(folder / f"photo{i}.png")
            Image.fromarray(x[i % len(x)]).save(paths[-1])  # 3,000 distinct images ship with the repository
        uploads.add(paths, batch="bench")
        for n, entry in enumerate(uploads.manifest_entries()[:args.labels]):
            uploads.review(entry["sha1"], CLASSES[n % 10])
        sync = StateSync(registry, uploads, home)
        started = time.perf_counter()
        while True:
            sync.sync_once()
            status = sync.status()
            if not status["pending_uploads"] and not status["pending_labels"] and status["current_on_hub"]:
                break
        synced = time.perf_counter() - started
        dataset = server.repos[f"datasets/{config.hub_dataset_id()}"]
        print(f"sync: {len(uploads.manifest_entries())} uploads, {len(uploads.review_entries())} labels, "
              f"{len(registry.list())} versions in {synced:.1f} s; commits: model repository "
              f"{len(server.repos[MODELS].commits)}, dataset repository {len(dataset.commits)}", flush=True)

        app = App(env, home=work / "second" / "home", timeout=900)
        try:
            line = re.search(r"restored from the Hub in [^\n]*", app.log.read_text())
            print(f"restore: {line.group(0) if line else 'no restore line in the log'}; the app answered "
                  f"{app.ready_seconds:.1f} s after it was started", flush=True)
        finally:
            app.stop()
    finally:
        server.stop()
    print(f"CPU: {cpu.describe()}")


if __name__ == "__main__":
    main()
