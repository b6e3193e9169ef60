"""Backups restore to a hub that works (docs/operations.md, "Backups and restore").

A hub is loaded with real data (a Synthea patient as a transaction Bundle, then an update, a
create, a delete, reads and searches, so the audit trail has records of every kind), backed up
the way the operator's guide says, and restored next to the original. The copy must then pass
``healthhub audit verify`` with the original's record count and head hash, hold as many rows as
the original in every table, answer FHIR reads and searches with the same resources, and take
new writes (its sequences were restored too).

- PostgreSQL: ``pg_dump -Fc -n <schema>`` of the test schema, ``pg_restore`` into a database
  created for the test (the schema keeps its name there), dropped at the end.
- SQLite: the online backup API (Python's ``sqlite3.Connection.backup``, what the ``sqlite3``
  shell's ``.backup`` does) of the live file while the app holds its connections.

Each runs on its own database only (skipped on the other). Unlike the rest of this folder they
start no server: the app runs in process (``make_app``), the CLI through click's runner.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Engine, make_url

from healthhub.cli import main
from healthhub.config import Config
from healthhub.db import make_engine
from tests.conftest import DATA, authorized, load_json, post_json, put_json

TEST_URL = os.environ.get("HEALTHHUB_TEST_DATABASE_URL", "")
ON_POSTGRES = bool(TEST_URL) and make_url(TEST_URL).get_backend_name() == "postgresql"
#: A Synthea patient Bundle without conditional references (it needs no infrastructure Bundle).
SYNTHEA = DATA / "synthea" / "Antonio_Runolfsson_a1795152-808d-4cb9-b259-ce6e3716dedf.json"
PG_TOOLS = ("pg_dump", "pg_restore")


# -- what is compared ----------------------------------------------------------------------------

def load_data(app: Any) -> str:
    """Real data and a varied audit trail; returns the patient's id."""
    client = authorized(app)
    resp = post_json(client, "/fhir", load_json(SYNTHEA))
    assert resp.status_code == 200, resp.json
    locations = [e["response"]["location"] for e in resp.json["entry"]]
    patient_id = next(loc.split("/")[1] for loc in locations if loc.startswith("Patient/"))
    patient = client.get(f"/fhir/Patient/{patient_id}").json
    patient["telecom"] = [{"system": "phone", "value": "+250 788 000 001"}]
    assert put_json(client, f"/fhir/Patient/{patient_id}", patient).status_code == 200
    created = post_json(client, "/fhir/Observation", {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": "2024-05-01T09:30:00+02:00",
        "valueQuantity": {"value": 38.2, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}})
    assert created.status_code == 201, created.json
    doomed = next(loc for loc in locations if loc.startswith("Observation/")).split("/_history")[0]
    assert client.delete(f"/fhir/{doomed}").status_code == 200
    assert client.get(f"/fhir/{doomed}").status_code == 410
    return patient_id


def fhir_answers(app: Any, patient_id: str) -> dict[str, Any]:
    """What clients would see: a read, searches (index tables), history and a compartment."""
    client = authorized(app)
    out: dict[str, Any] = {}
    for name, url in {
        "read": f"/fhir/Patient/{patient_id}",
        "history": f"/fhir/Patient/{patient_id}/_history",
        "observations": f"/fhir/Observation?patient={patient_id}&_count=1000",
        "fever": "/fhir/Observation?code=http://loinc.org|8310-5&value-quantity=gt38|http://unitsofmeasure.org|Cel",
        "encounters": "/fhir/Encounter?date=ge2000-01-01&_count=1000&_include=Encounter:subject",
        "conditions": f"/fhir/Patient/{patient_id}/Condition?_count=1000",
    }.items():
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.json)
        body = resp.json
        if body["resourceType"] == "Bundle" and body["type"] == "searchset":
            # The Bundle's own id and time differ per request; its matches must not.
            out[name] = (body.get("total"), sorted((e["fullUrl"], str(e["resource"]), e["search"]["mode"])
                                                   for e in body.get("entry", [])))
        elif body["resourceType"] == "Bundle":
            out[name] = [(e["fullUrl"] if "fullUrl" in e else None, str(e.get("resource")), e["response"])
                         for e in body["entry"]]
        else:
            out[name] = body
    assert out["observations"][0] > 10 and out["fever"][0] == 1 and out["encounters"][0] > 0
    return out


def table_counts(engine: Engine) -> dict[str, int]:
    """Rows of every table the database holds (Alembic's included), not only those the models know."""
    names = inspect(engine).get_table_names()
    with engine.connect() as conn:
        return {name: conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one() for name in names}


def healthhub(config: Config, *args: str) -> Any:
    """``healthhub …`` in process against ``config``'s database (root logging put back after)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    env = {"HEALTHHUB_DATABASE_URL": config.database_url, "HEALTHHUB_SIGNING_KEY": config.signing_key,
           "HEALTHHUB_BASE_URL": config.base_url, "HEALTHHUB_LOG_FORMAT": "text"}
    try:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    finally:
        root.handlers[:], root.level = handlers, level


def verify(config: Config) -> str:
    result = healthhub(config, "audit", "verify")
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith("audit chain intact: "), line
    return line


@dataclass(frozen=True)
class Snapshot:
    """The original, quiet, just before its backup."""

    answers: dict[str, Any]
    verdict: str  # "audit chain intact: N records, head H"
    counts: dict[str, int]


def snapshot(original: Any, patient_id: str) -> Snapshot:
    answers = fhir_answers(original, patient_id)  # first: these requests are audited too
    verdict = verify(original.config["HEALTHHUB"])
    counts = table_counts(original.extensions["healthhub.db"].engine)
    assert counts["audit_events"] > 10 and counts["resources"] > 100 and counts["resource_versions"] > 100
    return Snapshot(answers, verdict, counts)


def check_copy(make_app: Any, before: Snapshot, copy_config: Config, patient_id: str) -> None:
    """The restored copy at ``copy_config`` against the original's snapshot."""
    engine = make_engine(copy_config)
    try:
        assert table_counts(engine) == before.counts
    finally:
        engine.dispose()
    # The same records and the same head hash: the chain came over whole, not merely consistent.
    assert verify(copy_config) == before.verdict
    copy = make_app(database_url=copy_config.database_url)
    try:
        assert fhir_answers(copy, patient_id) == before.answers
        # The copy takes writes: the sequences (version rows, archive ids) and the chain's head came along.
        made = post_json(authorized(copy), "/fhir/Patient", {"resourceType": "Patient", "gender": "female"})
        assert made.status_code == 201, made.json
        assert _records(verify(copy_config)) > _records(before.verdict)
    finally:
        copy.extensions["healthhub.db"].dispose()


def _records(verdict: str) -> int:
    return int(verdict.split()[3])  # "audit chain intact: N records, head H"


# -- PostgreSQL: pg_dump -Fc -n <schema>, pg_restore into a new database -----------------------

def _libpq(url: URL) -> str:
    """A URL the PostgreSQL client programs take (no SQLAlchemy driver, no libpq options)."""
    return url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)


@contextmanager
def scratch_database(server: URL) -> Iterator[URL]:
    """A new, empty database on the test server, dropped afterwards (connections and all)."""
    name = f"hh_restore_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.set(drivername="postgresql+psycopg", query={}), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command[0]} exited with {done.returncode}: {done.stderr[-2000:]}"


@pytest.mark.skipif(not ON_POSTGRES, reason="pg_dump / pg_restore: set HEALTHHUB_TEST_DATABASE_URL=postgresql://…")
def test_pg_dump_of_the_schema_restores_to_a_hub_that_verifies(make_app, tmp_path):
    missing = [tool for tool in PG_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PostgreSQL client programs not on PATH: {', '.join(missing)}")
    original = make_app()
    patient_id = load_data(original)
    before = snapshot(original, patient_id)

    config: Config = original.config["HEALTHHUB"]
    url = make_url(config.database_url)
    schema = url.query["options"].removeprefix("-csearch_path=")  # how tests/conftest.py places the schema
    dump = tmp_path / "healthhub.dump"
    _run("pg_dump", "--format=custom", f"--schema={schema}", f"--file={dump}", f"--dbname={_libpq(url)}")
    with scratch_database(url) as restored:
        _run("pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={_libpq(restored)}",
             str(dump))
        # The schema keeps its name in the new database; the URL's search_path still names it.
        check_copy(make_app, before, replace(config, database_url=restored.render_as_string(hide_password=False)),
                   patient_id)


# -- SQLite: the online backup API --------------------------------------------------------------

@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite backup API; on PostgreSQL the pg_dump test runs instead")
def test_sqlite_online_backup_restores_to_a_hub_that_verifies(make_app, tmp_path):
    original = make_app()
    patient_id = load_data(original)
    before = snapshot(original, patient_id)

    config: Config = original.config["HEALTHHUB"]
    live = Path(make_url(config.database_url).database or "")
    assert live.is_file()
    # The app is live: its pool holds connections to the file (WAL mode), nothing was closed.
    engine = original.extensions["healthhub.db"].engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    copy_file = tmp_path / "backup" / "healthhub.db"
    copy_file.parent.mkdir()
    source, target = sqlite3.connect(live), sqlite3.connect(copy_file)
    try:
        source.backup(target)  # what `sqlite3 instance/healthhub.db ".backup FILE"` runs
    finally:
        target.close()
        source.close()
    check_copy(make_app, before, replace(config, database_url=f"sqlite:///{copy_file}"), patient_id)
