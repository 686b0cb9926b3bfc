"""Every setting the product reads from the environment, in one place (the bottom layer: it
imports nothing of the package).

| variable            | default            | meaning                                                  |
|---------------------|--------------------|----------------------------------------------------------|
| CIFAR_HOME          | ./data (/data on a Space with persistent storage) | all state the app writes: uploads, model versions, logs  |
| CIFAR_DATA          | ../shared/cifar10, else ./datasets/cifar10 | CIFAR-10 folder for training, evaluation and tests (`python -m cifar get-data` fills the second) |
| CIFAR_SHIPPED       | ./models           | the model versions shipped with the code (read-only)      |
| CIFAR_ADMIN_KEY     | (unset)            | when set, retrain/rollback/push/review/label require it  |
| CIFAR_FROM_HUB      | (unset)            | "1": start from the newest version pushed to HF_REPO_ID  |
| CIFAR_MAX_BATCH     | 32                 | images per network call under load; 1 turns batching off  |
| CIFAR_TTA           | (by the CPU)       | test-time views: 0 none, 1 flip, 2 flip + shifts (6); 2 with AVX-512, 1 on AVX2-only CPUs |
| CIFAR_PRECISION     | (by the CPU)       | float32 or mixed_bfloat16 (read by cifar.cpu)            |
| CIFAR_INFERENCE_THREADS | (every core)   | threads of one OpenVINO network call (for replicas sharing a machine; RESULTS.md prices it) |
| CIFAR_MIN_AGREEMENT | 0.985              | share of held-out answers an OpenVINO model must share with Keras to serve |
| ONEDNN_MAX_CPU_ISA  | (unset)            | oneDNN's instruction-set cap; the app treats the CPU as having no more (read by cifar.cpu) |
| CIFAR_TTA_BUDGET_S  | 0.25               | queued work (s) above which the batcher serves fewer views |
| CIFAR_MONITORING_REFRESH_S | 5           | how often an open Monitoring tab refreshes itself        |
| HF_REPO_ID          | (unset)            | Hub model repository that receives every new version     |
| HF_DATASET_ID       | HF_REPO_ID + "-data" | private Hub dataset repository that keeps uploads and labels ("off": none) |
| CIFAR_SYNC_SPACING_S | 60                | seconds at least between two commits of uploads and labels |
| CIFAR_FOLLOW_S      | 20                 | how often the app looks at the Hub for another replica's current version, uploads, labels |
| CIFAR_REPLICA       | (host name)        | this replica's name, shown to the others while it retrains |
| CIFAR_CLAIM_TTL_S   | 600                | a retrain claim not renewed for this long is expired (its replica died) |
| CIFAR_RETRAIN_S     | 160                | seconds a whole retrain aims to end within; its training gets what the rest leaves |
| HF_TOKEN            | (saved login)      | Hub token; never logged or shown                         |
"""
import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name) or default).expanduser().resolve()


def home() -> Path:
    """The data directory; created on first use. On a Space with persistent storage: /data."""
    on_space_storage = os.environ.get("SPACE_ID") and os.access("/data", os.W_OK)
    path = _path("CIFAR_HOME", Path("/data") if on_space_storage else ROOT / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


SHARED_DATASET = ROOT.parent / "shared" / "cifar10"
DOWNLOADED_DATASET = ROOT / "datasets" / "cifar10"  # where `python -m cifar get-data` writes


def dataset_dir() -> Path:
    """CIFAR_DATA; else the shared copy beside the repository where there is one; else the folder
    that `python -m cifar get-data` fills."""
    return _path("CIFAR_DATA", SHARED_DATASET if SHARED_DATASET.is_dir() else DOWNLOADED_DATASET)


def shipped_models_dir() -> Path:
    return _path("CIFAR_SHIPPED", ROOT / "models")


def registry_dir() -> Path:
    return home() / "models"


def uploads_dir() -> Path:
    return home() / "uploads"


def jobs_dir() -> Path:
    """Long jobs (retrains) and their state, one JSON file each (cifar.jobs)."""
    return home() / "jobs"


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def plots_dir() -> Path:
    """Rendered metric plots: public (the app shows them to everyone), so the app may serve them."""
    path = cache_dir() / "plots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def admin_key() -> str | None:
    return os.environ.get("CIFAR_ADMIN_KEY") or None


def hub_repo_id() -> str | None:
    return os.environ.get("HF_REPO_ID") or None


def hub_dataset_id() -> str | None:
    """The Hub dataset repository that keeps uploads and labels: HF_DATASET_ID, else HF_REPO_ID's
    name + "-data" (`team/cifar10` -> `team/cifar10-data`); None without HF_REPO_ID or when "off"."""
    value = os.environ.get("HF_DATASET_ID", "").strip()
    if value.lower() == "off":
        return None
    repo = hub_repo_id()
    return value or (f"{repo}-data" if repo else None)


def sync_spacing_seconds() -> float:
    """CIFAR_SYNC_SPACING_S: the least time between two commits of uploads and labels (60 s keeps
    a busy app at 60 commits an hour, half of what the Hub allows a repository)."""
    return float(os.environ.get("CIFAR_SYNC_SPACING_S") or 60)


def follow_seconds() -> float:
    """CIFAR_FOLLOW_S: how often the app polls the Hub (two cheap ref reads) for what other
    replicas changed; 20 s keeps a promotion anywhere served everywhere within a minute."""
    return float(os.environ.get("CIFAR_FOLLOW_S") or 20)


def replica_name() -> str:
    """CIFAR_REPLICA, else this machine's name (a Space container's is its own)."""
    return (os.environ.get("CIFAR_REPLICA") or socket.gethostname())[:64]


def claim_ttl_seconds() -> float:
    """CIFAR_CLAIM_TTL_S: a retrain claim lives this long unless its replica renews it."""
    return float(os.environ.get("CIFAR_CLAIM_TTL_S") or 600)


def retrain_seconds(default: float) -> float:
    """CIFAR_RETRAIN_S: the time a whole retrain aims to end within (`default`: the retrain's own
    setting). A slow CPU trains fewer steps within it; more time buys them back."""
    return float(os.environ.get("CIFAR_RETRAIN_S") or default)


def start_from_hub() -> bool:
    return os.environ.get("CIFAR_FROM_HUB", "").lower() in ("1", "true", "yes")


def max_batch() -> int:
    return max(1, int(os.environ.get("CIFAR_MAX_BATCH", "32")))


def tta_override() -> int | None:
    """CIFAR_TTA (0 image alone, 1 flip, 2 six views), or None to let cifar.cpu choose by the CPU."""
    value = os.environ.get("CIFAR_TTA", "").strip()
    return int(value) if value else None


def monitoring_refresh_seconds() -> float:
    """CIFAR_MONITORING_REFRESH_S: how often an open Monitoring tab refreshes itself (it also does when selected)."""
    return float(os.environ.get("CIFAR_MONITORING_REFRESH_S", "5"))


def tta_wait_budget() -> float:
    """CIFAR_TTA_BUDGET_S: the queue's work, in seconds, above which the batcher serves fewer views."""
    return float(os.environ.get("CIFAR_TTA_BUDGET_S", "0.25"))


def inference_threads() -> int | None:
    """CIFAR_INFERENCE_THREADS: threads of one network call (OpenVINO); None lets OpenVINO use
    every core. For replicas sharing a machine; serve-cluster leaves it unset, since two replicas
    on 2 cores served no more with it (RESULTS.md)."""
    value = os.environ.get("CIFAR_INFERENCE_THREADS")
    return max(1, int(value)) if value else None


def min_agreement() -> float:
    """CIFAR_MIN_AGREEMENT: how many of Keras' answers on the held-out images a converted model
    must give to serve (0.985 unless set; 1.0 serves only an exact match)."""
    return float(os.environ.get("CIFAR_MIN_AGREEMENT") or 0.985)


def onednn_isa_cap() -> str:
    """ONEDNN_MAX_CPU_ISA as oneDNN reads it (upper case), or "" when unset."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()


def precision_override() -> str:
    """CIFAR_PRECISION, or "" to let cifar.cpu choose by the CPU's features."""
    return os.environ.get("CIFAR_PRECISION", "").strip()


def queue_poll_seconds() -> float:
    """CIFAR_QUEUE_POLL_S: how often Gradio's queue looks for work it can start (Gradio: 1 ms)."""
    return float(os.environ.get("CIFAR_QUEUE_POLL_S", "0.005"))
