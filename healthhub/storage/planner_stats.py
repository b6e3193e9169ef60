"""Keep SQLite's query-planner statistics in step with the store's growth.

SQLite plans without statistics until ``ANALYZE`` has run, and then guesses: at 1M resources
it read every ``Observation.patient`` reference for an ``_include`` of 20 Observations and
started ``patient+code`` from the code (all Observations with that LOINC) instead of the
patient (bench/RESULTS.md, the SQLite 1M run). PostgreSQL's autovacuum keeps its statistics
itself; SQLite has nothing of the kind, so the hub runs ``ANALYZE`` each time the number of
stored versions has doubled (1,000, 2,000, 4,000 … — about twenty times up to a billion), with
``analysis_limit`` so that one run reads a sample of each index, not the whole table.
https://sqlite.org/lang_analyze.html#approx, https://sqlite.org/pragma.html#pragma_optimize
"""
from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, delete, insert, text

from .models import AppState

#: Rows sampled per index by one ANALYZE (SQLite's own suggestion is "a few hundred").
ANALYSIS_LIMIT = 1000
#: No statistics before this many versions: plans on tiny tables do not matter.
FIRST_ANALYZE_AT = 1000
#: Seconds between two looks at the store's size from one process.
CHECK_EVERY = 2.0
_KEY = "sqlite_analyzed_at_versions"


class PlannerStatistics:
    """Decides, after writes, whether SQLite's statistics are due (no-op on PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.name == "sqlite"
        self._analyzed_at: int | None = None  # versions at the last ANALYZE, as this process knows it
        self.check_every = CHECK_EVERY
        self._checked = 0.0
        self._lock = threading.Lock()

    def after_write(self) -> None:
        """Cheap when nothing is due: one ``max(pk)`` read every ``CHECK_EVERY`` seconds."""
        if not self.enabled or time.monotonic() - self._checked < self.check_every:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread of this process is looking already
        try:
            self._checked = time.monotonic()
            with self.engine.connect() as conn:
                versions = conn.execute(text("SELECT coalesce(max(pk), 0) FROM resource_versions")).scalar_one()
                if self._analyzed_at is None or versions >= self._due(self._analyzed_at):
                    # Another process may have analysed since this one last looked.
                    stored = conn.execute(text("SELECT value FROM app_state WHERE key = :k"), {"k": _KEY}).scalar()
                    self._analyzed_at = int(stored) if stored is not None else 0
            if versions >= self._due(self._analyzed_at):
                self.analyze(versions)
        finally:
            self._lock.release()

    def analyze(self, versions: int) -> None:
        """Run ANALYZE now (sampled) and remember at what size."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
            conn.exec_driver_sql("ANALYZE")
            conn.execute(delete(AppState).where(AppState.key == _KEY))
            conn.execute(insert(AppState).values(key=_KEY, value=str(versions)))
        self._analyzed_at = versions

    @staticmethod
    def _due(analyzed_at: int) -> int:
        return max(FIRST_ANALYZE_AT, 2 * analyzed_at)
