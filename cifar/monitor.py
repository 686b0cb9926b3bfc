"""Request counters and latency percentiles since the app started (thread-safe, bounded memory)."""
import threading
import time
from collections import defaultdict, deque

import numpy as np


class Monitor:
    def __init__(self, window: int = 10_000):
        self.started = time.time()
        self._lock = threading.Lock()
        self._latencies: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._requests: dict[str, int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)

    def record(self, endpoint: str, seconds: float, ok: bool = True, count: int = 1) -> None:
        with self._lock:
            self._requests[endpoint] += count
            self._latencies[endpoint].append(seconds)
            if not ok:
                self._errors[endpoint] += 1

    def snapshot(self) -> list[dict]:
        """One row per endpoint: requests, errors, p50/p95/p99 latency in ms."""
        with self._lock:
            rows = []
            for endpoint in sorted(self._requests):
                lat = np.asarray(self._latencies[endpoint], dtype=np.float64) * 1000
                p50, p95, p99 = (np.percentile(lat, [50, 95, 99]) if len(lat) else (0, 0, 0))
                rows.append({"endpoint": endpoint, "requests": self._requests[endpoint],
                             "errors": self._errors[endpoint], "p50 ms": round(float(p50), 1),
                             "p95 ms": round(float(p95), 1), "p99 ms": round(float(p99), 1)})
            return rows

    def uptime(self) -> float:
        return time.time() - self.started
