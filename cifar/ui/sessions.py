"""Gradio sessions for API callers: cheaper, and never evicted while one of their events runs.

For every new session (each HTTP API call without a session hash is one) Gradio 6 builds the
config of every component in the app, for deep links, though a prediction never reads them.
Under the load test (32 Locust users, py-spy on the server) that was 37% of the samples of the
event-loop thread that serves all HTTP: 320 of 869. Here a session builds a component's config
when something first reads it; what it reads is the same.
"""
import functools
from collections import OrderedDict

from gradio import state_holder
from gradio.utils import LRUCache


class LazyConfigs(dict):
    """A session's `config_values`: each component's config made on first read."""

    def __init__(self, session, ids):
        super().__init__()
        self._session, self._pending = session, set(ids)

    def __missing__(self, key):
        if key not in self._pending:
            raise KeyError(key)
        self._pending.discard(key)
        blocks = self._session.blocks_config.blocks
        value = self._session.blocks_config.config_for_block(key, [], blocks[key])
        super().__setitem__(key, value)
        return value

    def __setitem__(self, key, value):
        self._pending.discard(key)
        super().__setitem__(key, value)

    def __contains__(self, key):
        return key in self._pending or super().__contains__(key)

    def _all(self) -> None:
        for key in list(self._pending):
            self[key]

    def items(self):
        self._all()
        return super().items()

    def keys(self):
        self._all()
        return super().keys()

    def values(self):
        self._all()
        return super().values()

    def __iter__(self):
        self._all()
        return super().__iter__()

    def __len__(self):
        return len(self._pending) + super().__len__()


class _NoBlocks:
    """What SessionState's own constructor sees: the app's config, but no blocks to build yet."""

    def __init__(self, blocks):
        self.default_config, self.blocks = blocks.default_config, {}


def install() -> None:
    """Make every Gradio session build its components' configs lazily (once per process)."""
    original = state_holder.SessionState.__init__
    if getattr(original, "lazy_configs", False):
        return

    @functools.wraps(original)
    def init(self, blocks):
        original(self, _NoBlocks(blocks))
        self.config_values = LazyConfigs(self, [k for k in self.blocks_config.blocks if k in blocks.blocks])

    init.lazy_configs = True
    state_holder.SessionState.__init__ = init


class SessionsWithEventsKept(LRUCache):
    """Gradio's pending messages per session, kept so that no session with an event still
    queued, running or undelivered is evicted.

    Gradio 6.31 keeps them in an LRU of 2,000 sessions (queueing.Queue.pending_messages_per_session)
    and every one-shot API call is a new session: at ~90 calls/s a retrain's session is evicted
    within ~22 s, its caller's event stream answers 404, and the next progress message for it
    raises KeyError in Queue.send_message, which ends Queue.start_progress_updates for every later
    event of the process (RESULTS.md, "Gradio's session eviction"). Here the oldest idle session
    goes first; only when every session is busy and the cache has doubled does the oldest go.
    """

    def __init__(self, busy: dict, max_size: int):
        super().__init__(max_size)
        self._busy = busy  # Queue.pending_event_ids_session: session -> ids of its undelivered events

    def __setitem__(self, key, value) -> None:
        if key in self:
            self.move_to_end(key)
        elif len(self) >= self.max_size:
            idle = next((k for k in self if not self._busy.get(k)), None)
            if idle is not None:
                del self[idle]
            elif len(self) >= 2 * self.max_size:
                self.popitem(last=False)
        OrderedDict.__setitem__(self, key, value)


def keep_sessions_with_events(demo) -> None:
    """Replace `demo`'s queue's session cache (after `demo.queue()`) with `SessionsWithEventsKept`."""
    queue = demo._queue
    current = queue.pending_messages_per_session
    if isinstance(current, SessionsWithEventsKept):
        return
    kept = SessionsWithEventsKept(queue.pending_event_ids_session, current.max_size)
    for key, value in current.items():
        OrderedDict.__setitem__(kept, key, value)
    queue.pending_messages_per_session = kept
