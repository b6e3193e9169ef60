"""Request counting for rate limits, shared by every process: fixed one-minute windows per key
(``client:<id>`` or ``addr:<ip>``), kept in Redis when ``HEALTHHUB_REDIS_URL`` is set, else in the
database (``rate_limit_counters``).

Redis: one ``INCR`` (+ ``EXPIRE`` on the window's first hit) per request — exact.

Database: a write per request would put every request of a busy hospital system on one row
(and, on SQLite, behind every long write). So each process adds its hits up locally and writes
them (an upsert that returns the window's total) every ``batch`` hits or every second, whichever
comes first; the decision uses the last total read plus the hits not yet written. A key can go
over its limit by at most ``batch`` requests per process before every process sees it — the
usual trade of a distributed limiter (the batch is 1/20 of the limit). If the counter store
cannot be reached, requests are let through and the failure is logged: a limiter must not turn
a database hiccup into an outage of its own.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Table, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..db import Database
from ..redis_guard import GuardedRedis, Unavailable
from .models import RateLimitCounter

log = logging.getLogger("healthhub.ratelimit")
WINDOW = 60
#: How long a counter write waits for SQLite's write lock, and the engine's usual wait (db.py).
SQLITE_WAIT_MS = 200
SQLITE_BUSY_MS = 30000


class Counter(Protocol):
    def hit(self, key: str, window: int) -> int:
        """Count one request of ``key`` in ``window``; the window's count so far."""


class RedisCounter:
    def __init__(self, url: str) -> None:
        self.redis = GuardedRedis(url, timeout=1.0)

    def hit(self, key: str, window: int) -> int:
        name = f"healthhub:rl:{key}:{window}"

        def count(client: Any) -> int:
            pipe = client.pipeline()
            pipe.incr(name)
            pipe.expire(name, WINDOW * 2, nx=True)
            total, _ = pipe.execute()
            return int(total)
        return self.redis.call(count)


@dataclass
class _Local:
    known: int = 0  # the window's total at the last write
    pending: int = 0  # hits of this process not yet written
    written_at: float = 0.0


class DatabaseCounter:
    def __init__(self, db: Database, batch: int) -> None:
        self.db = db
        self.batch = max(1, batch)
        self._lock = threading.Lock()
        self._local: dict[tuple[str, int], _Local] = {}
        self._window = 0

    def hit(self, key: str, window: int) -> int:
        now = time.monotonic()
        forget = None
        with self._lock:
            if window != self._window:  # a new minute: forget the old ones, here and in the table
                self._local = {k: v for k, v in self._local.items() if k[1] >= window}
                self._window = window
                forget = window - WINDOW
            state = self._local.setdefault((key, window), _Local(written_at=now))
            state.pending += 1
            count = state.known + state.pending
            due = state.pending >= self.batch or now - state.written_at >= 1.0
            if due:
                pending, state.pending, state.written_at = state.pending, 0, now
        if forget is not None:  # outside the lock: other requests need not wait for it
            self._forget_before(forget)
        if not due:
            return count
        try:
            total = self._add(key, window, pending)
        except Exception:
            with self._lock:
                state.pending += pending  # written with the next batch
            raise
        with self._lock:
            state.known = max(state.known, total)
            return state.known + state.pending

    def _add(self, key: str, window: int, n: int) -> int:
        engine = self.db.engine
        make = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        table = RateLimitCounter.__table__
        assert isinstance(table, Table)
        stmt = make(table).values(key=key, window=window, count=n)
        stmt = stmt.on_conflict_do_update(index_elements=["key", "window"],
                                          set_={"count": table.c.count + stmt.excluded.count})
        with self._connection() as conn, conn.begin():
            return int(conn.execute(stmt.returning(table.c.count)).scalar_one())

    def _forget_before(self, window: int) -> None:
        try:
            with self._connection() as conn, conn.begin():
                conn.execute(delete(RateLimitCounter).where(RateLimitCounter.window < window))
        except Exception:
            log.warning("rate limit: could not remove old counters", exc_info=True)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A connection that waits at most ``SQLITE_WAIT_MS`` for SQLite's write lock: a long write
        (a CSV upload, a 3 MB Bundle) holds it for seconds, and counting a request must not make
        the request wait for it (the engine's own wait is 30 s). Past that wait the counter store
        counts as unavailable: the request goes through (:meth:`Limiter.check`)."""
        with self.db.engine.connect() as conn:
            if conn.dialect.name != "sqlite":
                yield conn
                return
            raw: Any = conn.connection.dbapi_connection
            raw.execute(f"PRAGMA busy_timeout={SQLITE_WAIT_MS}")
            try:
                yield conn
            finally:
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int


class Limiter:
    """``limit`` requests per minute per key."""

    def __init__(self, counter: Counter, limit: int) -> None:
        self.counter = counter
        self.limit = limit

    def check(self, key: str, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        window = int(now) // WINDOW * WINDOW
        try:
            count = self.counter.hit(key, window)
        except Unavailable:  # Redis failed moments ago (logged then): not asked, let through
            return Verdict(True, self.limit, self.limit, 0)
        except Exception:
            log.warning("rate limit: counter store unavailable; request let through", exc_info=True)
            return Verdict(True, self.limit, self.limit, 0)
        retry = max(1, window + WINDOW - int(now))
        return Verdict(count <= self.limit, self.limit, max(0, self.limit - count), retry)


def make_limiter(db: Database, limit: int, redis_url: str) -> Limiter | None:
    if limit <= 0:
        return None
    counter: Counter = RedisCounter(redis_url) if redis_url else DatabaseCounter(db, batch=max(1, limit // 20))
    return Limiter(counter, limit)

