"""Pushing new versions to the Hub in the background, and what the last push did.

A retrain must not wait for an upload of tens of megabytes: the push runs on its own thread
and its outcome is kept as a status line (Monitoring shows it). Without HF_REPO_ID it does nothing.
"""
import logging
import threading

from . import config, hub
from .registry import Registry

log = logging.getLogger("cifar")


class HubPusher:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.status = "idle" if config.hub_repo_id() else "not configured"

    def push_in_background(self, version_id: str) -> threading.Thread | None:
        """Start pushing `version_id`; the thread, or None where no Hub repository is configured."""
        if not config.hub_repo_id():
            return None
        thread = threading.Thread(target=self._push, args=(version_id,), daemon=True, name=f"push-{version_id}")
        thread.start()
        return thread

    def _push(self, version_id: str) -> None:
        self.status = f"pushing {version_id}"
        try:
            hub.push(self.registry.get(version_id))
            self.status = f"pushed {version_id}"
        except hub.HubError as exc:  # its message never holds the token
            self.status = f"push of {version_id} failed: {exc}"
            log.warning("push of %s failed: %s", version_id, exc)
