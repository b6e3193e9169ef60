"""The export worker: takes jobs from the database one at a time and runs them, and removes
jobs past their retention. ``healthhub worker`` runs it in a process of its own; ``healthhub
serve`` runs it as a thread in each web process (``HEALTHHUB_EXPORT_WORKER=thread``, the
default). Any number may run: a job is claimed by one UPDATE (``jobs.claim``), and a job whose
worker died is taken up again once its heartbeat is older than ``jobs.STALE_AFTER``.

While the database cannot be reached the worker waits longer and longer between tries
(:data:`BACKOFF_FIRST` doubled up to :data:`BACKOFF_MAX`) and says so once per step rather than
with a traceback a second (:class:`_Outage`); other errors keep their traceback.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from ..clock import utcnow
from ..config import Config
from ..db import Database, unreachable
from ..metrics import EXPORT_JOBS, EXPORT_POLLED, EXPORT_RUNNING
from ..search.registry import default_registry
from . import jobs, writer

log = logging.getLogger("healthhub.bulk")
#: Seconds between looks for work when there was none.
POLL = 1.0
#: Seconds between removals of expired jobs (retention is counted in hours).
CLEAN_EVERY = 60.0
#: Seconds to wait after the database could not be reached, doubled after each further failure
#: up to ``BACKOFF_MAX``: a worker per web process (and any ``healthhub worker``) all retrying
#: every second would add to the load of a database that is coming back.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


class Worker:
    def __init__(self, db: Database, config: Config, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.export_dir = Path(config.export_dir)
        self.retention = timedelta(hours=config.export_retention_hours)
        self.stopping = threading.Event()
        self._cleaned_at: float | None = None

    def run_once(self) -> str | None:
        """Clean up expired jobs (at most once a minute), then run one waiting job; its outcome,
        or None when none waited."""
        if self._cleaned_at is None or time.monotonic() - self._cleaned_at >= CLEAN_EVERY:
            self.clean_up()
            self._cleaned_at = time.monotonic()
        with self.db.transaction() as session:
            job_id = jobs.claim(session, self.name, self.clock())
        EXPORT_POLLED.set_to_current_time()
        if job_id is None:
            return None
        log.info("export %s: taken by %s", job_id, self.name)
        with EXPORT_RUNNING.track_inprogress():
            outcome = writer.run(self.db, default_registry(), job_id, self.name, self.export_dir,
                                 self.config.export_file_max, self.retention, self.clock)
        EXPORT_JOBS.labels(outcome).inc()
        return outcome

    def clean_up(self) -> int:
        with self.db.transaction() as session:
            done = jobs.expired(session, self.clock())
            for job_id in done:
                jobs.forget(session, job_id, self.export_dir)
        return len(done)

    def run_forever(self) -> None:
        log.info("export worker %s: started", self.name)
        outage = _Outage(self.name)
        while not self.stopping.is_set():
            try:
                outcome = self.run_once()
            except Exception as exc:  # wait and try again, never die
                if unreachable(exc):
                    self.stopping.wait(outage.failed(exc))
                    continue
                log.exception("export worker %s: error; retrying", self.name)
                outcome = None
            else:
                outage.over()
            if outcome is None:
                self.stopping.wait(POLL)
        log.info("export worker %s: stopped", self.name)


class _Outage:
    """The worker's view of a database it cannot reach: how long to wait before the next try, and
    what to log — one ERROR line at the first failure (the driver's message: a traceback of the
    connection pool says nothing more), a WARNING each time the wait grows, nothing once it is at
    :data:`BACKOFF_MAX`, and one INFO line when the database answers again."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.failures = 0
        self.delay = 0.0
        self.since = 0.0

    def failed(self, exc: BaseException) -> float:
        """Seconds to wait after this failure."""
        self.failures += 1
        if self.failures == 1:
            self.since = time.monotonic()
            self.delay = BACKOFF_FIRST
            log.error("export worker %s: the database is unreachable (%s); retrying in %g s",
                      self.worker, _why(exc), self.delay)
        elif self.delay < BACKOFF_MAX:
            self.delay = min(self.delay * 2, BACKOFF_MAX)
            then = f", then every {BACKOFF_MAX:g} s without further warnings" if self.delay >= BACKOFF_MAX else ""
            log.warning("export worker %s: the database is still unreachable after %d tries in %.0f s; "
                        "next try in %g s%s", self.worker, self.failures, time.monotonic() - self.since,
                        self.delay, then)
        return self.delay

    def over(self) -> None:
        """The database answered."""
        if self.failures:
            log.info("export worker %s: the database is reachable again, after %.0f s and %d failed tries",
                     self.worker, time.monotonic() - self.since, self.failures)
            self.failures = 0


def _why(exc: BaseException) -> str:
    """The driver's first line (``connection refused``, ``unable to open database file``), without
    SQLAlchemy's statement and link."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:300] if lines else ''}"


def start_thread(config: Config) -> Worker:
    """Run a worker in a daemon thread of this process (its own database connections)."""
    worker = Worker(Database(config), config)
    threading.Thread(target=worker.run_forever, name="healthhub-export", daemon=True).start()
    return worker
