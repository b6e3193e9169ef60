"""Engine and session factory: plain SQLAlchemy 2.0, usable outside Flask (CLI, MLLP, workers).

Sessions are owned at the edge (a view, a CLI command): they commit; the repository only flushes.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import jsonio
from .audit.chain import sha256_hex
from .breaker import Breaker
from .config import Config
from .outcome import aborted_for_concurrency

#: Seconds to establish a PostgreSQL connection (a LAN needs milliseconds) before giving up. A
#: request may try up to three times during an outage (token revocations, rate-limit counter,
#: its own work; HL7's archive after a failure): 3 s keeps its 503 or AE within ~10 s.
CONNECT_TIMEOUT = 3
#: Seconds a pooled PostgreSQL connection may sit idle before it is pinged on checkout.
PING_IDLE = 1.0
#: Seconds searches and statistics read the primary after the replica could not be reached.
REPLICA_COOLDOWN = 10.0
log = logging.getLogger("healthhub.db")


def make_engine(config: Config) -> Engine:
    """Create the engine for ``config.database_url`` (the SQLite folder is created if missing)."""
    url = make_url(config.database_url)
    if url.drivername == "postgresql":
        # The psycopg 3 driver (the `postgres` extra), whatever SQLAlchemy's default for a bare URL.
        url = url.set(drivername="postgresql+psycopg")
    options: dict[str, Any] = {
        "json_serializer": jsonio.dumps_str,
        "json_deserializer": jsonio.loads,
        "future": True,
        # A logged database error shows the SQL, never its parameters: they are patient data.
        "hide_parameters": True,
    }
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"timeout": 30}
    else:
        # No server-side prepared statements: a generic plan cached while a table was still
        # small stays bad after it grows (a 1000x slowdown seen when loading Synthea), and
        # prepared statements do not survive PgBouncer's transaction pooling.
        options["connect_args"] = {"prepare_threshold": None}
        if "connect_timeout" not in url.query:
            # A database that takes the TCP connection and never answers (a hung server, an outage
            # behind a proxy or load balancer) held each request for libpq's default of 130 s, past
            # gunicorn's worker timeout; with a bound the request gets its 503 in time
            # (tests/system/test_outage.py). The URL may set another: …?connect_timeout=N.
            options["connect_args"]["connect_timeout"] = CONNECT_TIMEOUT
    engine = create_engine(url, **options)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take it over so that a
        # read-modify-write runs inside one real transaction (SQLAlchemy docs,
        # "Serializable isolation / Savepoints / Transactional DDL" for pysqlite).
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        event.listen(engine, "connect", _postgres_settings)
        event.listen(engine, "checkin", _mark_used)
        event.listen(engine, "checkout", _ping_if_idle(engine.dialect))
    return engine


def _mark_used(_dbapi_connection: Any, record: Any) -> None:
    record.info["used"] = time.monotonic()


def _ping_if_idle(dialect: Dialect) -> Callable[[Any, Any, Any], None]:
    """Check a pooled connection before lending it out, as ``pool_pre_ping`` does, but only when
    it has been idle for :data:`PING_IDLE` seconds (HikariCP's ``aliveBypassWindowMs``): a
    connection that answered a moment ago is alive, and the ping was one of a read by id's five
    round trips. One that died since (the server restarted within that second) fails its
    statement; SQLAlchemy then discards the whole pool, so the next request connects anew.
    https://docs.sqlalchemy.org/en/20/core/pooling.html#disconnect-handling-pessimistic"""

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("used", float("-inf")) < PING_IDLE:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool replaces the connection (and retries) on DisconnectionError
            raise DisconnectionError(f"pooled connection failed its ping ({type(exc).__name__})") from exc
        if not alive:
            raise DisconnectionError("pooled connection failed its ping")
    return checkout


def unreachable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (what ``errors.py`` answers 503):
    the server is down, refuses or drops the connection, or SQLite cannot open its file — not a
    conflict with a concurrent transaction, nor a bad statement."""
    if not isinstance(exc, DBAPIError):
        return False
    return isinstance(exc, OperationalError) and not aborted_for_concurrency(exc) or exc.connection_invalidated


def _postgres_settings(dbapi_connection: Any, record: Any) -> None:
    # PostgreSQL caches the plan of each foreign-key check per connection and, after five runs,
    # keeps a generic plan made with the statistics of that moment: on a connection opened while
    # `resources` was empty it reads every resource of the type per check, for the connection's
    # whole life (bench/RESULTS.md, finding 1). A custom plan is made per check instead (the
    # probe of finding 1: 287 ms instead of 1,493 ms for 20,000 checks on such a connection).
    # Migration 0016 removed the last foreign key; the setting stays for whatever plan the server
    # caches per connection next (a new key, a function), at one statement per new connection.
    # https://www.postgresql.org/docs/15/runtime-config-query.html#GUC-PLAN-CACHE-MODE
    with dbapi_connection.cursor() as cur:
        cur.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_connection.commit()
    _mark_used(dbapi_connection, record)  # it just answered: no ping on its first checkout


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    # LIKE as on PostgreSQL: case-sensitive. The search columns it runs on are already
    # normalised (case-folded) or are URIs, and only a case-sensitive LIKE 'prefix%' can use an
    # index on SQLite: without it `name=…` walked every string of the type (sqlite.org/optoverview.html#like_opt).
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()
    # The audit chain's hash, computed in its INSERT … SELECT (PostgreSQL has sha256 built in).
    dbapi_connection.create_function("hh_sha256", 1, sha256_hex, deterministic=True)


class Database:
    """The primary's engine and session factory, and the read replica's when one is configured."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = make_engine(config)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                            if self.engine.dialect.name == "postgresql" else None)
        # HEALTHHUB_READ_DATABASE_URL: a streaming replica (docs/deployment.md) for the reads that
        # may lag the primary by the replication delay — searches and statistics. Reads by id,
        # history, writes and everything in a write's transaction stay on the primary.
        self.read_engine = (make_engine(replace(config, database_url=config.read_database_url))
                            if config.read_database_url else self.engine)
        self.read_sessionmaker = (sessionmaker(self.read_engine, expire_on_commit=False)
                                  if self.read_engine is not self.engine else self.sessionmaker)
        self._replica = Breaker(REPLICA_COOLDOWN)
        from .storage.planner_stats import PlannerStatistics

        self.planner_stats = PlannerStatistics(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session in one transaction: commit on success, roll back on any error."""
        with self.sessionmaker() as session:
            with session.begin():
                yield session
        self.planner_stats.after_write()

    @contextmanager
    def statements(self) -> Iterator[Session]:
        """A session whose statements each commit on their own (PostgreSQL autocommit), for a
        unit of work that reads and then appends its audit record, one statement each: the
        same answer as in a transaction — at READ COMMITTED every statement takes its own
        snapshot anyway — without BEGIN and COMMIT, two of a read by id's four round trips.
        Not for anything that writes twice. On SQLite (in process, no round trips) a transaction."""
        if self._autocommit is None:
            with self.transaction() as session:
                yield session
            return
        with Session(self._autocommit, expire_on_commit=False) as session:
            yield session

    @property
    def has_replica(self) -> bool:
        return self.read_engine is not self.engine

    @contextmanager
    def read_transaction(self) -> Iterator[Session]:
        """A read-only transaction on the replica — the primary when there is none, or when the
        replica cannot be reached: its reads are what the replica would answer, fresher. After a
        failure to connect the replica is left alone for :data:`REPLICA_COOLDOWN` seconds
        (``breaker.py``), so a dead replica costs one connect timeout per process per cool-down,
        not one per search."""
        if self.has_replica and not self._replica.open:
            session = self.read_sessionmaker()
            transaction = session.begin()
            try:
                session.connection()  # connects now: a dead replica fails here, not mid-search
            except DBAPIError as exc:
                session.close()
                if not unreachable(exc):
                    raise
                if self._replica.failed():
                    log.warning("read replica unreachable (%s); searches and statistics read the primary "
                                "for %.0f s", type(exc.orig).__name__, REPLICA_COOLDOWN)
            else:
                with session, transaction:
                    if self.read_engine.dialect.name == "postgresql":
                        session.execute(text("SET TRANSACTION READ ONLY"))
                    yield session
                return
        with self.transaction() as session:
            yield session

    @property
    def reads_on_replica(self) -> bool:
        """Whether searches and statistics go to the replica now (one is set and not cooling down)."""
        return self.has_replica and not self._replica.open

    def dispose(self) -> None:
        self.engine.dispose()
        if self.has_replica:
            self.read_engine.dispose()
