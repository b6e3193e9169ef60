"""FHIR Bulk Data export (Bulk Data Access 2.0): kick-off at the system, Patient and Group level,
status polling, the manifest, file download with the same client's token, cancellation, jobs in
the database that outlive their worker, scopes, and the audit trail.

The jobs are run by :class:`healthhub.bulk.worker.Worker` in the test's process (``run_once``),
as ``healthhub worker`` runs them. Expected contents are computed from the Synthea bundles' JSON
and the official Patient CompartmentDefinition, never from the hub's answers.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import update

from healthhub.bulk.models import ExportJob
from healthhub.bulk.worker import Worker
from healthhub.config import PROJECT_ROOT
from tests.conftest import authorized, post_json

SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "synthea"
ABDUL = SYNTHEA / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
ANTONIO = SYNTHEA / "Antonio_Runolfsson_a1795152-808d-4cb9-b259-ce6e3716dedf.json"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
COMPARTMENT = {r["code"] for r in json.loads((PROJECT_ROOT / "fhir" / "CompartmentDefinition-patient.json")
                                             .read_text())["resource"] if r.get("param")} | {"Patient"}


def types_of(path: Path) -> Counter[str]:
    return Counter(e["resource"]["resourceType"] for e in orjson.loads(path.read_bytes())["entry"])


def load(client: Any, path: Path) -> dict[str, Any]:
    resp = client.post("/fhir", data=path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    return resp.get_json()


def patient_id(response: dict[str, Any]) -> str:
    return next(e["response"]["location"].split("/")[1] for e in response["entry"]
                if e["response"]["location"].startswith("Patient/"))


@pytest.fixture
def hub(make_app: Any, tmp_path: Path) -> Any:
    app = make_app(export_dir=str(tmp_path / "exports"))
    client = authorized(app)
    abdul, antonio = patient_id(load(client, ABDUL)), patient_id(load(client, ANTONIO))
    app.config["test_patients"] = (abdul, antonio)
    return app


def worker(app: Any, **overrides: Any) -> Worker:
    from dataclasses import replace

    return Worker(app.extensions["healthhub.db"], replace(app.config["HEALTHHUB"], **overrides))


def kick_off(client: Any, path: str, **headers: str) -> Any:
    return client.get(path, headers={**ASYNC, **headers})


def status_path(resp: Any) -> str:
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.headers["Content-Location"].replace("http://hub.test", "")


def exported(app: Any, client: Any, path: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Kick off, run the worker, poll, download: the manifest and the resources by type."""
    status = status_path(kick_off(client, path))
    assert worker(app).run_once() == "completed"
    resp = client.get(status)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    manifest = resp.get_json()
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        got = client.get(item["url"].replace("http://hub.test", ""))
        assert got.status_code == 200 and got.mimetype == "application/fhir+ndjson"
        lines = [orjson.loads(line) for line in got.get_data().splitlines()]
        got.close()  # the file is streamed from disk (send_file); a server closes it after sending
        assert len(lines) == item["count"] and all(r["resourceType"] == item["type"] for r in lines)
        out.setdefault(item["type"], []).extend(lines)
    return manifest, out


def counts(by_type: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {t: len(rs) for t, rs in by_type.items()}


def test_system_export_round_trip(hub: Any) -> None:
    client = authorized(hub, "system/*.rs")
    status = status_path(kick_off(client, "/fhir/$export?_type=Patient,Observation,Organization"))
    waiting = client.get(status)
    assert waiting.status_code == 202 and waiting.headers["X-Progress"] and int(waiting.headers["Retry-After"]) > 0
    assert worker(hub).run_once() == "completed"
    manifest = client.get(status).get_json()
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"] == "http://hub.test/fhir/$export?_type=Patient,Observation,Organization"
    assert manifest["transactionTime"].endswith("+00:00")
    want = types_of(ABDUL) + types_of(ANTONIO)
    _, data = exported(hub, client, "/fhir/$export?_type=Patient,Observation,Organization")
    assert counts(data) == {t: want[t] for t in ("Patient", "Observation", "Organization")}
    assert len({r["id"] for r in data["Observation"]}) == want["Observation"]


def test_without_type_every_readable_type_is_exported(hub: Any) -> None:
    _, data = exported(hub, authorized(hub, "system/*.rs"), "/fhir/$export")
    assert counts(data) == dict(types_of(ABDUL) + types_of(ANTONIO))
    _, data = exported(hub, authorized(hub, "system/Patient.rs system/Condition.rs"), "/fhir/$export")
    assert set(data) == {"Patient", "Condition"}


def test_patient_level_keeps_to_the_compartments(hub: Any) -> None:
    _, data = exported(hub, authorized(hub, "system/*.rs"), "/fhir/Patient/$export")
    both = types_of(ABDUL) + types_of(ANTONIO)
    assert counts(data) == {t: n for t, n in both.items() if t in COMPARTMENT}
    resp = kick_off(authorized(hub, "system/*.rs"), "/fhir/Patient/$export?_type=Organization")
    assert resp.status_code == 400


def test_group_export_has_the_members_compartments(hub: Any) -> None:
    abdul, _ = hub.config["test_patients"]
    client = authorized(hub)
    group = post_json(client, "/fhir/Group", {"resourceType": "Group", "type": "person", "actual": True,
                                              "member": [{"entity": {"reference": f"Patient/{abdul}"}}]}).get_json()
    _, data = exported(hub, authorized(hub, "system/*.rs"), f"/fhir/Group/{group['id']}/$export")
    # The Group itself is in its member's compartment (Group.member is a compartment parameter).
    assert counts(data) == {**{t: n for t, n in types_of(ABDUL).items() if t in COMPARTMENT}, "Group": 1}
    assert [p["id"] for p in data["Patient"]] == [abdul]
    assert kick_off(client, "/fhir/Group/nope/$export").status_code == 404


def test_since_and_type_filter(hub: Any) -> None:
    client = authorized(hub, "system/*.rs")
    abdul, antonio = hub.config["test_patients"]
    since = client.get(f"/fhir/Patient/{antonio}").get_json()["meta"]["lastUpdated"]
    _, data = exported(hub, client, f"/fhir/$export?_type=Patient&_since={since.replace('+', '%2B')}")
    assert data == {}  # nothing changed after Antonio was written (the last write)
    done = exported(hub, client, "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcode%3D"
                                 "http://loinc.org|8302-6,http://loinc.org|29463-7")[1]
    want = sum(1 for p in (ABDUL, ANTONIO) for e in orjson.loads(p.read_bytes())["entry"]
               if e["resource"]["resourceType"] == "Observation"
               and {c.get("code") for c in e["resource"]["code"]["coding"]} & {"8302-6", "29463-7"})
    assert want and len(done["Observation"]) == want


def test_a_patient_token_exports_only_its_patient(hub: Any) -> None:
    abdul, _ = hub.config["test_patients"]
    _, data = exported(hub, authorized(hub, "patient/*.rs", patient=abdul), "/fhir/Patient/$export")
    assert [p["id"] for p in data["Patient"]] == [abdul]
    assert counts(data) == {t: n for t, n in types_of(ABDUL).items() if t in COMPARTMENT}


@pytest.mark.parametrize("query,headers,status", [
    ("", {"Prefer": ""}, 400), ("_outputFormat=text/csv", {}, 400), ("_type=Nope", {}, 400),
    ("_elements=id", {}, 400), ("_since=yesterday", {}, 400), ("_since=2026-01-01T00:00:00", {}, 400),
    ("_typeFilter=Observation%3Fnope%3D1", {}, 400), ("_typeFilter=Observation", {}, 400),
    ("_type=Patient&_typeFilter=Observation%3Fcode%3D1", {}, 400), ("", {"Accept": "application/xml"}, 406),
])
def test_bad_kick_offs_are_refused(hub: Any, query: str, headers: dict[str, str], status: int) -> None:
    resp = kick_off(authorized(hub, "system/*.rs"), f"/fhir/$export?{query}", **headers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_scopes_are_checked_at_kick_off(hub: Any) -> None:
    assert kick_off(authorized(hub, "system/Patient.rs"), "/fhir/$export?_type=Observation").status_code == 403
    assert kick_off(authorized(hub, "stats.read"), "/fhir/$export").status_code == 403
    assert hub.test_client().get("/fhir/$export", headers=ASYNC).status_code == 401


def test_only_the_client_that_asked_sees_the_job(hub: Any) -> None:
    mine = authorized(hub, "system/*.rs", client_id="registry-a")
    manifest, _ = exported(hub, mine, "/fhir/$export?_type=Patient")
    status = status_path(kick_off(mine, "/fhir/$export?_type=Patient"))
    other = authorized(hub, "system/*.rs", client_id="registry-b")
    assert other.get(status).status_code == 404 and other.delete(status).status_code == 404
    file_url = manifest["output"][0]["url"].replace("http://hub.test", "")
    assert other.get(file_url).status_code == 404
    assert hub.test_client().get(file_url).status_code == 401
    assert mine.get(file_url.replace("Patient-1", "..%2F..%2Fsigning-key.pem")).status_code == 404


def test_delete_cancels_and_removes_the_files(hub: Any, tmp_path: Path) -> None:
    client = authorized(hub, "system/*.rs")
    manifest, _ = exported(hub, client, "/fhir/$export?_type=Observation")
    status = manifest["output"][0]["url"].replace("http://hub.test", "").replace("/files/", "/status/").rsplit("/", 1)[0]
    assert any((tmp_path / "exports").iterdir())
    assert client.delete(status).status_code == 202
    assert client.get(status).status_code == 404
    assert client.get(manifest["output"][0]["url"].replace("http://hub.test", "")).status_code == 404
    assert not any((tmp_path / "exports").iterdir())
    waiting = status_path(kick_off(client, "/fhir/$export?_type=Patient"))  # cancelled before it ran
    assert client.delete(waiting).status_code == 202
    assert worker(hub).run_once() is None


def test_files_are_split_past_the_size_limit(hub: Any) -> None:
    client = authorized(hub, "system/*.rs")
    status = status_path(kick_off(client, "/fhir/$export?_type=Observation"))
    assert worker(hub, export_file_max=20_000).run_once() == "completed"
    manifest = client.get(status).get_json()
    assert len(manifest["output"]) > 2
    assert sum(o["count"] for o in manifest["output"]) == (types_of(ABDUL) + types_of(ANTONIO))["Observation"]
    assert [o["url"].rsplit("/", 1)[1] for o in manifest["output"]][:2] == ["Observation-1.ndjson", "Observation-2.ndjson"]


def test_a_job_outlives_a_worker_that_died(hub: Any) -> None:
    """A worker that took the job and stopped reporting (killed) leaves it to another."""
    from healthhub.bulk import jobs
    from healthhub.clock import utcnow

    client = authorized(hub, "system/*.rs")
    status = status_path(kick_off(client, "/fhir/$export?_type=Patient"))
    db = hub.extensions["healthhub.db"]
    with db.transaction() as session:
        job_id = jobs.claim(session, "dead-worker", utcnow())
    assert job_id is not None and worker(hub).run_once() is None  # it is taken: nobody else runs it yet
    assert client.get(status).status_code == 202
    with db.transaction() as session:
        session.execute(update(ExportJob).where(ExportJob.id == job_id).values(
            heartbeat_at=utcnow() - jobs.STALE_AFTER - timedelta(seconds=1)))
    assert worker(hub).run_once() == "completed"
    assert client.get(status).status_code == 200
    with db.transaction() as session:
        assert session.get(ExportJob, job_id).attempts == 2


def test_a_job_cancelled_while_it_runs_stops_as_cancelled(hub: Any) -> None:
    """The worker learns of the DELETE at its next page and stops, its files removed; it reports
    ``cancelled`` (``healthhub_export_jobs_total{outcome="cancelled"}``), not ``lost``."""
    from healthhub.bulk import jobs, writer
    from healthhub.clock import utcnow
    from healthhub.search.registry import default_registry

    client = authorized(hub, "system/*.rs")
    status = status_path(kick_off(client, "/fhir/$export?_type=Patient"))
    runner = worker(hub)
    db = hub.extensions["healthhub.db"]
    with db.transaction() as session:
        job_id = jobs.claim(session, runner.name, utcnow())  # taken, not written yet
    assert job_id is not None and client.delete(status).status_code == 202
    assert writer.run(db, default_registry(), job_id, runner.name, runner.export_dir,
                      runner.config.export_file_max, runner.retention) == "cancelled"
    assert not (runner.export_dir / job_id).exists()


def test_a_failed_job_answers_500(hub: Any, tmp_path: Path) -> None:
    client = authorized(hub, "system/*.rs")
    status = status_path(kick_off(client, "/fhir/$export?_type=Patient"))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the export folder should be")
    assert worker(hub, export_dir=str(blocked)).run_once() == "failed"
    resp = client.get(status)
    assert resp.status_code == 500 and resp.get_json()["resourceType"] == "OperationOutcome"
    assert "failed" in resp.get_json()["issue"][0]["diagnostics"]


def test_jobs_past_retention_are_forgotten(hub: Any) -> None:
    from healthhub.clock import utcnow

    client = authorized(hub, "system/*.rs")
    manifest, _ = exported(hub, client, "/fhir/$export?_type=Patient")
    status = manifest["output"][0]["url"].replace("http://hub.test", "").replace("/files/", "/status/").rsplit("/", 1)[0]
    late = worker(hub)
    late.clock = lambda: utcnow() + timedelta(hours=25)  # default retention: 24 hours
    assert late.clean_up() == 1
    assert client.get(status).status_code == 404


def test_export_requests_are_audited(hub: Any) -> None:
    client = authorized(hub, "system/*.rs", client_id="registry-audit")
    exported(hub, client, "/fhir/$export?_type=Patient")
    events = authorized(hub, "user/AuditEvent.rs").get("/fhir/AuditEvent?_count=100").get_json()["entry"]
    text = [orjson.dumps(e["resource"]).decode() for e in events]
    assert any("registry-audit" in t and "$export" in t for t in text)
    assert any("registry-audit" in t and "/bulk/status/" in t for t in text)
    assert any("registry-audit" in t and "/bulk/files/" in t for t in text)


def test_capability_statement_lists_export(hub: Any) -> None:
    cs = hub.test_client().get("/fhir/metadata").get_json()
    ops = [o for o in cs["rest"][0].get("operation", []) if o["name"] == "export"]
    assert ops and ops[0]["definition"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
