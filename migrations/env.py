"""Alembic environment: runs on SQLite (batch mode) and PostgreSQL.

The connection comes from ``config.attributes["connection"]`` when HealthHub runs the
migrations itself (``healthhub db upgrade``, the test fixtures), otherwise from
``HEALTHHUB_DATABASE_URL``.
"""
from __future__ import annotations

from alembic import context

from healthhub.config import Config
from healthhub.db import make_engine
from healthhub.storage.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(Config.from_env())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
