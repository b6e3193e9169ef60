"""The operator's surface: liveness and readiness, Prometheus metrics, request ids, structured
access logs without patient data, security headers on every answer, and the read replica."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from healthhub import logs, migrate
from healthhub.db import make_engine
from tests.api.test_ingest_hl7 import HL7, MESSAGES, facility, register
from tests.conftest import authorized, new_database, put_json

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)\{([^}]*)\} (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == want:
            return float(m.group(3))
    return 0.0


def audited_subtypes(app: Any) -> set[str]:
    with app.extensions["healthhub.db"].engine.connect() as conn:
        return set(conn.execute(text("SELECT DISTINCT subtype FROM audit_events")).scalars())


def audit_rows(app: Any) -> int:
    with app.extensions["healthhub.db"].engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM audit_events")).scalar_one())


def scrape(app: Any) -> str:
    resp = app.test_client().get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    return resp.get_data(as_text=True)


def test_liveness_and_readiness(app: Any) -> None:
    web = app.test_client()
    assert web.get("/healthz").get_json() == {"status": "ok"}
    ready = web.get("/readyz")
    assert ready.status_code == 200 and ready.get_json() == {"status": "ready", "database": "ok"}


def test_readiness_fails_when_the_database_is_unreachable(make_app: Any) -> None:
    app = make_app()
    db = app.extensions["healthhub.db"]
    primary = db.engine
    db.engine = db.read_engine = make_engine(replace(app.config["HEALTHHUB"], database_url=UNREACHABLE))
    try:
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503, ready.get_data(as_text=True)
        assert ready.get_json() == {"status": "unavailable", "database": "unavailable"}
        assert app.test_client().get("/healthz").status_code == 200  # alive all the same
    finally:
        db.engine.dispose()
        db.engine = db.read_engine = primary


def test_without_its_replica_the_hub_reads_the_primary_and_stays_ready(
        make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A replica that cannot be reached reports as such, but the hub stays ready: searches and
    statistics read the primary, and the replica is left alone for a cool-down (one warning)."""
    app = make_app(read_database_url=UNREACHABLE, min_cell=1)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "database": "ok", "read_database": "unavailable"}
    client = authorized(app, "system/*.cruds stats.read")
    put_json(client, "/fhir/Patient/on-primary", {"resourceType": "Patient", "id": "on-primary", "gender": "male"})
    caplog.set_level(logging.WARNING, logger="healthhub.db")
    for _ in range(3):
        found = client.get("/fhir/Patient?gender=male").get_json()
        assert [e["resource"]["id"] for e in found["entry"]] == ["on-primary"]
        assert client.get("/stats/Patient?_group-by=gender").get_json()["total"] == 1
    assert not app.extensions["healthhub.db"].reads_on_replica
    assert [r.getMessage()[:29] for r in caplog.records if r.name == "healthhub.db"] == ["read replica unreachable (Ope"]
    assert "search-type" in audited_subtypes(app)  # audited on the primary all the same


def _kill_pooled_connections(app: Any) -> int:
    """Terminate the server side of every connection idle in the app's pool (as a database
    restart, a failover or an idle-connection reaper would); how many were terminated."""
    pool = app.extensions["healthhub.db"].engine.pool
    pids = [record.dbapi_connection.info.backend_pid for record in list(pool._pool.queue)]  # QueuePool's idle ones
    killer = make_engine(app.config["HEALTHHUB"])
    try:
        with killer.connect() as conn:
            return int(conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM unnest(CAST(:pids AS int[])) "
                                         "AS p(pid)"), {"pids": pids}).scalar_one())
    finally:
        killer.dispose()


def test_connections_the_server_dropped_are_replaced_without_failing_a_request(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection idle for longer than PING_IDLE is pinged before use: one the server
    closed meanwhile is replaced, and the request is answered as if nothing happened."""
    app = make_app()
    if app.extensions["healthhub.db"].engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    client = authorized(app)
    put_json(client, "/fhir/Patient/pooled", {"resourceType": "Patient", "id": "pooled"})
    assert client.get("/fhir/Patient/pooled").status_code == 200
    monkeypatch.setattr("healthhub.db.PING_IDLE", 0.0)  # every connection counts as idle
    assert _kill_pooled_connections(app) >= 1
    for _ in range(3):
        assert client.get("/fhir/Patient/pooled").status_code == 200
        assert client.get("/fhir/Patient?_id=pooled").get_json()["total"] == 1


def test_metrics_are_closed_without_a_token_and_need_the_right_one(make_app: Any) -> None:
    closed = make_app().test_client().get("/metrics")
    assert closed.status_code == 404 and closed.get_json()["resourceType"] == "OperationOutcome"
    app = make_app(metrics_token="scrape-secret")
    wrong = app.test_client().get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_count_requests_by_route_and_ingest_by_outcome(make_app: Any) -> None:
    app = make_app(metrics_token="scrape-secret")
    client = authorized(app)
    route = {"method": "GET", "route": "/fhir/<rtype>"}
    before = scrape(app)
    for _ in range(3):
        assert client.get("/fhir/Patient?name=Zebulon-Quixote").status_code == 200
    assert client.get("/fhir/Nonsense").status_code == 404
    message = MESSAGES[0].read_bytes()
    register(app, facility(message))
    stored = client.post("/ingest/hl7v2", data=message, headers={"Content-Type": HL7})
    assert stored.status_code == 200 and b"|AA|" in stored.data
    after = scrape(app)
    assert sample(after, "healthhub_http_requests_total", **route, status="200") - \
        sample(before, "healthhub_http_requests_total", **route, status="200") == 3
    assert sample(after, "healthhub_http_requests_total", **route, status="404") - \
        sample(before, "healthhub_http_requests_total", **route, status="404") == 1
    assert sample(after, "healthhub_http_request_duration_seconds_count", **route) - \
        sample(before, "healthhub_http_request_duration_seconds_count", **route) == 4
    assert sample(after, "healthhub_ingest_payloads_total", kind="hl7v2", outcome="stored") - \
        sample(before, "healthhub_ingest_payloads_total", kind="hl7v2", outcome="stored") == 1
    assert "Zebulon" not in after  # labels are routes, never paths or queries


def test_request_ids_are_kept_when_sane_and_made_otherwise(app: Any) -> None:
    web = app.test_client()
    assert web.get("/healthz", headers={"X-Request-ID": "lb-1234.a"}).headers["X-Request-ID"] == "lb-1234.a"
    made = web.get("/healthz", headers={"X-Request-ID": "not an id; <script>"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert web.get("/healthz").headers["X-Request-ID"] != web.get("/healthz").headers["X-Request-ID"]


def test_the_access_log_is_json_with_the_request_id_and_no_patient_data(app: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    client = authorized(app, client_id="ward-app")
    put_json(client, "/fhir/Patient/p-log", {"resourceType": "Patient", "id": "p-log",
                                             "name": [{"family": "Wolowitz", "given": ["Howard"]}]})
    with caplog.at_level(logging.INFO, logger="healthhub.access"):
        resp = client.get("/fhir/Patient?family=Wolowitz&birthdate=1981-03-01",
                          headers={"X-Request-ID": "req-42"})
    assert resp.status_code == 200
    record = next(r for r in caplog.records if r.name == "healthhub.access" and getattr(r, "route", "") ==
                  "/fhir/<rtype>")
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["request_id"] == "req-42" and line["status"] == 200 and line["method"] == "GET"
    assert line["client_id"] == "ward-app" and line["level"] == "INFO" and line["duration_ms"] >= 0
    every = "\n".join(logs.JsonFormatter().format(r) for r in caplog.records)
    assert "Wolowitz" not in every and "1981-03-01" not in every and "p-log" not in every


def test_security_headers_on_api_answers_and_pages(app: Any) -> None:
    web = app.test_client()
    api = authorized(app).get("/fhir/Patient")
    for resp in (api, web.get("/fhir/metadata"), web.get("/fhir/Patient")):  # the last one a 401
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "Strict-Transport-Security" not in resp.headers  # served over http here
    page = web.get("/auth/authorize?response_type=code&client_id=unknown&redirect_uri=http://x/cb&scope=openid"
                   "&state=s&aud=http://hub.test/fhir&code_challenge=abc&code_challenge_method=S256")
    assert page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "script-src 'self'" in csp
    html = page.get_data(as_text=True)
    assert "<style" not in html and "<script>" not in html and " style=" not in html  # nothing inline to allow
    assert web.get("/healthz").headers["Referrer-Policy"] == "no-referrer"


def test_strict_transport_security_when_served_over_https(make_app: Any) -> None:
    app = make_app(base_url="https://hub.example.org")
    assert app.test_client().get("/healthz").headers["Strict-Transport-Security"].startswith("max-age=")


def test_searches_and_statistics_read_the_replica_while_reads_by_id_stay_on_the_primary(
        make_app: Any, tmp_path: Path) -> None:
    with new_database(tmp_path) as replica_cfg:
        engine = make_engine(replica_cfg)
        migrate.upgrade(engine)
        engine.dispose()
        primary = make_app(read_database_url=replica_cfg.database_url, min_cell=1)  # first: the one cleaned up
        replica = make_app(database_url=replica_cfg.database_url)
        try:
            # Stand-ins for the replication stream: a record only the replica has, one only the primary has.
            put_json(authorized(replica), "/fhir/Patient/only-on-replica", {"resourceType": "Patient",
                                                                             "id": "only-on-replica",
                                                                             "gender": "female"})
            put_json(authorized(primary), "/fhir/Patient/only-on-primary", {"resourceType": "Patient",
                                                                             "id": "only-on-primary"})
            client = authorized(primary, "system/*.cruds stats.read")
            found = client.get("/fhir/Patient").get_json()
            assert [e["resource"]["id"] for e in found.get("entry", [])] == ["only-on-replica"]
            assert client.get("/fhir/Patient/only-on-replica").status_code == 404
            assert client.get("/fhir/Patient/only-on-primary").status_code == 200
            searched = audit_rows(primary)
            stats = client.get("/stats/Patient?_group-by=gender").get_json()
            assert stats["total"] == 1
            assert audit_rows(primary) == searched + 1
            ready = primary.test_client().get("/readyz").get_json()
            assert ready == {"status": "ready", "database": "ok", "read_database": "ok"}
            # The search and the statistics were audited on the primary (the hub never writes to the replica).
            assert "search-type" in audited_subtypes(primary)
            assert audited_subtypes(replica) == {"update"}  # its own write only
        finally:
            replica.extensions["healthhub.db"].dispose()
            primary.extensions["healthhub.db"].dispose()
