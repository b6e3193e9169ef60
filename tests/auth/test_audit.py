"""The audit trail: every interaction, token request and sign-in recorded as an AuditEvent, in
the transaction of the change; readable only with an AuditEvent scope; hash-chained so that
``healthhub audit verify`` names the first edited, removed or moved record — also with many
concurrent writers."""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import text

from healthhub import resources
from tests.conftest import FHIR_JSON, authorized, issue_token, post_json, put_json

ADMIN = "user/AuditEvent.rs"


def trail(app, query=""):
    got = authorized(app, ADMIN, client_id="console", subject="root").get(f"/fhir/AuditEvent?_count=1000{query}")
    assert got.status_code == 200, got.json
    return [e["resource"] for e in got.json["entry"]]


def test_interactions_are_recorded_with_who_what_and_outcome(app):
    web = authorized(app, "system/*.cruds", client_id="hospital-a")
    assert put_json(web, "/fhir/Patient/pa", {"resourceType": "Patient", "id": "pa"}).status_code == 201
    assert web.get("/fhir/Patient/pa").status_code == 200
    assert web.get("/fhir/Observation?subject=Patient/pa&code=4548-4").status_code == 200
    assert web.post("/fhir/Patient/_search", data={"gender": "female"}).status_code == 200
    assert web.get("/fhir/Patient/nobody").status_code == 404
    assert app.test_client().get("/fhir/Patient/pa").status_code == 401
    clinician = authorized(app, "patient/*.rs launch/patient", patient="pa", client_id="ward-app", subject="dr.a",
                           fhirUser="http://hub.test/fhir/Practitioner/pr1")
    assert clinician.get("/fhir/Patient/pa").status_code == 200

    events = trail(app)
    for event in events:
        resources.validate(event, "AuditEvent")  # well-formed FHIR R4B
    by_sub = [(e["subtype"][0]["code"], e["action"], e["outcome"]) for e in reversed(events)]
    assert by_sub[:7] == [("update", "U", "0"), ("read", "R", "0"), ("search-type", "E", "0"),
                          ("search-type", "E", "0"), ("read", "R", "4"), ("read", "R", "4"), ("read", "R", "0")]
    update, read, search, posted, missing, anonymous, patient_read = list(reversed(events))[:7]
    posted_query = next(e for e in posted["entity"] if "query" in e)
    assert base64.b64decode(posted_query["query"]).decode() == "gender=female"
    assert update["agent"][0]["who"]["identifier"] == {"system": "urn:healthhub:client", "value": "hospital-a"}
    assert {"what": {"reference": "Patient/pa"}} in update["entity"]
    query = next(e for e in search["entity"] if "query" in e)
    assert base64.b64decode(query["query"]).decode() == "subject=Patient/pa&code=4548-4"
    assert missing["outcomeDesc"].startswith("HTTP 404")
    assert anonymous["agent"][0]["who"]["display"] == "anonymous" and "HTTP 401" in anonymous["outcomeDesc"]
    user = patient_read["agent"][0]
    assert user["who"]["identifier"]["value"] == "dr.a" and user["requestor"] is True
    assert patient_read["agent"][1]["who"]["identifier"]["value"] == "ward-app"
    assert all(e["agent"][0].get("network", {}).get("address") == "127.0.0.1" for e in events)

    # Searchable by entity, agent, outcome, date, subtype; newest first; paged.
    about_pa = trail(app, "&entity=Patient/pa")
    assert {e["id"] for e in about_pa} >= {update["id"], read["id"], patient_read["id"]}
    assert [e["id"] for e in trail(app, "&agent=dr.a")] == [patient_read["id"]]
    assert {e["id"] for e in trail(app, "&outcome=4")} >= {missing["id"], anonymous["id"]}
    assert trail(app, "&date=ge2000-01-01&date=lt2999-01-01&subtype=update") == [update]
    admin = authorized(app, ADMIN)
    page = admin.get("/fhir/AuditEvent?_count=2").json
    assert len(page["entry"]) == 2 and page["total"] >= 7
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    second = admin.get(nxt.replace("http://hub.test", "")).json
    assert int(second["entry"][0]["resource"]["id"]) < int(page["entry"][-1]["resource"]["id"])
    assert admin.get(f"/fhir/AuditEvent/{read['id']}").json == read
    assert admin.get("/fhir/AuditEvent?agent:exact=x").status_code == 400  # no silently ignored filters


def test_only_an_audit_scope_reads_the_trail_and_nobody_writes_it(app):
    authorized(app).get("/fhir/Patient")
    for scope in ("system/*.cruds", "user/*.rs", "patient/AuditEvent.rs"):
        assert authorized(app, scope, patient="p").get("/fhir/AuditEvent").status_code == 403, scope
    admin = authorized(app, "user/AuditEvent.rs system/AuditEvent.cruds")
    assert post_json(admin, "/fhir/AuditEvent", {"resourceType": "AuditEvent"}).status_code == 405
    assert admin.delete("/fhir/AuditEvent/1").status_code == 405
    assert put_json(admin, "/fhir/AuditEvent/1", {"resourceType": "AuditEvent", "id": "1"}).status_code == 405
    # Nor through a Bundle, where it would land in the resource store instead of the trail.
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-01-01T00:00:00Z",
             "agent": [{"requestor": True}], "source": {"observer": {"display": "x"}}}
    got = post_json(authorized(app), "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "AuditEvent"}, "resource": event},
        {"request": {"method": "GET", "url": "AuditEvent?agent=x"}},
        {"request": {"method": "GET", "url": "AuditEvent/1"}}]}).json
    assert [e["response"]["status"][:3] for e in got["entry"]] == ["405", "400", "400"]


def test_a_failed_change_leaves_only_its_failure_record(app, db_counts):
    web = authorized(app)
    before = db_counts()
    bad = post_json(web, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "gender": 7}}]})
    assert bad.status_code == 400
    assert db_counts() == before
    [event] = trail(app)
    assert event["subtype"][0]["code"] == "transaction" and event["outcome"] == "4"
    assert not [e for e in event["entity"] if "what" in e]  # nothing was stored


def test_token_requests_and_sign_ins_are_recorded(app, cli):
    made = cli("client", "create", "--name", "Lab", "--grant", "client_credentials", "--scope", "system/*.rs")
    assert made.exit_code == 0, made.output
    import orjson
    creds = orjson.loads(made.output)
    web = app.test_client()
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    ok = web.post("/auth/token", data=form, headers={"Authorization": "Basic " + base64.b64encode(
        f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()})
    bad = web.post("/auth/token", data=form, headers={"Authorization": "Basic " + base64.b64encode(
        f"{creds['client_id']}:wrong".encode()).decode()})
    assert (ok.status_code, bad.status_code) == (200, 401)
    events = trail(app, "&subtype=token")
    assert [(e["outcome"], e["agent"][0]["who"]["identifier"]["value"]) for e in events] == [
        ("4", creds["client_id"]), ("0", creds["client_id"])]
    assert "invalid_client" in events[0]["outcomeDesc"]


def _tamper(app, sql):
    engine = app.extensions["healthhub.db"].engine
    with engine.begin() as conn:
        conn.execute(text(sql))


def test_audit_verify_names_the_first_broken_record(app, cli):
    web = authorized(app)
    for i in range(6):
        web.get(f"/fhir/Patient/p{i}")
    intact = cli("audit", "verify")
    assert intact.exit_code == 0 and "6 records" in intact.output, intact.output

    engine = app.extensions["healthhub.db"].engine
    with engine.connect() as conn:
        original = conn.execute(text("SELECT content FROM audit_events WHERE seq = 3")).scalar_one()
    edited = str(original).replace("p2", "p9") if isinstance(original, str) else None
    if edited is None:  # PostgreSQL hands JSONB back as a dict
        import orjson
        edited = orjson.dumps(original).decode().replace("p2", "p9")
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET content = :c WHERE seq = 3"), {"c": edited})
    broken = cli("audit", "verify")
    assert broken.exit_code != 0 and "AuditEvent/3" in broken.output and "edited" in broken.output

    import orjson
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET content = :c WHERE seq = 3"),
                     {"c": original if isinstance(original, str) else orjson.dumps(original).decode()})
    assert cli("audit", "verify").exit_code == 0
    _tamper(app, "DELETE FROM audit_events WHERE seq = 4")
    removed = cli("audit", "verify")
    assert removed.exit_code != 0 and "AuditEvent/4" in removed.output and "missing" in removed.output

    _tamper(app, "UPDATE audit_events SET seq = 4 WHERE seq = 5")  # close the gap: the links still break
    moved = cli("audit", "verify")
    assert moved.exit_code != 0 and "AuditEvent/4" in moved.output


def test_concurrent_writers_keep_one_chain(app, live_server, cli):
    token = issue_token(app)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}

    def work(i):
        with requests.Session() as s:
            for j in range(6):
                s.post(f"{live_server}/Patient", json={"resourceType": "Patient", "id": f"x{i}{j}"}, headers=headers,
                       timeout=30)
                s.get(f"{live_server}/Patient?_count=1", headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    result = cli("audit", "verify")
    assert result.exit_code == 0 and "96 records" in result.output, result.output


def test_a_bundle_record_names_every_resource_it_wrote(app):
    web = authorized(app)
    entries = [{"request": {"method": "PUT", "url": f"Patient/b{i}"}, "resource": {"resourceType": "Patient", "id": f"b{i}"}}
               for i in range(70)]  # past the COPY threshold on PostgreSQL
    assert post_json(web, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries}).status_code == 200
    for ref in ("Patient/b0", "Patient/b41", "Patient/b69"):
        [event] = trail(app, f"&entity={ref}")
        assert event["subtype"][0]["code"] == "transaction"
        assert len([e for e in event["entity"] if "what" in e]) == 70
