"""A NUL character (U+0000) anywhere a client can put one: PostgreSQL cannot store or compare it
in text, and every one of these answered 500 there (or lost the archive row) before the hub
refused it. Each must get a precise refusal, keep its archive row and audit record, and leave
the hub serving."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from healthhub.clock import utcnow
from healthhub.ingest import senders
from tests.conftest import archived

FHIR_JSON = "application/fhir+json"


@pytest.mark.parametrize("url", [
    "/fhir/Patient?name=%00", "/fhir/Patient?identifier=a%00b", "/fhir/Observation?subject:Patient.name=%00",
    "/fhir/Patient?_id=%00", "/fhir/Patient/a%00b", "/fhir/Patient?address-state:exact=x%00",
    "/fhir/Patient?_source=%00", "/fhir/Patient?%00=1", "/fhir/Patient/a%00b/_history",
])
def test_nul_in_the_url_is_a_400(client: Any, url: str) -> None:
    resp = client.get(url)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert "NUL" in resp.get_json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient").status_code == 200  # still serving


def test_nul_in_a_form_search_is_a_400(client: Any) -> None:
    resp = client.post("/fhir/Patient/_search", data={"name": "a\x00"})
    assert resp.status_code == 400


@pytest.mark.parametrize("escape", ["\\u0000", "\\u0001", "\\u001f", "\\b", "\\f", "\\\\\\u0000"])
def test_control_characters_in_fhir_strings_are_a_400(client: Any, db_counts: Any, escape: str) -> None:
    before = db_counts()
    body = b'{"resourceType": "Patient", "name": [{"family": "a' + escape.encode() + b'b"}]}'
    resp = client.post("/fhir/Patient", data=body, headers={"Content-Type": FHIR_JSON})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert "control character" in resp.get_json()["issue"][0]["diagnostics"]
    assert db_counts() == before


@pytest.mark.parametrize("escape", ["\\\\u0000", "\\t\\n\\r", "\\u0009\\u000A\\u000d", "\\\\b"])
def test_allowed_escapes_are_kept(client: Any, escape: str) -> None:
    body = b'{"resourceType": "Patient", "name": [{"family": "a' + escape.encode() + b'b"}]}'
    resp = client.post("/fhir/Patient", data=body, headers={"Content-Type": FHIR_JSON,
                                                             "Prefer": "return=representation"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["name"][0]["family"] == orjson.loads(b'"a' + escape.encode() + b'b"')


def register(app: Any, code: str) -> None:
    with app.extensions["healthhub.db"].transaction() as session:
        senders.create(session, code, f"Hospital {code}", utcnow())


@pytest.mark.parametrize("message", [
    b"MSH|^~\\&|LAB|NULH|HUB|HUB|20260101||ADT^A01|CTRL\x001|P|2.5\rPID|1||12^^^NULH^MR||Doe^John\r",
    b"MSH|^~\\&|LAB|NULH|HUB|HUB|20260101||ADT^A01|CTRL2|P|2.5\rPID|1||12^^^NULH^MR||Do\x00e^John\r",
])
def test_hl7_with_nul_is_refused_and_archived(app: Any, client: Any, message: bytes) -> None:
    register(app, "NULH")
    resp = client.post("/ingest/hl7v2", data=message, headers={"Content-Type": "application/hl7-v2"})
    ack = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "MSA|AR|" in ack and "NUL" in ack, ack
    assert "\x00" not in ack
    rows = archived(app)
    assert rows[-1].payload == message and rows[-1].outcome == "rejected"


def test_csv_cell_with_nul_is_a_row_error_and_the_good_row_is_stored(app: Any, client: Any) -> None:
    register(app, "H9")
    header = ("case_id,hospital_code,national_id,mrn,family_name,given_name,sex,birth_date,province,district,"
              "condition_code,onset_date,diagnosis_date,test_code,test_result,test_date,outcome\n")
    body = (header + "C1,H9,,M1,Do\x00e,J,M,1990-01-01,Bangkok,,A90,,2026-01-02,,,,\n"
            "C2,H9,,M2,Doe,J,M,1990-01-01,Bangkok,,A90,,2026-01-02,,,,\n").encode()
    resp = client.post("/ingest/csv?profile=case-report", data=body, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    report = resp.get_json()
    assert report["accepted"] == 1
    assert report["rejected"] == [{"row": 1, "errors": {"family_name": [
        "Holds a control character (such as NUL, 0x00); only printable text, tabs and line breaks are accepted."]}}]
    assert client.get("/fhir/Condition?_summary=count").get_json()["total"] == 1
