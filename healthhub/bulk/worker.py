"""The export worker: takes jobs from the database one at a time and runs them, and removes
jobs past their retention. ``healthhub worker`` runs it in a process of its own; ``healthhub
serve`` runs it as a thread in each web process (``HEALTHHUB_EXPORT_WORKER=thread``, the
default). Any number may run: a job is claimed by one UPDATE (``jobs.claim``), and a job whose
worker died is taken up again once its heartbeat is older than ``jobs.STALE_AFTER``.
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
from ..db import Database
from ..search.registry import default_registry
from . import jobs, writer

log = logging.getLogger("healthhub.bulk")
#: Seconds between looks for work when there was none.
POLL = 1.0
#: Seconds between removals of expired jobs (retention is counted in hours).
CLEAN_EVERY = 60.0


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
        if job_id is None:
            return None
        log.info("export %s: taken by %s", job_id, self.name)
        return writer.run(self.db, default_registry(), job_id, self.name, self.export_dir,
                          self.config.export_file_max, self.retention, self.clock)

    def clean_up(self) -> int:
        with self.db.transaction() as session:
            done = jobs.expired(session, self.clock())
            for job_id in done:
                jobs.forget(session, job_id, self.export_dir)
        return len(done)

    def run_forever(self) -> None:
        log.info("export worker %s: started", self.name)
        while not self.stopping.is_set():
            try:
                outcome = self.run_once()
            except Exception:  # the database is away, say: wait and try again, never die
                log.exception("export worker %s: error; retrying", self.name)
                outcome = None
            if outcome is None:
                self.stopping.wait(POLL)
        log.info("export worker %s: stopped", self.name)


def start_thread(config: Config) -> Worker:
    """Run a worker in a daemon thread of this process (its own database connections)."""
    worker = Worker(Database(config), config)
    threading.Thread(target=worker.run_forever, name="healthhub-export", daemon=True).start()
    return worker
