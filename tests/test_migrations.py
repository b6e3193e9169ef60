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


def test_0008_stores_current_content_once_and_history_still_reads_it(tmp_path):
    """A 0007 database holds every version's JSON twice; after 0008 the current version's copy
    is gone from resource_versions, and vread/history still return it (and the downgrade puts
    the copy back)."""
    with new_database(tmp_path) as cfg:
        engine = make_engine(cfg)
        try:
            migrate.upgrade(engine, "0007")
            v1 = {"resourceType": "Patient", "id": "p1", "gender": "male",
                  "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}}
            v2 = {**v1, "gender": "female", "meta": {"versionId": "2", "lastUpdated": "2026-01-02T00:00:00Z"}}
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content) "
                    "VALUES ('Patient', 'p1', 2, :t, false, :c)"), {"t": "2026-01-02 00:00:00+00:00",
                                                                   "c": orjson.dumps(v2).decode()})
                for doc, t in ((v1, "2026-01-01"), (v2, "2026-01-02")):
                    conn.execute(text(
                        "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, method, deleted, "
                        "content) VALUES ('Patient', 'p1', :v, :t, 'PUT', false, :c)"),
                        {"v": int(doc["meta"]["versionId"]), "t": f"{t} 00:00:00+00:00", "c": orjson.dumps(doc).decode()})
            migrate.upgrade(engine)

            def copies() -> dict[int, bool]:
                with engine.connect() as conn:
                    return {v: c is not None for v, c in conn.execute(text(
                        "SELECT version_id, content FROM resource_versions ORDER BY version_id"))}

            assert copies() == {1: True, 2: False}
        finally:
            engine.dispose()
        app = create_app(replace(cfg, signing_key=str(tmp_path / "signing-key.pem")))
        try:
            client = authorized(app)
            assert client.get("/fhir/Patient/p1/_history/2").json["gender"] == "female"
            history = client.get("/fhir/Patient/p1/_history").json
            assert [e["resource"]["gender"] for e in history["entry"]] == ["female", "male"]
        finally:
            app.extensions["healthhub.db"].dispose()
        engine = make_engine(cfg)
        try:
            from alembic import command
            cfg_alembic = migrate.alembic_config()
            with engine.begin() as conn:
                cfg_alembic.attributes["connection"] = conn
                command.downgrade(cfg_alembic, "0007")
            assert copies() == {1: True, 2: True}
        finally:
            engine.dispose()
