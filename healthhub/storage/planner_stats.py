"""Keep the query planner's statistics in step with the store's growth.

SQLite plans without statistics until ``ANALYZE`` has run, and then guesses: at 1M resources
it read every ``Observation.patient`` reference for an ``_include`` of 20 Observations and
started ``patient+code`` from the code (all Observations with that LOINC) instead of the
patient (bench/RESULTS.md, the SQLite 1M run). SQLite has nothing that analyses by itself, so
the hub runs ``ANALYZE`` each time the number of stored versions has doubled (1,000, 2,000,
4,000 … — about twenty times up to a billion), with ``analysis_limit`` so that one run reads a
sample of each index, not the whole table.
https://sqlite.org/lang_analyze.html#approx, https://sqlite.org/pragma.html#pragma_optimize

PostgreSQL's autovacuum analyses a table once 10% of it has changed, but it can be switched
off (it is on the benchmark machine), and then a store runs on the statistics of an empty table:
the CSV benchmark fell from 244 to 165 rows/s after ~180k rows because, with no statistics,
PostgreSQL filtered every token row of a parameter instead of looking the codes up. So where
``autovacuum`` is off the hub does the same doubling there: ``ANALYZE`` of its own tables only
(a bare ``ANALYZE`` would analyse every schema of the database), which samples a fixed 300 ×
``default_statistics_target`` rows per table whatever its size (~0.3 s for the hub's tables at
16,000 resources on the benchmark machine). Where autovacuum is on (PostgreSQL's default) it is
left to it: an ANALYZE in the hub's request path costs that request.
https://www.postgresql.org/docs/current/sql-analyze.html,
https://www.postgresql.org/docs/current/routine-vacuuming.html#VACUUM-FOR-STATISTICS
"""
from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine, delete, insert, text
from sqlalchemy.exc import SQLAlchemyError

from .models import AppState, Base

log = logging.getLogger(__name__)

#: Rows sampled per index by one ANALYZE (SQLite's own suggestion is "a few hundred").
ANALYSIS_LIMIT = 1000
#: No statistics before this many versions: plans on tiny tables do not matter.
FIRST_ANALYZE_AT = 1000
#: Seconds between two looks at the store's size from one process.
CHECK_EVERY = 2.0
#: PostgreSQL: give up on an ANALYZE that would wait longer than this for a table lock (another
#: process analysing the same table, a migration): the write it follows has been committed already.
LOCK_TIMEOUT = "2s"
_KEY = "planner_analyzed_at_versions"


class PlannerStatistics:
    """Decides, after writes, whether the planner's statistics are due."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.name in ("sqlite", "postgresql")
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
            self._check()
        except SQLAlchemyError as exc:
            # The write this follows is committed: statistics that could not be refreshed now
            # (database gone, lock timeout) are tried again at the next check, never an error.
            log.warning("planner statistics not refreshed: %s", exc.__class__.__name__)
        finally:
            self._lock.release()

    def _check(self) -> None:
        self._checked = time.monotonic()
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql" and self._analyzed_at is None \
                    and conn.execute(text("SELECT current_setting('autovacuum')")).scalar() != "off":
                self.enabled = False  # PostgreSQL's own daemon keeps the statistics
                return
            versions = conn.execute(text("SELECT coalesce(max(pk), 0) FROM resource_versions")).scalar_one()
            if self._analyzed_at is None or versions >= self._due(self._analyzed_at):
                # Another process may have analysed since this one last looked.
                stored = conn.execute(text("SELECT value FROM app_state WHERE key = :k"), {"k": _KEY}).scalar()
                self._analyzed_at = int(stored) if stored is not None else 0
        if versions >= self._due(self._analyzed_at):
            self.analyze(versions)

    def analyze(self, versions: int) -> None:
        """Run ANALYZE now (sampled) and remember at what size."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
                conn.exec_driver_sql("ANALYZE")
            else:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                # unqualified names: the connection's search_path is the hub's schema
                conn.exec_driver_sql("ANALYZE " + ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables))
            conn.execute(delete(AppState).where(AppState.key == _KEY))
            conn.execute(insert(AppState).values(key=_KEY, value=str(versions)))
        self._analyzed_at = versions

    @staticmethod
    def _due(analyzed_at: int) -> int:
        return max(FIRST_ANALYZE_AT, 2 * analyzed_at)

