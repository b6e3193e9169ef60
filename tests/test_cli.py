"""The `healthhub` command, run in-process against the test database."""
from __future__ import annotations

import json
from collections import Counter

import orjson
from click.testing import CliRunner

from healthhub import demo_cases
from healthhub.cli import main
from healthhub.demo import DEMO_DIR, DEMO_SENDERS
from tests.conftest import DATA, archived, free_port, load_json, scrape


def total(client, search):
    """The number of matches of ``Type`` or ``Type?query``."""
    return client.get(f"/fhir/{search}{'&' if '?' in search else '?'}_count=0").json["total"]


def test_db_upgrade_on_a_fresh_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HEALTHHUB_DATABASE_URL", f"sqlite:///{tmp_path}/sub/new.db")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub" / "new.db").exists()
    again = CliRunner().invoke(main, ["db", "upgrade"])
    assert again.exit_code == 0


def test_bad_configuration_is_one_line(monkeypatch):
    monkeypatch.setenv("HEALTHHUB_MAX_BODY", "lots")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code != 0
    assert "HEALTHHUB_MAX_BODY" in result.output and "Traceback" not in result.output


def test_demo_loads_once_and_is_idempotent(cli, client):
    expected: Counter[str] = Counter()
    for path in DEMO_DIR.glob("*.json"):
        expected.update(e["resource"]["resourceType"] for e in load_json(path)["entry"])
    first = cli("demo")
    assert first.exit_code == 0 and "loaded" in first.output
    # It names each demo patient with a URL that answers.
    patients = [e["resource"] for p in DEMO_DIR.glob("*.json") for e in load_json(p)["entry"]
                if e["resource"]["resourceType"] == "Patient"]
    urls = [line.split()[0] for line in first.output.splitlines() if "/fhir/Patient/" in line]
    assert len(urls) == len(patients) == 5
    for url in urls:
        got = client.get(url.replace("http://hub.test", ""))
        assert got.status_code == 200 and got.json["resourceType"] == "Patient"
    # The synthetic case reports went through the CSV ingest: a Patient and a Condition per row.
    cases = demo_cases.rows()
    assert f"demo case reports loaded: {len(cases)} synthetic rows" in first.output
    assert total(client, "Patient?family=Synthetic") == len(cases)
    assert total(client, "Condition?code=http://hl7.org/fhir/sid/icd-10|") == len(cases)
    versions = client.get("/fhir/_history?_count=0").json["total"]
    second = cli("demo")
    assert "already loaded" in second.output and "case reports loaded" not in second.output
    forced = cli("demo", "--force")
    assert forced.exit_code == 0
    demo_source = "_source=urn:healthhub:demo"
    expected["Organization"] += len(DEMO_SENDERS)  # the demo hospitals' Organizations
    for rtype, n in expected.items():
        assert total(client, f"{rtype}?{demo_source}") == n, rtype
    # Forced reload wrote no new versions: every resource is still at its version.
    assert client.get("/fhir/_history?_count=0").json["total"] == versions


def test_ingest_folder_of_resources_and_bundles(cli, client):
    result = cli("ingest", "--quiet", str(DATA / "fhir-examples"))
    files = sorted((DATA / "fhir-examples").glob("*.json"))
    singles = [load_json(p) for p in files if load_json(p)["resourceType"] != "Bundle"]
    for resource in singles:
        got = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
        assert got.status_code == 200, resource["id"]
    # Bundle-xds is a transaction that goes in whole; Bundle-bundle-transaction illustrates the
    # grammar with an entry no server stores (POST ValueSet/$lookup), so it fails and is reported.
    xds = load_json(DATA / "fhir-examples" / "Bundle-xds.json")["entry"]
    assert result.exit_code == 1
    assert f"{len(files)} file(s): {len(singles) + len(xds)} created, 1 failed; 1 error(s)" in result.output
    assert "Bundle-bundle-transaction.json: 400: Bundle.entry[7]" in result.output
    # Loading again is idempotent for resources with ids.
    again = cli("ingest", "--quiet", *[str(p) for p in files if "Bundle" not in p.name])
    assert again.exit_code == 0
    assert f"{len(singles)} unchanged" in again.output


def test_ingest_ndjson_reports_bad_lines_and_keeps_good_ones(cli, client, tmp_path):
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": "female"}) for i in range(7)]
    lines.insert(3, b'{"resourceType": "Patient", "birthDate": "soon"}')
    lines.insert(5, b"{not json")
    path = tmp_path / "patients.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = cli("ingest", "--quiet", "--batch-size", "2", str(path))
    assert result.exit_code == 1
    assert "7 created" in result.output and "2 error(s)" in result.output
    assert f"{path}:4:" in result.output and f"{path}:6:" in result.output
    assert total(client, "Patient") == 7


def test_ingest_synthea_transaction(cli, client):
    path = DATA / "synthea" / "Antonio_Runolfsson_a1795152-808d-4cb9-b259-ce6e3716dedf.json"
    expected = Counter(e["resource"]["resourceType"] for e in load_json(path)["entry"])
    result = cli("ingest", "--quiet", str(path))
    assert result.exit_code == 0, result.output
    assert f"{sum(expected.values())} created" in result.output
    for rtype, n in expected.items():
        assert total(client, rtype) == n


def one_line_error(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


def test_ingest_missing_path_or_nothing_to_ingest(cli, tmp_path):
    assert "/no/such/file.json" in one_line_error(cli("ingest", "/no/such/file.json"))
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("ingest", str(tmp_path))
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"skipped {tmp_path / 'notes.txt'}: not a .json, .ndjson, .hl7 or .csv file",
        "Error: nothing to ingest: no .json, .ndjson, .hl7 or .csv files in the given paths"]


def test_database_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HEALTHHUB_DATABASE_URL", "notaurl")
    assert "HEALTHHUB_DATABASE_URL" in one_line_error(CliRunner().invoke(main, ["demo"]))
    monkeypatch.setenv("HEALTHHUB_DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    assert "healthhub db upgrade" in one_line_error(CliRunner().invoke(main, ["demo"]))
    monkeypatch.setenv("HEALTHHUB_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert "database error" in one_line_error(CliRunner().invoke(main, ["demo"]))


def test_demo_users_and_clients_work(cli, app):
    import base64
    import re

    first = cli("demo")
    backend = re.search(r"client_id (\S+) client_secret (\S+)", first.output)
    users = dict(re.findall(r"  (demo-\S+) +password (\S+)", first.output))
    assert backend and set(users) == {"demo-clinician", "demo-officer", "demo-admin"}
    assert "exist already" in cli("demo").output and "password" not in cli("demo").output
    web = app.test_client()
    basic = base64.b64encode(f"{backend[1]}:{backend[2]}".encode()).decode()
    token = web.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                     headers={"Authorization": f"Basic {basic}"}).json["access_token"]
    found = web.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert found.status_code == 200 and found.json["total"] == 5 + len(demo_cases.rows())  # Synthea + case reports


def test_mllp_command_with_two_processes(cli, app, base_config, client):
    """The real `healthhub mllp` in two processes on one port: messages ACKed and stored, then
    SIGTERM stops both gracefully (exit 0)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from healthhub.ingest.mllp import send

    assert cli("sender", "create", "--code", "HOSP-A", "--name", "A", "--timezone", "Asia/Bangkok").exit_code == 0
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "HEALTHHUB_DATABASE_URL": base_config.database_url,
           "HEALTHHUB_SIGNING_KEY": base_config.signing_key}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(Path(sys.executable).with_name("healthhub")), "mllp", "--port", str(port), "--processes", "2",
               "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        message = (DATA.parent.parent / "docs" / "examples" / "oru-r01-glucose.hl7").read_bytes()
        deadline = time.monotonic() + 30
        while True:
            try:
                acks = send("127.0.0.1", port, [message, message.replace(b"LAB-000123", b"LAB-000124")], timeout=30)
                break
            except (ConnectionError, OSError):
                assert time.monotonic() < deadline, "the listener did not come up"
                time.sleep(0.2)
        assert [a.split(b"\r")[1].split(b"|")[1] for a in acks] == [b"AA", b"AA"]
        # The listener processes' counts, added up: the report stored once, then its duplicate.
        payloads = {labels: value for (name, labels), value in scrape(f"http://127.0.0.1:{metrics_port}/metrics").items()
                    if name == "healthhub_ingest_payloads_total"}
        stored = frozenset({("kind", "hl7v2"), ("outcome", "stored")})
        assert sum(payloads.values()) == 2 and payloads.get(stored) == 2, payloads
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert output.count("listening on") == 2
    # Each listener process logs JSON (HEALTHHUB_LOG_FORMAT's default), with its own pid.
    listening = [json.loads(line) for line in output.splitlines() if "listening on" in line]
    assert len({record["pid"] for record in listening}) == 2
    # the second message re-sends the same report (same filler number): stored once, unchanged
    assert client.get("/fhir/DiagnosticReport").json["total"] == 1
    assert [(r.transport, r.outcome) for r in archived(app)] == [("mllp", "stored")] * 2


def test_serve_runs_export_jobs_in_its_worker_thread(app, base_config, client, tmp_path):
    """`healthhub serve` (gunicorn, two workers) runs Bulk Data jobs with no other process: the
    thread each web worker starts after the fork takes the job from the database."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import requests

    from tests.conftest import issue_token

    client.put("/fhir/Patient/served-export", json={"resourceType": "Patient", "id": "served-export"},
               headers={"Content-Type": "application/fhir+json"})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The public base URL stays the test app's (http://hub.test), which the token is issued for.
    env = {**os.environ, "HEALTHHUB_DATABASE_URL": base_config.database_url, "HEALTHHUB_BASE_URL": base_config.base_url,
           "HEALTHHUB_SIGNING_KEY": base_config.signing_key, "HEALTHHUB_EXPORT_DIR": str(tmp_path / "exports"),
           "HEALTHHUB_METRICS_TOKEN": "scrape"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(Path(sys.executable).with_name("healthhub")), "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    token = issue_token(app, "system/*.rs")
    auth = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                kick = requests.get(f"{base}/fhir/$export?_type=Patient", timeout=10,
                                    headers={**auth, "Prefer": "respond-async", "Accept": "application/fhir+json"})
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert kick.status_code == 202, kick.text
        while True:
            status = requests.get(kick.headers["Content-Location"].replace(base_config.base_url, base), headers=auth,
                                  timeout=10)
            if status.status_code != 202:
                break
            assert time.monotonic() < deadline + 30, "the job was never run"
            time.sleep(0.3)
        assert status.status_code == 200, status.text
        (output,) = status.json()["output"]
        ndjson = requests.get(output["url"].replace(base_config.base_url, base), headers=auth, timeout=10)
        assert ndjson.status_code == 200
        assert [json.loads(line)["id"] for line in ndjson.content.splitlines()] == ["served-export"]
        # /metrics adds up what every worker counted (prometheus_client's multiprocess mode).
        for _ in range(6):
            assert requests.get(f"{base}/fhir/metadata", timeout=10).status_code == 200
        samples = scrape(f"{base}/metrics", token="scrape")
        assert sum(value for (name, labels), value in samples.items() if name == "healthhub_http_requests_total"
                   and ("route", "/fhir/metadata") in labels) == 6
        # The export threads' metrics too: jobs and resources added up, the gauges as each declares.
        assert samples[("healthhub_export_jobs_total", frozenset({("outcome", "completed")}))] == 1
        assert samples[("healthhub_export_resources_total", frozenset())] == 1
        assert samples[("healthhub_export_jobs_in_progress", frozenset())] == 0
        assert time.time() - 60 < samples[("healthhub_export_worker_last_poll_timestamp_seconds", frozenset())]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # Structured logs: the access log is JSON with the request id, the route, never the query.
    access = [json.loads(line) for line in out.decode().splitlines()
              if line.startswith("{") and '"healthhub.access"' in line]
    assert any(a["route"] == "/bulk/status/<job_id>" and a["status"] == 200 for a in access), access[:3]
    assert all(a["request_id"] != "-" and "_type=Patient" not in json.dumps(a) for a in access)


def test_worker_once_runs_the_waiting_export_jobs(cli, client, monkeypatch, tmp_path):
    monkeypatch.setenv("HEALTHHUB_EXPORT_DIR", str(tmp_path / "exports"))
    client.put("/fhir/Patient/cli-export", json={"resourceType": "Patient", "id": "cli-export"},
               headers={"Content-Type": "application/fhir+json"})
    kick = client.get("/fhir/$export?_type=Patient", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    status = kick.headers["Content-Location"].replace("http://hub.test", "")
    assert client.get(status).status_code == 202
    result = cli("worker", "--once")
    assert result.exit_code == 0 and "1 export job(s) run" in result.output, result.output
    manifest = client.get(status).json
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [("Patient", 1)]
    assert (tmp_path / "exports" / status.rsplit("/", 1)[1] / "Patient-1.ndjson").read_bytes().count(b"\n") == 1
