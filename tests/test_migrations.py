"""Alembic migrations: the schema they build is the one the models declare, and an upgrade
of a database holding data re-extracts the search index (`healthhub db upgrade`)."""
from __future__ import annotations

from dataclasses import replace

import orjson
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import text

from healthhub import create_app, migrate
from healthhub.cli import main
from healthhub.db import make_engine
from healthhub.storage.models import Base
from tests.conftest import authorized, new_database


def test_migrated_schema_matches_the_models(tmp_path):
    with new_database(tmp_path) as cfg:
        engine = make_engine(cfg)
        try:
            migrate.upgrade(engine)
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
        finally:
            engine.dispose()


def test_upgrade_from_0002_reindexes_existing_resources(tmp_path, monkeypatch):
    """A database at revision 0002 with a stored Patient: `db upgrade` rebuilds the search
    tables and re-extracts their rows, so the Patient is found by name afterwards."""
    with new_database(tmp_path) as cfg:
        engine = make_engine(cfg)
        try:
            migrate.upgrade(engine, "0002")
            patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Mugisha"}],
                       "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}}
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content) "
                    "VALUES ('Patient', 'p1', 1, :t, false, :c)"),
                    {"t": "2026-01-01 00:00:00+00:00", "c": orjson.dumps(patient).decode()})
        finally:
            engine.dispose()
        monkeypatch.setenv("HEALTHHUB_DATABASE_URL", cfg.database_url)
        result = CliRunner().invoke(main, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        app = create_app(replace(cfg, signing_key=str(tmp_path / "signing-key.pem")))
        try:
            found = authorized(app).get("/fhir/Patient?family=mugisha").json
            assert [e["resource"]["id"] for e in found["entry"]] == ["p1"]
        finally:
            app.extensions["healthhub.db"].dispose()


def test_downgrade_to_0002_and_back(tmp_path):
    with new_database(tmp_path) as cfg:
        engine = make_engine(cfg)
        try:
            migrate.upgrade(engine)
            cfg_alembic = migrate.alembic_config()
            from alembic import command
            with engine.begin() as conn:
                cfg_alembic.attributes["connection"] = conn
                command.downgrade(cfg_alembic, "0002")
            migrate.upgrade(engine)
            assert migrate.is_current(engine)
        finally:
            engine.dispose()
