"""Push and pull model versions to a Hugging Face Hub model repository, and the plain commits and
reads the app's state on the Hub is made of (cifar.state_sync).

Each version is one commit (model, metrics, metadata, model card) tagged with the version id; the
current version is `current.json` at the head of main. Configuration: HF_REPO_ID, HF_TOKEN (or
the saved login), HF_ENDPOINT for a non-default Hub. Errors become `HubError` with a plain
message (and the server's Retry-After, if any); the token never appears in one.
"""
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, RepoFile, errors, hf_hub_download, snapshot_download
from huggingface_hub.utils import disable_progress_bars

from . import card, config, cpu, runtime
from .registry import Registry, Version

KERAS_FOLDER_FILES = ["config.json", "model.weights.h5"]  # inside every .keras file
PUSHED_FILES = ["model.keras", "metrics.json", "metadata.json", "history.json", "calibration.json", "README.md",
                "confusion.png", "history.png",
                *(f"{folder}/{name}" for folder in (runtime.FOLDER, runtime.FALLBACK) for name in runtime.FILES)]


CURRENT_FILE = "current.json"  # in the model repository: which version serves


class HubError(RuntimeError):
    """A push or pull that failed; the message says what to do and never holds the token.
    `retry_after`: seconds the server asked to wait (429, 503), else None."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class HubConflict(HubError):
    """A commit made on a parent that is no longer the head of main: someone else committed first."""


def _scrub(text: str) -> str:
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def _explain(exc: Exception, repo_id: str, revision: str | None = None) -> HubError:
    if isinstance(exc, errors.RevisionNotFoundError):
        message = (f"has no version {_scrub(revision)[:100]!r} (no such tag) in {repo_id}" if revision
                   else f"no such version (tag) in {repo_id}")
    elif isinstance(exc, errors.RepositoryNotFoundError):
        message = f"repository {repo_id} not found, or the token may not access it"
    elif isinstance(exc, errors.HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if status == 412:
            return HubConflict(f"Hub: {repo_id} changed since it was read (HTTP 412).")
        if status in (429, 503):
            wait = (response.headers.get("Retry-After") or "").strip()
            return HubError(f"Hub busy or down (HTTP {status}); retrying later.",
                            float(wait) if wait.isdigit() else None)
        if status in (401, 403):
            message = f"the Hub refused the token (HTTP {status}): check HF_TOKEN"
        else:
            message = f"the Hub answered with an error (HTTP {status or '?'}); try again later"
    elif isinstance(exc, errors.LocalEntryNotFoundError) or "connect" in str(exc).lower():
        message = "cannot reach the Hub (no network?); the version is kept locally, push again later"
    else:
        message = f"{exc.__class__.__name__}: {_scrub(str(exc))[:200]}"
    return HubError(f"Hub {message}.")


def _api() -> HfApi:
    disable_progress_bars()  # progress bars would flood the app's log

    return HfApi(token=os.environ.get("HF_TOKEN") or None)


def _repo() -> str:
    repo_id = config.hub_repo_id()
    if not repo_id:
        raise HubError("No Hub repository configured: set HF_REPO_ID.")
    return repo_id


def stage(version: Version, repo_id: str, folder: Path, current_since: str | None = None) -> None:
    """What a push uploads: the version's files, its card naming this repository (saying it is the
    current one with `current_since`), and the model also in Keras' folder layout (config.json +
    model.weights.h5, unzipped from model.keras), which `keras.saving.load_model("hf://owner/repo")` reads."""
    for name in PUSHED_FILES:
        if (version.path / name).exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(version.path / name, folder / name)
    (folder / "README.md").write_text(card.model_card(version.id, version.metadata, version.metrics,
                                                      version.calibration or None, repo=repo_id,
                                                      current_since=current_since))
    with zipfile.ZipFile(version.model_path) as archive:
        for name in KERAS_FOLDER_FILES:
            (folder / name).write_bytes(archive.read(name))


def push(version: Version, repo_id: str | None = None) -> str:
    """Upload `version` as one commit tagged `version.id`; returns the commit id.

    Pushing a version that is already tagged is a no-op returning that tag's commit, so a
    failed push can simply be retried.

    Raises:
        HubError: no repository configured, bad token, unreachable or failing server.
    """
    repo_id = repo_id or _repo()
    api = _api()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        refs = api.list_repo_refs(repo_id)
        for tag in refs.tags:
            if tag.name == version.id:
                return tag.target_commit
        with tempfile.TemporaryDirectory() as staging:
            stage(version, repo_id, Path(staging))
            # The repository's tree is the last version pushed: files of its that this version has
            # not (a runtime: a turned-down version has none) go, or its tag would carry them.
            stale = PUSHED_FILES if refs.branches else None  # no main yet: nothing to delete
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, delete_patterns=stale,
                                       commit_message=f"Add version {version.id}",
                                       commit_description=f"Model version {version.id} "
                                                          f"({version.metadata.get('kind', '?')}).")
        api.create_tag(repo_id, tag=version.id, revision=commit.oid, tag_message=f"version {version.id}")
        return commit.oid
    except HubError:
        raise
    except Exception as exc:
        raise _explain(exc, repo_id) from None


def tags(repo_id: str | None = None) -> list[str]:
    """Version tags in the repository, oldest first."""
    repo_id = repo_id or _repo()
    try:
        return sorted(tag.name for tag in _api().list_repo_refs(repo_id).tags)
    except Exception as exc:
        raise _explain(exc, repo_id) from None


def pull(registry: Registry, revision: str | None, repo_id: str | None = None) -> Version:
    """Download version `revision` (a tag; the newest tag when None) into `registry`."""
    repo_id = repo_id or _repo()
    if revision is None:
        available = tags(repo_id)
        if not available:
            raise HubError(f"No versions pushed to {repo_id} yet.")
        revision = available[-1]
    try:
        with tempfile.TemporaryDirectory() as folder:
            snapshot_download(repo_id, revision=revision, local_dir=folder,
                              token=os.environ.get("HF_TOKEN") or None, allow_patterns=PUSHED_FILES)
            if not (Path(folder) / "model.keras").exists():
                raise HubError(f"{repo_id}@{revision} holds no model.keras.")
            # None pushed: a version from before the runtime existed, or one a retrain turned down
            if not (Path(folder) / runtime.FOLDER / "runtime.json").exists():
                from . import model as net  # Keras: only for such versions

                runtime.build(net.load(Path(folder) / "model.keras"), Path(folder), cpu.tta_level())
            return registry.add_folder(Path(folder), version_id=revision)
    except HubError:
        raise
    except Exception as exc:
        raise _explain(exc, repo_id, revision) from None


# --- plain commits and reads (the app's state: uploads, labels, the current version) ----------

def ensure_repo(repo_id: str, repo_type: str = "model", private: bool = True) -> None:
    """Create the repository if it does not exist (private unless told otherwise)."""
    try:
        _api().create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    except Exception as exc:
        raise _explain(exc, repo_id) from None


def head(repo_id: str, repo_type: str = "model") -> str | None:
    """The commit at the head of main, or None for an empty or missing repository."""
    try:
        refs = _api().list_repo_refs(repo_id, repo_type=repo_type)
    except errors.RepositoryNotFoundError:
        return None
    except Exception as exc:
        raise _explain(exc, repo_id) from None
    return next((branch.target_commit for branch in refs.branches if branch.name == "main"), None)


def commit(repo_id: str, files: dict[str, bytes | Path], message: str, repo_type: str = "model",
           parent: str | None = None) -> str:
    """One commit adding (or replacing) `files` {path in repo: bytes or local file}; with `parent`,
    only if that is still the head of main (else HubConflict). Returns the commit id."""
    operations = [CommitOperationAdd(path, data if isinstance(data, bytes) else str(data)) for path, data in files.items()]
    try:
        return _api().create_commit(repo_id, operations, commit_message=message, repo_type=repo_type,
                                    parent_commit=parent).oid
    except Exception as exc:
        raise _explain(exc, repo_id) from None


def read_file(repo_id: str, path: str, revision: str | None = None, repo_type: str = "model") -> bytes | None:
    """A file's bytes at `revision` (main), or None where the repository or the file is not there."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            local = hf_hub_download(repo_id, path, revision=revision, repo_type=repo_type, local_dir=folder,
                                    token=os.environ.get("HF_TOKEN") or None)
            return Path(local).read_bytes()
    except (errors.EntryNotFoundError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        return None
    except Exception as exc:
        raise _explain(exc, repo_id) from None


def download(repo_id: str, folder: Path, repo_type: str = "model", patterns: list[str] | None = None,
             revision: str | None = None) -> Path | None:
    """Every file of `revision` (the head of main), or those matching `patterns`, into `folder`;
    None for an empty or missing repository."""
    if revision is None and head(repo_id, repo_type) is None:
        return None
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_dir=folder,
                                      allow_patterns=patterns,
                                      token=os.environ.get("HF_TOKEN") or None))
    except Exception as exc:
        raise _explain(exc, repo_id) from None


def list_files(repo_id: str, folder: str, repo_type: str = "model", revision: str | None = None) -> list[str]:
    """Paths of the files directly in `folder` at `revision` (main); [] where it is not there."""
    try:
        return [item.path for item in _api().list_repo_tree(repo_id, path_in_repo=folder, revision=revision,
                                                              repo_type=repo_type) if isinstance(item, RepoFile)]
    except (errors.EntryNotFoundError, errors.RepositoryNotFoundError):
        return []
    except Exception as exc:
        raise _explain(exc, repo_id) from None
