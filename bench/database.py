"""The benchmark's own database: a fresh PostgreSQL schema (``bench_<random>``) or a temporary
SQLite file, migrated to head, removed at the end whatever happens."""
from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from healthhub import migrate
from healthhub.config import Config
from healthhub.db import make_engine
from healthhub.storage.models import Base

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class BenchDatabase:
    """Where one benchmark run stores its data."""

    kind: str  # "sqlite" | "postgres"
    url: str  # what HEALTHHUB_DATABASE_URL gets (schema in the URL for PostgreSQL)
    label: str  # schema name or file path, for the report

    def engine(self) -> Engine:
        """A new engine with the hub's own settings (driver, pragmas, JSON serialiser)."""
        return make_engine(Config(database_url=self.url))

    def count(self) -> int:
        """Current (not deleted) resources."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT COUNT(*) FROM resources WHERE deleted = false")).scalar_one())
        finally:
            engine.dispose()

    def analyze(self) -> None:
        """PostgreSQL: VACUUM (ANALYZE) every hub table, so plans use fresh statistics and the
        visibility map is set (what autovacuum would reach eventually). SQLite: nothing — the
        hub itself runs a sampled ANALYZE each time the store doubles
        (``healthhub/storage/planner_stats.py``), and the benchmark measures what that gives."""
        if self.kind != "postgres":
            return
        engine = self.engine()
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
                conn.execute(text(f"VACUUM (ANALYZE) {tables}"))
        finally:
            engine.dispose()

    def size_bytes(self) -> int:
        """On-disk size: every relation of the schema (PostgreSQL), or the file and its WAL (SQLite)."""
        if self.kind == "sqlite":
            path = Path(self.label)
            return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')")).scalar_one())
        finally:
            engine.dispose()

    def server_version(self) -> str:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                if self.kind == "postgres":
                    return str(conn.execute(text("SHOW server_version")).scalar_one())
                return str(conn.execute(text("SELECT sqlite_version()")).scalar_one())
        finally:
            engine.dispose()


@contextmanager
def bench_database(kind: str, postgres_url: str = DEFAULT_POSTGRES_URL) -> Iterator[BenchDatabase]:
    """Create, migrate, yield and finally drop a benchmark database."""
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="healthhub-bench-"))
        db_file = folder / "bench.db"
        db = BenchDatabase("sqlite", f"sqlite:///{db_file}", str(db_file))
        try:
            _upgrade(db)
            yield db
        finally:
            # HEALTHHUB_BENCH_KEEP=1 keeps the file (the schema on PostgreSQL), to study query plans at
            # scale afterwards.
            if os.environ.get("HEALTHHUB_BENCH_KEEP") == "1":
                print(f"kept SQLite benchmark database {db_file}", file=sys.stderr)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return
    if kind != "postgres":
        raise ValueError(f"unknown database kind {kind!r}")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(Config(database_url=postgres_url))
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        # The schema travels in the URL (libpq "options"), so gunicorn workers use it too.
        url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        db = BenchDatabase("postgres", url.render_as_string(hide_password=False), schema)
        try:
            _upgrade(db)
            yield db
        finally:
            if os.environ.get("HEALTHHUB_BENCH_KEEP") == "1":
                print(f"kept PostgreSQL benchmark schema {schema}", file=sys.stderr)
            else:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _upgrade(db: BenchDatabase) -> None:
    engine = db.engine()
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def sqlite_library_version() -> str:
    return sqlite3.sqlite_version
