"""A Redis client that fails fast and, after a failure, leaves Redis alone for a while.

Rate-limit counters and token revocations ask Redis on every request
(``HEALTHHUB_REDIS_URL``); both have an answer without it (let the request through; the
database's revocation list). A Redis that hangs costs each request its socket timeouts — 1.5 s
for the two calls (tests/api/test_redis_outage.py) — so after one failure this process does not
ask Redis again for :data:`COOLDOWN` seconds: one slow request per process per cool-down during
an outage instead of every request (``breaker.py``). The first request
after the cool-down tries again, so the hub uses Redis again by itself once it is back.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .breaker import Breaker

T = TypeVar("T")
#: Seconds Redis is left alone after a failed call.
COOLDOWN = 5.0


class Unavailable(Exception):
    """Redis was not asked: a call failed less than :data:`COOLDOWN` seconds ago."""


class GuardedRedis:
    def __init__(self, url: str, timeout: float) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._breaker = Breaker(COOLDOWN)

    def call(self, action: Callable[[Any], T]) -> T:
        """``action(client)``; raises :class:`Unavailable` during a cool-down, and re-raises
        (starting one) what a failed call raised."""
        if self._breaker.open:
            raise Unavailable(f"Redis failed less than {self._breaker.cooldown:.0f} s ago")
        try:
            return action(self.client)
        except Exception:
            self._breaker.failed()
            raise
