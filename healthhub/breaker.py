"""A cool-down after a failure: the simplest circuit breaker.

Some stores have an answer without them — Redis for rate limits and revocations
(``redis_guard.py``), the read replica for searches and statistics (``db.py``: the primary
answers). When one fails, every request would otherwise pay its timeout (a connect timeout of
seconds for a dead host) before taking the other way; after a failure the process leaves it
alone for ``cooldown`` seconds, so one request per process per cool-down pays the wait, and the
first request after it tries again — the store is used again by itself once it is back.
"""
from __future__ import annotations

import threading
import time


class Breaker:
    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._resume_at = 0.0

    @property
    def open(self) -> bool:
        """True during a cool-down: do not ask the store."""
        return time.monotonic() < self._resume_at

    def failed(self) -> bool:
        """Start a cool-down; True when none was running (log the failure then, once)."""
        with self._lock:
            first = not self.open
            self._resume_at = time.monotonic() + self.cooldown
            return first
