"""Hostile input (issue 7): what an attacker, a broken interface engine or a fuzzer sends to the public
surface, through the Flask test client (and MLLP over loopback), on SQLite and on PostgreSQL.

1. Fuzz (hypothesis) — FHIR JSON bodies (mutated examples, random JSON, random bytes), search query
   strings (every parameter of the CapabilityStatement, modifiers, prefixes, ``_sort``, ``_include``,
   ``_has``, chains; also through ``/stats``), HL7 v2 messages (mutated samples from tests/data),
   CSV case reports (random cells, wrong columns, quotes, BOMs, encodings) and bearer tokens.
   ``HEALTHHUB_FUZZ_EXAMPLES`` sets the examples per test (default 25, the same ones every run;
   ``make fuzz`` runs 2000 random ones).
2. Classic attacks — SQL injection in every search parameter and in ``_sort``, path traversal in
   export file names, JSON bombs, XML bodies, CR/LF in what ends up in headers, oversized headers.
3. Slow-loris on MLLP — idle and stalled connections are closed after the idle timeout while
   another sender's messages are acknowledged.

The invariant for every answer (:class:`Watch`): no 5xx (a 503 only as the documented "database
unavailable" OperationOutcome), an error is an OperationOutcome, no header holds CR or LF, and
nothing was logged at ERROR or with a traceback. After each example the store is consistent (every
current row has its version, no version is ahead of it, no index row without its resource), and
after each test ``healthhub audit verify`` passes.
"""
from __future__ import annotations

import base64
import copy
import csv
import hashlib
import io
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from healthhub.api.guard import MAX_HEADER
from healthhub.clock import utcnow
from healthhub.config import Config
from healthhub.ingest import senders
from healthhub.storage.models import SEARCH_TABLES, Base
from tests.conftest import DATA, FHIR_JSON, authorized, issue_token, mllp_listener

# -- settings ----------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("HEALTHHUB_FUZZ_EXAMPLES") or 25)
#: The default run replays the same examples every time (CI stays deterministic); ``make fuzz``
#: (HEALTHHUB_FUZZ_EXAMPLES set) draws new ones on every run.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="HEALTHHUB_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

HL7 = "x-application/hl7-v2+er7"
CSV_HEADER = ("case_id,hospital_code,national_id,mrn,family_name,given_name,sex,birth_date,province,district,"
              "condition_code,onset_date,diagnosis_date,test_code,test_result,test_date,outcome")
PATIENT_EXAMPLE = orjson.loads((DATA / "fhir-examples" / "Patient-example.json").read_bytes())
OBSERVATION_EXAMPLE = orjson.loads((DATA / "fhir-examples" / "Observation-blood-pressure.json").read_bytes())
HL7_SAMPLES = [p.read_bytes() for p in sorted((DATA / "hl7v2").rglob("*.hl7"))]
CSV_SAMPLES = [p.read_bytes() for p in sorted((DATA / "csv").glob("case-report-*.csv"))]


# -- the invariant of every answer ---------------------------------------------------------------

class Watch:
    """Checks an answer against the invariants of hostile input; counts what it saw."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.statuses: dict[int | str, int] = {}  # answers seen, by status (and ACK code)

    def __call__(self, resp: Any, kind: str = "fhir") -> Any:
        """``kind``: ``fhir`` (errors are OperationOutcomes), ``hl7`` (200 is an HL7 ACK), ``csv``
        (200 is the JSON report), ``any`` (only the general invariants)."""
        status = resp.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        what = f"{resp.request.method} {resp.request.full_path[:300]!r} -> {status}"
        body = resp.get_data()
        for name, value in resp.headers.items():
            assert not set("\r\n") & set(name + value), f"{what}: CR/LF in header {name}: {value!r}"
        assert status < 500 or documented_503(resp), f"{what}: {body[:500]!r}"
        assert b"Traceback (most recent call last)" not in body, what
        if status >= 400 and kind != "any":
            assert resp.mimetype == FHIR_JSON, f"{what}: an error as {resp.mimetype}: {body[:300]!r}"
            outcome = orjson.loads(body)
            assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"], what
            if status == 401:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer "), what
        elif status == 200 and kind == "hl7":
            ack = body.decode("utf-8", "replace")
            segments = [s for s in ack.replace("\n", "\r").split("\r") if s]
            assert segments[0].startswith("MSH"), f"{what}: not an ACK: {ack[:300]!r}"
            msa = [s for s in segments if s.startswith("MSA")]
            assert msa and msa[0][4:6] in ("AA", "AE", "AR"), f"{what}: {ack[:300]!r}"
            self.statuses[msa[0][:6]] = self.statuses.get(msa[0][:6], 0) + 1
        elif status == 200 and kind == "csv":
            report = orjson.loads(body)
            assert isinstance(report["accepted"], int) and report["accepted"] >= 0, what
            assert all(isinstance(r["row"], int) and r["row"] >= 1 for r in report["rejected"]), what
        self.nothing_logged(what)
        return resp

    def nothing_logged(self, what: str = "", records: list[logging.LogRecord] | None = None) -> None:
        """No record at ERROR or above and none with a traceback since the last check (in this
        phase of the test, or in ``records``)."""
        records = self.caplog.records if records is None else records
        bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
        self.caplog.clear()
        assert not bad, f"{what}: logged " + "; ".join(
            f"{r.levelname} {r.name}: {r.getMessage()[:300]}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "")
            for r in bad)


def documented_503(resp: Any) -> bool:
    """The documented "database unavailable" answer (healthhub/errors.py): a transient
    OperationOutcome with Retry-After. Nothing here takes the database away, so it is not expected,
    but it is the one 5xx the contract allows."""
    if resp.status_code != 503 or resp.mimetype != FHIR_JSON or "Retry-After" not in resp.headers:
        return False
    issues = orjson.loads(resp.get_data()).get("issue") or [{}]
    return bool(issues[0].get("code") == "transient")


def store_is_consistent(app: Any) -> None:
    """Every current resource row has its version row (same version, same deleted flag), no
    version is newer than the current row, versions run 1..n, and every index row belongs to a
    stored resource (a failed write left nothing half-done)."""
    engine = app.extensions["healthhub.db"].engine
    with engine.connect() as conn:
        missing = conn.execute(text(
            "SELECT r.resource_type, r.id, r.version_id FROM resources r WHERE NOT EXISTS ("
            " SELECT 1 FROM resource_versions v WHERE v.resource_type = r.resource_type AND v.id = r.id"
            " AND v.version_id = r.version_id AND v.deleted = r.deleted)")).all()
        assert not missing, f"current rows without their version row: {missing[:5]}"
        ahead = conn.execute(text(
            "SELECT v.resource_type, v.id, MAX(v.version_id), COUNT(*), MIN(v.version_id), MAX(r.version_id)"
            " FROM resource_versions v JOIN resources r ON r.resource_type = v.resource_type AND r.id = v.id"
            " GROUP BY v.resource_type, v.id"
            " HAVING MAX(v.version_id) <> MAX(r.version_id) OR COUNT(*) <> MAX(v.version_id)"
            " OR MIN(v.version_id) <> 1")).all()
        assert not ahead, f"version rows out of step with the current row: {ahead[:5]}"
        for table in SEARCH_TABLES:
            orphans = conn.execute(text(
                f"SELECT s.resource_type, s.resource_id FROM {table.name} s WHERE NOT EXISTS ("
                " SELECT 1 FROM resources r WHERE r.resource_type = s.resource_type AND r.id = s.resource_id)"
                " LIMIT 5")).all()
            assert not orphans, f"{table.name} rows of no stored resource: {orphans}"


def table_counts(app: Any) -> dict[str, int]:
    """Row counts of every table but the audit trail and the inbound archive."""
    engine = app.extensions["healthhub.db"].engine
    with engine.connect() as conn:
        return {t.name: conn.execute(text(f"SELECT COUNT(*) FROM {t.name}")).scalar_one()
                for t in Base.metadata.sorted_tables if not t.name.startswith(("audit_", "inbound_"))}


# -- the hub under attack ------------------------------------------------------------------------

SEED_PATIENTS: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "seed-ann",
     "meta": {"profile": ["http://example.org/fhir/StructureDefinition/seed"],
              "tag": [{"system": "http://example.org/tags", "code": "seed"}],
              "security": [{"system": "http://example.org/security", "code": "normal"}]},
     "identifier": [{"system": "http://example.org/mrn", "value": "MRN1"}],
     "active": True, "name": [{"family": "Smith", "given": ["Ann", "Marie"], "text": "Ann Marie Smith"}],
     "telecom": [{"system": "phone", "value": "0101"}, {"system": "email", "value": "ann.example.org"}],
     "gender": "female", "birthDate": "1980-02-03",
     "address": [{"use": "home", "city": "Springfield", "district": "Central", "state": "Bangkok",
                  "postalCode": "10110", "country": "TH", "line": ["1 Main Street"]}],
     "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "th"}]}}],
     "generalPractitioner": [{"reference": "Practitioner/seed-doc"}],
     "managingOrganization": {"reference": "Organization/seed-org"}},
    {"resourceType": "Patient", "id": "seed-bob", "identifier": [{"system": "http://example.org/mrn", "value": "MRN2"}],
     "name": [{"family": "Jones", "given": ["Bob"]}], "gender": "male", "birthDate": "1975-06-07",
     "deceasedDateTime": "2020-01-01", "link": [{"other": {"reference": "Patient/seed-ann"}, "type": "seealso"}]},
]
SEED_OTHERS: list[dict[str, Any]] = [
    {"resourceType": "Organization", "id": "seed-org", "name": "Seed Hospital"},
    {"resourceType": "Practitioner", "id": "seed-doc", "name": [{"family": "House"}]},
    {"resourceType": "Encounter", "id": "seed-enc", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
     "subject": {"reference": "Patient/seed-ann"}},
]
SEED_OBSERVATIONS: list[dict[str, Any]] = [
    {"resourceType": "Observation", "id": "seed-hb", "status": "final",
     "identifier": [{"system": "http://example.org/obs", "value": "OBS1"}],
     "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                               "code": "laboratory", "display": "Laboratory"}]}],
     "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}], "text": "Hemoglobin"},
     "subject": {"reference": "Patient/seed-ann"}, "encounter": {"reference": "Encounter/seed-enc"},
     "performer": [{"reference": "Practitioner/seed-doc"}], "effectiveDateTime": "2024-05-06T07:08:09Z",
     "valueQuantity": {"value": 13.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
     "method": {"coding": [{"system": "http://example.org/method", "code": "auto"}]}},
    {"resourceType": "Observation", "id": "seed-bp", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
     "subject": {"reference": "Patient/seed-bob"}, "effectivePeriod": {"start": "2023-01-01", "end": "2023-01-02"},
     "hasMember": [{"reference": "Observation/seed-hb"}], "derivedFrom": [{"reference": "Observation/seed-hb"}],
     "focus": [{"reference": "Patient/seed-ann"}], "device": {"reference": "Device/seed-dev"},
     "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "12345"}]}}]},
    {"resourceType": "Observation", "id": "seed-note", "status": "amended",
     "code": {"coding": [{"system": "http://loinc.org", "code": "8251-1"}]}, "subject": {"reference": "Patient/seed-bob"},
     "valueString": "Feeling fine", "issued": "2024-01-01T00:00:00Z",
     "dataAbsentReason": {"coding": [{"system": "http://example.org/dar", "code": "none"}]}},
]
SEEDS = SEED_PATIENTS + SEED_OTHERS + SEED_OBSERVATIONS


def register_sender(app: Any, code: str) -> None:
    with app.extensions["healthhub.db"].transaction() as session:
        if session.get(senders.Sender, code) is None:
            try:
                senders.create(session, code, f"Hospital {code}", utcnow(), timezone="Asia/Bangkok")
            except senders.SenderError:
                pass  # not a code a sender can have: its messages are refused, as they should be


def hl7_facility(message: bytes) -> str:
    """MSH-4.1, else MSH-3.1, read from the raw text (as the hub names senders)."""
    first = message.decode("utf-8", "replace").lstrip("\ufeff").replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return ""
    fields_ = first.split(first[3])
    component = first[4]
    for value in (fields_[3] if len(fields_) > 3 else "", fields_[2] if len(fields_) > 2 else ""):
        code = value.split(component)[0].strip()
        if code:
            return code
    return ""


@dataclass
class Hub:
    app: Any
    web: Any  # a full-access client (system/*.cruds)
    watch: Watch
    tmp: Path


@pytest.fixture
def hub(make_app: Callable[..., Any], cli: Callable[..., Any], caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> Iterator[Hub]:
    """An app with seed data, the senders of the HL7 and CSV samples registered, and its exports
    under ``tmp_path``; afterwards the store must be consistent and the audit chain verify."""
    overrides: dict[str, Any] = {"export_dir": str(tmp_path / "exports")}
    if "rate_limit" in {f.name for f in fields(Config)}:
        overrides["rate_limit"] = 0  # a fuzzer is one busy client; the limiter is not under test here
    app = make_app(**overrides)
    web = authorized(app)
    for resource in SEEDS:
        resp = web.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=orjson.dumps(resource),
                       headers={"Content-Type": FHIR_JSON})
        assert resp.status_code == 201, resp.get_data(as_text=True)
    for message in HL7_SAMPLES:
        if facility := hl7_facility(message):
            register_sender(app, facility)
    for sample in CSV_SAMPLES:
        for row in csv.DictReader(io.StringIO(sample.decode("utf-8-sig", "replace"))):
            if (row.get("hospital_code") or "").strip():
                register_sender(app, row["hospital_code"].strip())
    caplog.set_level(logging.WARNING)
    watch = Watch(caplog)
    watch.nothing_logged("seeding")
    yield Hub(app, web, watch, tmp_path)
    watch.nothing_logged("the test, after its last check", caplog.get_records("call"))
    store_is_consistent(app)
    verdict = cli("audit", "verify")
    assert verdict.exit_code == 0, verdict.output


def capability_params(hub: Hub, rtype: str) -> list[tuple[str, str]]:
    """(name, type) of every search parameter the CapabilityStatement lists for ``rtype``."""
    statement = hub.watch(hub.app.test_client().get("/fhir/metadata")).get_json()
    [resource] = [r for r in statement["rest"][0]["resource"] if r["type"] == rtype]
    return [(p["name"], p["type"]) for p in resource["searchParam"]]


# -- 1. fuzz: FHIR JSON bodies -------------------------------------------------------------------

SPECIAL_TEXT = ["", " ", "Patient", "Observation", "Patient/seed-ann", "Patient/../../etc/passwd", "urn:uuid:" + "0" * 8,
                "http://x", "2024-02-30", "9999-99-99T99:99:99Z", "-0001", "1e999999999", "NaN", "<script>", "' OR 1=1--",
                "\u0000", "\u0007", "a\u0000b", "\ud800", "\udfff", "\u202e", "\ufeff", "x" * 5000, "é" * 100,
                "\r\nX-Injected: 1", "%00", "%0d%0a", "\\u0000", "{}", "[]", "null", "male", "final"]
text_values = st.one_of(st.sampled_from(SPECIAL_TEXT), st.text(max_size=20),
                        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8))
numbers = st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.floats(),
                    st.sampled_from([0, -0.0, 1e308, 5e-324, 2 ** 63, -(2 ** 63) - 1, 12.50]))
scalars = st.one_of(st.none(), st.booleans(), numbers, text_values)
FHIR_KEYS = sorted({*PATIENT_EXAMPLE, *OBSERVATION_EXAMPLE, "resourceType", "id", "meta", "extension", "url",
                    "modifierExtension", "contained", "reference", "valueQuantity", "valueString", "_birthDate",
                    "coding", "system", "code", "value", "text", "div", "versionId", "lastUpdated", "fhir_comments"})
keys = st.one_of(st.sampled_from(FHIR_KEYS), st.text(max_size=10))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                           max_leaves=25)


def slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """(container, key) of every value in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            slots(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            slots(v, out)
    return out


@st.composite
def mutated(draw: Any, base: dict[str, Any]) -> Any:
    """``base`` after one to four random edits: replace, delete, insert, change a value's JSON
    type, duplicate a list item, or grow a string."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        places = slots(doc, [])
        if not places:
            return draw(json_values)
        container, key = draw(st.sampled_from(places))
        edit = draw(st.sampled_from(["replace", "delete", "insert", "retype", "duplicate", "grow"]))
        value = container[key]
        if edit == "replace":
            container[key] = draw(json_values)
        elif edit == "delete":
            del container[key]
        elif edit == "insert":
            if isinstance(container, dict):
                container[draw(keys)] = draw(json_values)
            else:
                container.insert(key, draw(json_values))
        elif edit == "retype":
            container[key] = draw(st.sampled_from([[value], {"value": value}, str(value), 1, None, True, {}, []]))
        elif edit == "duplicate" and isinstance(container, list):
            container.extend([value] * draw(st.integers(1, 50)))
        elif edit == "grow" and isinstance(value, str):
            container[key] = value * draw(st.integers(2, 300))
    return doc


def encode(draw: Any, doc: Any) -> bytes:
    """JSON text of ``doc``, as ASCII with escapes or as raw (possibly invalid) UTF-8, sometimes
    cut short or with a stray byte."""
    try:
        raw = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        raw = b"{"
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "byte", "bom"]))
    if damage == "truncate" and raw:
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif damage == "byte":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at:]
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    return raw


@st.composite
def fhir_documents(draw: Any) -> Any:
    return draw(st.one_of(mutated(PATIENT_EXAMPLE), mutated(OBSERVATION_EXAMPLE), mutated(SEED_PATIENTS[0]),
                          mutated(SEED_OBSERVATIONS[0]), json_values,
                          st.fixed_dictionaries({"resourceType": st.sampled_from(["Patient", "Observation", "Bundle"])},
                                                optional={"id": text_values, "meta": json_values,
                                                          "extension": json_values, "status": text_values})))


json_patch_ops = st.lists(st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "bogus"]),
     "path": st.one_of(st.sampled_from(["/name/0/family", "/id", "/meta", "/meta/versionId", "/-", "", "/",
                                        "/name/-", "/gender", "/birthDate", "/extension/0", "/name/99",
                                        "/~1", "/resourceType", "/link/0/other/reference"]), st.text(max_size=12))},
    optional={"value": json_values, "from": st.sampled_from(["/name", "/id", "/gender", "/x", ""])}), max_size=5)


@FUZZ
@given(data=st.data())
def test_fuzzed_fhir_bodies(hub: Hub, data: Any) -> None:
    doc = data.draw(fhir_documents(), label="document")
    target = data.draw(st.sampled_from(["create", "conditional-create", "update", "conditional-update",
                                        "transaction", "batch", "validate", "match", "patch", "bytes"]),
                       label="target")
    content_type = data.draw(st.sampled_from([FHIR_JSON] * 6 + ["application/json", "application/fhir+json; charset=utf-8",
                                                                "application/fhir+json; charset=latin-1",
                                                                "application/x-www-form-urlencoded"]))
    headers = {"Content-Type": content_type}
    rtype = doc.get("resourceType") if isinstance(doc, dict) else None
    rtype = rtype if rtype in ("Patient", "Observation") else data.draw(st.sampled_from(["Patient", "Observation"]))
    web = hub.web
    if target == "bytes":
        resp = web.post(f"/fhir/{rtype}", data=data.draw(st.binary(max_size=300)), headers=headers)
    elif target == "patch":
        body = encode(data.draw, data.draw(json_patch_ops))
        resp = web.patch(f"/fhir/Patient/{data.draw(st.sampled_from(['seed-ann', 'seed-bob', 'nope']))}",
                         data=body, headers={"Content-Type": "application/json-patch+json"})
    elif target in ("transaction", "batch"):
        entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{uuid.UUID(int=data.draw(st.integers(0, 2 ** 128 - 1)))}",
                                 "resource": doc,
                                 "request": data.draw(st.one_of(
                                     st.sampled_from([{"method": "POST", "url": rtype},
                                                      {"method": "PUT", "url": f"{rtype}/fuzz-1"},
                                                      {"method": "DELETE", "url": f"{rtype}/seed-x"},
                                                      {"method": "GET", "url": f"{rtype}?_id=seed-ann"},
                                                      {"method": "PATCH", "url": f"{rtype}/seed-ann"},
                                                      {"method": "POST", "url": rtype, "ifNoneExist": "_id=seed-ann"}]),
                                     json_values))}
        bundle = {"resourceType": "Bundle", "type": target, "entry": [entry, data.draw(json_values)]}
        resp = web.post("/fhir", data=encode(data.draw, data.draw(st.sampled_from([bundle, {**bundle, "entry": entry}]))),
                        headers=headers)
    elif target == "validate":
        resp = web.post(f"/fhir/{rtype}/$validate", data=encode(data.draw, doc), headers=headers)
    elif target == "match":
        params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": doc}]}
        resp = web.post("/fhir/Patient/$match", data=encode(data.draw, params), headers=headers)
    elif target in ("update", "conditional-update"):
        rid: str = doc["id"] if isinstance(doc, dict) and isinstance(doc.get("id"), str) else "fuzz-1"
        url = (f"/fhir/{rtype}/{quote(rid, safe='', errors='surrogatepass')}" if target == "update"
               else f"/fhir/{rtype}?identifier={quote(data.draw(text_values), safe='', errors='surrogatepass')}")
        resp = web.put(url, data=encode(data.draw, doc), headers=headers)
    else:
        if target == "conditional-create":
            headers["If-None-Exist"] = "identifier=" + quote(data.draw(text_values), safe="|", errors="surrogatepass")
        resp = web.post(f"/fhir/{rtype}", data=encode(data.draw, doc), headers=headers)
    hub.watch(resp)
    if resp.status_code in (200, 201) and "Location" in resp.headers:
        # A write that was accepted can be read back, as it was stored.
        location = resp.headers["Location"].replace("http://hub.test", "")
        back = hub.watch(web.get(location))
        assert back.status_code == 200 and back.get_json()["resourceType"] in ("Patient", "Observation")
    store_is_consistent(hub.app)


# -- 1. fuzz: search query strings ---------------------------------------------------------------

MODIFIERS = ["", "", "", ":missing", ":exact", ":contains", ":not", ":text", ":above", ":below", ":identifier",
             ":of-type", ":Patient", ":Observation", ":iterate", ":in", ":bogus", ":"]
PREFIXES = ["", "", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]
VALUES_BY_TYPE = {
    "token": ["male", "http://loinc.org|718-7", "|718-7", "http://loinc.org|", "718-7", "true", "a|b|c", "|", "\\|",
              "urn:ietf:rfc:3986|urn:uuid:1"],
    "date": ["2024", "2024-05", "2024-05-06", "2024-05-06T07:08:09Z", "2024-05-06T07:08", "2024-13-45", "0000",
             "-2024", "9999-12-31T23:59:59.999999999+14:00", "2024-05-06T07:08:09+99:00", "now", "1e5"],
    "number": ["1", "1.0", "-0", "1e3", "1e999999999", "0.00000000000000000000001", "NaN", "Infinity", "1,2", "",
               "13.5|http://unitsofmeasure.org|g/dL", "5||mg", "5|http://unitsofmeasure.org|m[Hg]/"],
    "reference": ["Patient/seed-ann", "seed-ann", "http://hub.test/fhir/Patient/seed-ann", "Patient/", "/", "Foo/bar",
                  "Patient/seed-ann/_history/1", "urn:uuid:x", "http://x|1"],
    "string": ["Smith", "smi", "SMITH", "a b", "%", "_", "*", "é", "\\", "\\,", "\\$", "\\|"],
    "uri": ["http://example.org/fhir/StructureDefinition/seed", "http://example.org", "urn:x", "http://", "%"],
    "composite": ["http://loinc.org|8480-6$120", "8480-6$gt100", "$", "a$b$c$d", "718-7$13.5|http://unitsofmeasure.org|g/dL"],
    "quantity": ["13.5|http://unitsofmeasure.org|g/dL", "13.5||g/dL", "gt1", "135|http://unitsofmeasure.org|g/L", "1|||"],
}


@st.composite
def search_pairs(draw: Any, params: list[tuple[str, str]], rtype: str) -> list[tuple[str, str]]:
    names = [n for n, _ in params]
    types = dict(params)
    pairs = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["param"] * 5 + ["sort", "include", "has", "chain", "result", "random"]))
        # Mostly what a client could mean (so that most searches get past the parser into SQL),
        # sometimes anything at all.
        if kind == "param":
            name = draw(st.sampled_from(names))
            candidates = st.sampled_from(VALUES_BY_TYPE.get(types[name], VALUES_BY_TYPE["string"]))
            values = draw(st.lists(st.one_of(candidates, candidates, candidates, text_values), min_size=1, max_size=3))
            prefix = draw(st.sampled_from(PREFIXES)) if types[name] in ("date", "number", "quantity") else ""
            modifier = draw(st.one_of(st.just(""), st.just(""), st.sampled_from(MODIFIERS)))
            pairs.append((name + modifier, prefix + ",".join(values)))
        elif kind == "sort":
            known = st.sampled_from(names + ["_id", "_lastUpdated"])
            sort_keys = draw(st.lists(st.one_of(known, known, known, text_values), min_size=1, max_size=4))
            pairs.append(("_sort", ",".join(("-" if draw(st.booleans()) else "") + k for k in sort_keys)))
        elif kind == "include":
            pairs.append((draw(st.sampled_from(["_include", "_revinclude", "_include:iterate", "_revinclude:iterate"])),
                          draw(st.one_of(st.sampled_from(["*", f"{rtype}:subject", f"{rtype}:subject:Patient",
                                                          "Observation:patient", "Observation:subject",
                                                          "Patient:general-practitioner", "Patient:link", "Patient:*",
                                                          "Observation:has-member:Observation", ":", "a:b:c:d"]),
                                         text_values))))
        elif kind == "has":
            pairs.append((draw(st.sampled_from(["_has:Observation:subject:code", "_has:Observation:patient:_has:"
                                                "Observation:has-member:code", "_has:Patient:link:gender",
                                                "_has:Observation:subject", "_has", "_has::::",
                                                "_has:Foo:bar:baz"])) + draw(st.sampled_from(MODIFIERS)),
                          draw(st.one_of(st.sampled_from(VALUES_BY_TYPE["token"]), text_values))))
        elif kind == "chain":
            chain = draw(st.sampled_from(["subject:Patient.name", "subject.name", "patient.general-practitioner.name",
                                          "subject:Patient.link:Patient.link:Patient.link:Patient.gender",
                                          "subject:Patient.organization.name", "link.gender", "organization.name",
                                          "general-practitioner:Practitioner.name", "subject:Foo.name", "subject.",
                                          ".name", "has-member.has-member.has-member.has-member.has-member.code"]))
            pairs.append((chain + draw(st.sampled_from(MODIFIERS)), draw(text_values)))
        elif kind == "result":
            pairs.append(draw(st.sampled_from([("_count", "0"), ("_count", "1"), ("_count", "1001"), ("_count", "-1"),
                                               ("_count", "99999999999999999999"), ("_summary", "count"),
                                               ("_summary", "true"), ("_summary", "bogus"), ("_elements", "name,id"),
                                               ("_elements", "..,%"), ("_total", "accurate"), ("_total", "none"),
                                               ("_total", "x"), ("_format", "xml"), ("_pretty", "true"),
                                               ("_id", "seed-ann,seed-bob"), ("_lastUpdated", "gt2000-01-01"),
                                               ("_type", "Patient"), ("_content", "x"), ("_text", "x"), ("_list", "x"),
                                               ("_filter", "name eq x"), ("_query", "x")])))
        else:
            pairs.append((draw(text_values), draw(text_values)))
    return pairs


@FUZZ
@given(data=st.data())
def test_fuzzed_searches(hub: Hub, data: Any) -> None:
    rtype = data.draw(st.sampled_from(["Patient", "Observation"]), label="type")
    params = _PARAMS.get(rtype) or _PARAMS.setdefault(rtype, capability_params(hub, rtype))
    pairs = data.draw(search_pairs(params, rtype), label="pairs")
    how = data.draw(st.sampled_from(["get", "get", "post", "compartment", "stats", "raw"]), label="how")
    headers = {"Prefer": data.draw(st.sampled_from(["handling=lenient", "handling=strict", "respond-async",
                                                    "handling=strict, return=minimal"]))}
    query = urlencode(pairs, errors="surrogatepass")  # a lone surrogate: invalid UTF-8 bytes, %ED%A0%80
    if how == "post":
        resp = hub.web.post(f"/fhir/{rtype}/_search", data=query, headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"})
    elif how == "compartment":
        resp = hub.web.get(f"/fhir/Patient/seed-ann/{rtype}?{query}", headers=headers)
    elif how == "stats":
        stats = authorized(hub.app, "stats.read", client_id="fuzz-stats")
        group = data.draw(st.sampled_from(["code", "gender", "age-group", "province,district", "period:week",
                                           "organization", "bogus", "", "code,code,code,code"]))
        resp = stats.get(f"/stats/{rtype}?{query}&_group-by={quote(group)}", headers=headers)
    elif how == "raw":  # the pairs written unencoded, as a careless client would
        resp = hub.web.get(f"/fhir/{rtype}?" + "&".join(f"{raw(k)}={raw(v)}" for k, v in pairs), headers=headers)
    else:
        resp = hub.web.get(f"/fhir/{rtype}?{query}", headers=headers)
    hub.watch(resp, "any" if how == "stats" and resp.status_code < 400 else "fhir")
    if resp.status_code == 200 and how != "stats":
        bundle = resp.get_json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode") == "match":
                assert entry["resource"]["resourceType"] == rtype


_PARAMS: dict[str, list[tuple[str, str]]] = {}


def raw(text_: str) -> str:
    """``text_`` in a query string with only what cannot be sent at all escaped: reserved characters
    (``&=+;,/?:@$'!*()``) and ``%`` as they are."""
    return quote(text_, safe="&=+;,/?:@$'!*()%|[]{}<>\\^`\"", errors="surrogatepass")


# -- 1. fuzz: HL7 v2 messages --------------------------------------------------------------------

HL7_TEXT = ["", "\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X0D\\", "\\X0D0A\\", "\\X\\", "\\Xzz\\", "\\.br\\",
            "\\H\\", "\\N\\", "\\Zfoo\\", "\\", "\\\\", "^^^", "~~~", "&&&", "|||", "\"\"", "1E999999999", "-0",
            "99999999999999999999999", "20240230", "99991231235959.9999+9999", "2024", "ADT^A01^ADT_A01",
            "ORU^R01", "VXU^V04", "ACK", "A40", "2.5.1", "2.3", "9.9", "\x00", "\x0b", "\x1c", "é", "\ufeff",
            "x" * 3000, "' OR 1=1--", "=cmd|' /C calc'!A0", "NM", "ST", "CE", "TX", "mg/dL", "mm[Hg]", "10*3/uL"]
hl7_text = st.one_of(st.sampled_from(HL7_TEXT), st.text(max_size=15),
                     st.text(alphabet="|^~\\&0123456789ABCDEFXZ.", max_size=12))


@st.composite
def hl7_messages(draw: Any) -> bytes:
    """A sample message after one to five edits of its segments and fields."""
    raw = draw(st.sampled_from(HL7_SAMPLES)).decode("utf-8", "surrogateescape")
    separator = "\r" if "\r" in raw else "\n"
    segments = [s for s in raw.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["field"] * 6 + ["delete", "duplicate", "swap", "segment", "segment", "control",
                                                     "type", "encoding", "truncate"]))
        if not segments:
            segments = ["MSH|^~\\&|"]
        # Most edits leave MSH alone, so that most messages get past the header into the mapping.
        i = draw(st.integers(0 if len(segments) == 1 or draw(st.integers(0, 4)) == 0 else 1, len(segments) - 1))
        if edit == "field":
            parts = segments[i].split("|")
            j = draw(st.integers(2 if parts[0] == "MSH" else 1, max(2, len(parts))))  # MSH-2: the "encoding" edit
            parts += [""] * (j + 1 - len(parts))
            parts[j] = draw(hl7_text)
            segments[i] = "|".join(parts)
        elif edit == "delete":
            del segments[i]
        elif edit == "duplicate":
            segments[i:i] = [segments[i]] * draw(st.integers(1, 20))
        elif edit == "swap":
            j = draw(st.integers(0, len(segments) - 1))
            segments[i], segments[j] = segments[j], segments[i]
        elif edit == "segment":
            name = draw(st.sampled_from(["ZZZ", "OBX", "PID", "PV1", "NTE", "MSH", "EVN", "DG1", "AL1", "RXA",
                                         "MRG", "NK1", "OBR", "", "Z", "obx"]))
            segments.insert(i, "|".join([name] + draw(st.lists(hl7_text, max_size=25))))
        elif edit in ("control", "type", "encoding") and segments[0].startswith("MSH"):
            parts = segments[0].split("|")
            parts += [""] * (12 - len(parts))
            where = {"control": 9, "type": 8, "encoding": 1}[edit]
            parts[where] = draw(st.one_of(hl7_text, st.just(uuid.uuid4().hex) if edit == "control" else hl7_text))
            segments[0] = "|".join(parts)
        elif edit == "truncate":
            text_ = separator.join(segments)
            segments = [text_[:draw(st.integers(0, len(text_)))]]
    message = draw(st.sampled_from(["\r", "\r", "\n", "\r\n"])).join(segments)
    if draw(st.booleans()):
        message += "\r"
    if draw(st.integers(0, 3)) == 0:  # as a Latin-1 sender would send it
        return message.encode("latin-1", "replace")
    return message.encode("utf-8", "surrogateescape")  # the sample's own bytes where they were not UTF-8


@FUZZ
@given(data=st.data())
def test_fuzzed_hl7v2_messages(hub: Hub, data: Any) -> None:
    message = data.draw(hl7_messages(), label="message")
    content_type = data.draw(st.sampled_from([HL7, HL7, "application/hl7-v2", "application/hl7-v2+er7",
                                              "text/plain", "application/hl7-v2; charset=latin-1"]))
    archived_before = _count(hub.app, "inbound_messages")
    resp = hub.watch(hub.web.post("/ingest/hl7v2", data=message, headers={"Content-Type": content_type}), "hl7")
    if resp.status_code == 200:  # every message the pipeline saw is kept raw, whatever its fate
        assert _count(hub.app, "inbound_messages") == archived_before + 1
    store_is_consistent(hub.app)


def _count(app: Any, table: str) -> int:
    with app.extensions["healthhub.db"].engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


# -- 1. fuzz: CSV case reports -------------------------------------------------------------------

CSV_CELLS = ["", " ", "\"", "\"\"", "'", ",", "\n", "\r\n", "a,b", "\"quoted\"", "=cmd|' /C calc'!A0", "+1", "@SUM(1)",
             "\x00", "\ufeff", "é", "x" * 2000, "1985-04-12", "2024-02-30", "12/04/1985", "M", "F", "male", "unknown",
             "A90", "U07.1", "75377-2", "Positive", "38 10*3/uL", "1e999999999", "recovered", "H01", "Bangkok", "-1"]


@st.composite
def csv_files(draw: Any) -> tuple[bytes, str]:
    """A CSV sample after edits of its cells, columns and rows, written with a random dialect and
    encoding; also its media type."""
    text_ = draw(st.sampled_from(CSV_SAMPLES)).decode("utf-8-sig", "replace")
    rows = list(csv.reader(io.StringIO(text_)))[:30] or [CSV_HEADER.split(",")]
    cell = st.one_of(st.sampled_from(CSV_CELLS), st.text(max_size=12))
    for _ in range(draw(st.integers(1, 6))):
        edit = draw(st.sampled_from(["cell"] * 8 + ["drop-column", "rename-column", "shuffle-columns",
                                                    "extra-column", "ragged", "duplicate-row", "blank-rows",
                                                    "header-only"]))
        # Rows after the header mostly: a broken header is one 400, the rows are where the variety is.
        r = draw(st.integers(0 if len(rows) == 1 or draw(st.integers(0, 9)) == 0 else 1, len(rows) - 1))
        width = max(len(rows[0]), 1)
        if edit == "cell" and rows[r]:
            rows[r][draw(st.integers(0, len(rows[r]) - 1))] = draw(cell)
        elif edit == "drop-column":
            c = draw(st.integers(0, width - 1))
            rows = [row[:c] + row[c + 1:] for row in rows]
        elif edit == "rename-column" and rows[0]:
            rows[0][draw(st.integers(0, len(rows[0]) - 1))] = draw(cell)
        elif edit == "shuffle-columns":
            order = draw(st.permutations(list(range(width))))
            rows = [[row[i] for i in order if i < len(row)] for row in rows]
        elif edit == "extra-column":
            rows = [row + [draw(cell)] for row in rows]
        elif edit == "ragged":
            rows[r] = rows[r][:draw(st.integers(0, len(rows[r])))] + draw(st.lists(cell, max_size=3))
        elif edit == "duplicate-row":
            rows.insert(r, list(rows[r]))
        elif edit == "blank-rows":
            rows.insert(r + 1, [])
        elif edit == "header-only":
            rows = rows[:1]
    out = io.StringIO()
    writer = csv.writer(out, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
    writer.writerows(rows)
    written = out.getvalue()
    damage = draw(st.sampled_from(["none", "none", "none", "quote", "truncate", "nul-line"]))
    if damage == "quote" and written:
        at = draw(st.integers(0, len(written)))
        written = written[:at] + "\"" + written[at:]
    elif damage == "truncate":
        written = written[:draw(st.integers(0, len(written)))]
    elif damage == "nul-line":
        written += "\x00" * draw(st.integers(1, 10)) + "\n"
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "latin-1", "utf-16", "cp1252"]))
    data_ = written.encode(encoding, "replace")
    media = draw(st.sampled_from(["text/csv"] * 4 + ["application/csv", "text/csv; charset=utf-8",
                                                      "text/csv; charset=latin-1", "text/plain"]))
    return data_, media


@FUZZ
@given(data=st.data())
def test_fuzzed_csv_case_reports(hub: Hub, data: Any) -> None:
    body, media = data.draw(csv_files(), label="file")
    query = data.draw(st.sampled_from(["profile=case-report"] * 4 + ["profile=case-report&dry-run=true",
                                                                     "profile=..%2F..%2Fetc%2Fpasswd", "profile=",
                                                                     "profile=nope", "profile=case-report&dry_run=1"]))
    hub.watch(hub.web.post(f"/ingest/csv?{query}", data=body, headers={"Content-Type": media}), "csv")
    store_is_consistent(hub.app)


# -- 1. fuzz: bearer tokens ----------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_with_hub_key(app: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over arbitrary header and claims, signed with the hub's own private key (a
    forgery that needs no key shows the check does not depend on the signature alone)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from healthhub.auth.keys import ALG
    assert ALG == "RS256"
    key = app.extensions["healthhub.auth"].tokens.keys.current()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims, default=str).encode())}"
    signature = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def good_claims(app: Any) -> dict[str, Any]:
    tokens = app.extensions["healthhub.auth"].tokens
    now = int(time.time())
    return {"iss": tokens.issuer, "aud": tokens.audience, "sub": "fuzz", "client_id": "fuzz", "scope": "system/*.rs",
            "jti": uuid.uuid4().hex, "iat": now, "exp": now + 600}


@st.composite
def bad_tokens(draw: Any, app: Any) -> tuple[str, str]:
    """(kind, token) of a token the hub must refuse with 401 — or, for ``signed-odd``, a token the
    hub signed itself around odd claims, which it may accept or refuse but never fail on."""
    valid = issue_token(app, "system/*.rs")
    head, payload, signature = valid.split(".")
    kind = draw(st.sampled_from(["random", "alg-none", "tampered-signature", "tampered-payload", "hs256-confusion",
                                 "wrong-claims", "expired", "huge", "bad-header", "signed-odd", "segments"]))
    kid = app.extensions["healthhub.auth"].tokens.keys.kid
    if kind == "random":
        return kind, draw(st.one_of(st.text(max_size=60), st.sampled_from(["", " ", ".", "..", "a.b.c", "null"])))
    if kind == "alg-none":
        claims = good_claims(app)
        return kind, f"{b64url(json.dumps({'alg': draw(st.sampled_from(['none', 'None', 'NONE', ''])), 'typ': 'at+jwt'}).encode())}." \
                     f"{b64url(json.dumps(claims).encode())}." + draw(st.sampled_from(["", signature]))
    if kind == "tampered-signature":
        i = draw(st.integers(0, len(signature) - 1))
        flipped = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1:]
        return kind, f"{head}.{payload}.{flipped}"
    if kind == "tampered-payload":
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims[draw(st.sampled_from(["scope", "sub", "exp", "client_id", "aud"]))] = draw(
            st.sampled_from(["system/*.cruds", "admin", 9999999999, ["x"], None]))
        return kind, f"{head}.{b64url(orjson.dumps(claims))}.{signature}"
    if kind == "hs256-confusion":  # HMAC "signed" with the public key, the classic algorithm confusion
        import hmac

        public = app.extensions["healthhub.auth"].tokens.keys.verification_key(kid).as_pem()
        signing_input = f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid}).encode())}." \
                        f"{b64url(json.dumps(good_claims(app)).encode())}"
        mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        return kind, f"{signing_input}.{b64url(mac)}"
    if kind in ("wrong-claims", "expired"):
        claims = good_claims(app)
        if kind == "expired":
            claims.update(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
        else:
            claim = draw(st.sampled_from(["aud", "iss", "nbf", "iat", "scope", "jti", "sub", "client_id", "exp"]))
            if claim != "nbf" and draw(st.booleans()):
                del claims[claim]  # a required claim missing
            else:
                claims[claim] = {"aud": "http://evil.example/fhir", "iss": "http://evil.example", "nbf": 10 ** 12,
                                 "iat": 10 ** 12, "scope": "patient/*.x y/z", "jti": None, "sub": None,
                                 "client_id": None, "exp": "tomorrow"}[claim]
        return kind, signed_with_hub_key(app, {"alg": "RS256", "typ": "at+jwt", "kid": kid}, claims)
    if kind == "huge":
        return kind, valid + "A" * draw(st.sampled_from([10_000, 100_000]))
    if kind == "bad-header":
        header = draw(st.fixed_dictionaries({}, optional={
            "alg": st.sampled_from(["RS256", "RS384", "ES384", "HS256", None, ["RS256"], {"a": 1}]),
            "typ": st.sampled_from(["at+jwt", "JWT", None, ["at+jwt"], {"a": 1}]),
            "kid": st.sampled_from([kid, "", None, 1, ["x"], {"a": 1}, [kid], "x" * 1000]),
            "crit": st.sampled_from([["exp"], "x", []]), "jku": st.just("http://evil.example/jwks"),
            "x5u": st.just("http://evil.example/cert")}))
        return kind, f"{b64url(json.dumps(header).encode())}.{payload}.{signature}"
    if kind == "signed-odd":
        claims = good_claims(app)
        claims[draw(st.sampled_from(["scope", "patient", "fhirUser", "client_id", "sub", "jti", "organization",
                                     "exp", "iat", "aud"]))] = draw(json_values)
        return kind, signed_with_hub_key(app, {"alg": "RS256", "typ": "at+jwt", "kid": kid}, claims)
    pieces = draw(st.lists(st.sampled_from([head, payload, signature, "", "e30", "bnVsbA", "!!!"]), max_size=6))
    return kind, ".".join(pieces)


@FUZZ
@given(data=st.data())
def test_fuzzed_bearer_tokens(hub: Hub, data: Any) -> None:
    kind, token = data.draw(bad_tokens(hub.app), label="token")
    scheme = data.draw(st.sampled_from(["Bearer ", "Bearer ", "bearer ", "Bearer  ", "Basic ", "", "Bearer\t"]))
    path = data.draw(st.sampled_from(["/fhir/Patient", "/fhir/Patient/seed-ann", "/fhir/Observation?subject=seed-ann",
                                      "/ingest/csv?profile=case-report", "/bulk/status/x", "/stats/Patient?_group-by=gender",
                                      "/fhir/$export"]))
    client = hub.app.test_client()
    # Straight into the WSGI environ, as a server hands over header bytes (latin-1), CR/LF included.
    environ = {"HTTP_AUTHORIZATION": (scheme + token).encode("utf-8", "surrogatepass").decode("latin-1")}
    if path.startswith("/ingest"):
        resp = client.post(path, data=CSV_HEADER.encode(), headers={"Content-Type": "text/csv"},
                           environ_overrides=environ)
    else:
        resp = client.get(path, headers={"Prefer": "respond-async"}, environ_overrides=environ)
    hub.watch(resp)
    if len(environ["HTTP_AUTHORIZATION"]) + len("Authorization: ") > MAX_HEADER:
        assert resp.status_code == 431, (kind, resp.status_code)  # as gunicorn would refuse it
    elif kind != "signed-odd":
        assert resp.status_code == 401, (kind, token[:200], _payload(token), resp.status_code)


def _payload(token: str) -> str:
    try:
        part = token.split(".")[1]
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()[:500]
    except (IndexError, ValueError):
        return "?"


# -- 2. classic attacks: SQL injection -----------------------------------------------------------

INJECTIONS = [
    "' OR 1=1--", "' OR '1'='1", "'; DROP TABLE resources;--", "\") UNION SELECT resource_type, id FROM resources--",
    "%' OR '%'='", "%", "_", "\\' OR 1=1 /*", "1) OR (1=1", "'||(SELECT id FROM resources LIMIT 1)||'",
]
#: Characters in the injections that the seed data never holds: an honest search for any of the
#: strings matches nothing, so any match is the injection (or an unescaped LIKE wildcard) at work.
INJECTION_CHARS = set("'\"%_;\\()|")
MODIFIERS_BY_TYPE = {"string": ["", ":exact", ":contains"], "token": ["", ":text", ":of-type"],
                     "uri": ["", ":below", ":above"], "reference": ["", ":identifier"]}


def all_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_strings(v)
    elif isinstance(node, str):
        yield node


def test_the_seed_data_holds_no_injection_character() -> None:
    """What the SQL injection tests rely on: no stored key or value holds any of these characters."""
    stored = "".join(s for seed in SEEDS for s in all_strings(seed))
    assert stored and not INJECTION_CHARS & set(stored)
    assert all(set(injection) & INJECTION_CHARS for injection in INJECTIONS)


HONEST = {
    "Patient": [("name:contains=mit", ["seed-ann"]), ("family=smi", ["seed-ann"]), ("family:exact=Jones", ["seed-bob"]),
                ("_profile:below=http://example.org", ["seed-ann"]), ("identifier=http://example.org/mrn|MRN2",
                                                                          ["seed-bob"]),
                ("address-city:contains=field", ["seed-ann"]), ("_type=Patient", ["seed-ann", "seed-bob"])],
    "Observation": [("code:text=hemo", ["seed-hb"]), ("value-string:contains=fine", ["seed-note"]),
                    ("subject=Patient/seed-bob", ["seed-bp", "seed-note"]), ("value-quantity=13.5", ["seed-hb"]),
                    ("component-code-value-quantity=http://loinc.org|8480-6$120", ["seed-bp"])],
}


@pytest.mark.parametrize("rtype", ["Patient", "Observation"])
def test_sql_injection_in_every_search_parameter(hub: Hub, rtype: str) -> None:
    params = capability_params(hub, rtype)
    assert len(params) >= 30  # the list really came from the CapabilityStatement
    # The controls: the same kinds of search (LIKE included) do find the seed data honestly.
    for query, expected in HONEST[rtype]:
        found = hub.watch(hub.web.get(f"/fhir/{rtype}?{query}")).get_json()
        assert sorted(e["resource"]["id"] for e in found.get("entry", [])) == expected, query
    before = table_counts(hub.app)
    searched = 0
    for injection in INJECTIONS:
        for name, ptype in params:
            for modifier in MODIFIERS_BY_TYPE.get(ptype, [""]):
                resp = hub.watch(hub.web.get(f"/fhir/{rtype}?{quote(name + modifier)}={quote(injection, safe='')}"
                                             "&_count=1000"))
                searched += 1
                if resp.status_code == 200:
                    bundle = resp.get_json()
                    matches = [e["resource"]["id"] for e in bundle.get("entry", [])
                               if e.get("search", {}).get("mode") == "match"]
                    # Nothing stored holds these characters: an honest search finds nothing (one
                    # whose parameter was dropped, or a LIKE wildcard left unescaped, finds more).
                    assert matches == [] and bundle["total"] == 0, (name + modifier, injection, matches)
                else:
                    assert resp.status_code == 400, (name + modifier, injection, resp.status_code)
    assert searched >= len(params) * len(INJECTIONS)
    assert table_counts(hub.app) == before


@pytest.mark.parametrize("rtype, param, seeded", [
    ("Patient", "family", [p["id"] for p in SEED_PATIENTS]),
    ("Observation", "code", [o["id"] for o in SEED_OBSERVATIONS])])
def test_sql_injection_in_sort_keys(hub: Hub, rtype: str, param: str, seeded: list[str]) -> None:
    before = table_counts(hub.app)
    attempts = [*INJECTIONS, f"{param};DROP TABLE resources", f"{param}) --", f"{param} desc", "(SELECT 1)", "1",
                "-' OR 1=1--", f"{param},'", "resources.id", "id", "_id;--", "--", "-", ",", "", "_lastUpdated' --"]
    for attempt in attempts:
        for sort in (attempt, f"{param},{attempt}", f"-{attempt}", f"{attempt},_id"):
            resp = hub.watch(hub.web.get(f"/fhir/{rtype}?_sort={quote(sort, safe='')}&_count=1000"))
            if resp.status_code == 200:
                bundle = resp.get_json()
                ids = sorted(e["resource"]["id"] for e in bundle.get("entry", [])
                             if e.get("search", {}).get("mode") == "match")
                # Sorting changes the order, never the set: exactly what was stored, nothing more.
                assert ids == sorted(seeded) and bundle["total"] == len(seeded), (sort, ids)
            else:
                assert resp.status_code == 400, (sort, resp.status_code)
    assert table_counts(hub.app) == before


# -- 2. classic attacks: path traversal in export file names --------------------------------------

def test_path_traversal_in_export_file_names(hub: Hub) -> None:
    from healthhub.bulk.worker import Worker

    secret = f"SECRET-{uuid.uuid4().hex}"
    exports = hub.tmp / "exports"
    exports.mkdir(exist_ok=True)
    for place in (hub.tmp / "secret.txt", exports / "secret.txt", exports / "Patient.ndjson"):
        place.write_text(secret)
    client = authorized(hub.app, "system/*.rs")
    kick = hub.watch(client.get("/fhir/$export?_type=Patient", headers={"Prefer": "respond-async",
                                                                      "Accept": FHIR_JSON}))
    assert kick.status_code == 202
    status = kick.headers["Content-Location"].replace("http://hub.test", "")
    assert Worker(hub.app.extensions["healthhub.db"], hub.app.config["HEALTHHUB"]).run_once() == "completed"
    manifest = hub.watch(client.get(status), "any").get_json()
    [output] = manifest["output"]
    url = output["url"].replace("http://hub.test", "")
    job, name = url.split("/")[-2:]
    real = hub.watch(client.get(url), "any")
    real_data = real.data
    real.close()  # the file it streams
    assert real.status_code == 200 and b"seed-ann" in real_data  # the control: the real file is served
    (exports / job / "secret.txt").write_text(secret)  # beside the real file, but never exported

    absolute = str(hub.tmp / "secret.txt")
    names = ["..%2Fsecret.txt", "..%2F..%2Fsecret.txt", "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
             "%2e%2e%2fsecret.txt", "%2E%2E%2F%2E%2E%2Fsecret.txt", "..%252Fsecret.txt", "..%255c..%255csecret.txt",
             "..%5Csecret.txt", "..%5C..%5Csecret.txt", "....%2F%2Fsecret.txt", "..%c0%afsecret.txt",
             "..%u2216secret.txt", quote(absolute, safe=""), "%2Fetc%2Fpasswd", "secret.txt", "..", ".", "%2e%2e",
             f"{name}%2F..%2F..%2Fsecret.txt", f"..%2F{job}%2F{name}", f"{name}%00.txt", f"{name}%2500",
             f"{name}%0d%0aX-Injected:%201", "~%2F.ssh%2Fid_rsa", "%7e", "*", "Patient.ndjson.", name.upper()]
    paths = [f"/bulk/files/{job}/{n}" for n in names] + [
        f"/bulk/files/..%2F{job}/{name}", f"/bulk/files/{job}%2F..%2F..%2F/secret.txt", "/bulk/files/../../secret.txt",
        f"/bulk/files/{job}/../../secret.txt", f"/bulk/files/{job}//{absolute.lstrip('/')}", "/bulk/files/..%2F..%2F/x",
        f"/bulk/status/..%2F{job}", "/bulk/status/..%2F..%2Fetc%2Fpasswd", f"/bulk/files/{job}/{name}/..%2Fsecret.txt"]
    for path in paths:
        resp = client.get(path, follow_redirects=True)
        hub.watch(resp)
        assert resp.status_code in (400, 404), (path, resp.status_code)
        assert secret.encode() not in resp.data and b"root:" not in resp.data, path
        assert resp.data != real_data, path
        resp.close()
    assert (hub.tmp / "secret.txt").read_text() == secret  # and nothing was removed


# -- 2. classic attacks: JSON bombs, XML, oversized bodies ---------------------------------------

def _deep_arrays(depth: int) -> bytes:
    return b'{"resourceType": "Patient", "extension": ' + b"[" * depth + b"]" * depth + b"}"


def _deep_objects(depth: int) -> bytes:
    return b'{"resourceType": "Patient", "x": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


TEN_MB_OF_NUMBERS = ",".join(str(i % 1000) for i in range(2_600_000)).encode()  # 10 MB: 2.6 million numbers


@pytest.mark.parametrize("label, method, path, body", [
    ("arrays 100k deep", "post", "/fhir/Patient", _deep_arrays(100_000)),
    ("objects 100k deep", "post", "/fhir/Patient", _deep_objects(100_000)),
    ("arrays 100k deep, Bundle", "post", "/fhir", b'{"resourceType":"Bundle","type":"batch","entry":'
                                                  + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("arrays 100k deep, update", "put", "/fhir/Patient/seed-ann", _deep_arrays(100_000)),
    ("arrays 100k deep, patch", "patch", "/fhir/Patient/seed-ann", b"[" * 100_000 + b"]" * 100_000),
    ("arrays 100k deep, $validate", "post", "/fhir/Patient/$validate", _deep_arrays(100_000)),
    ("objects 990 deep", "post", "/fhir/Patient", _deep_objects(990)),
    ("extensions 300 deep", "post", "/fhir/Patient", b'{"resourceType":"Patient","extension":['
                                                     + b'{"url":"http://x","extension":[' * 300 + b'{"url":"http://x"}'
                                                     + b"]}" * 300 + b"]}"),
    ("10 MB array of numbers", "post", "/fhir/Patient", b"[" + TEN_MB_OF_NUMBERS + b"]"),
    ("2 MB of numbers as given names: 500k problems, one small answer", "post", "/fhir/Patient",
     b'{"resourceType":"Patient","name":[{"given":[' + b",".join(b"%d" % (i % 1000) for i in range(500_000))
     + b']}]}'),
    ("duplicate keys", "post", "/fhir/Patient", b'{"resourceType":"Patient",' + b'"colour":"blue",' * 500_000
                                                + b'"active":true}'),
    ("a number of 100k digits", "post", "/fhir/Observation",
     b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":'
     + b"9" * 100_000 + b"}}"),
    ("an exponent past every database", "post", "/fhir/Observation",
     b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e999999999}}'),
    ("a scale past PostgreSQL's", "post", "/fhir/Observation",
     b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":0.'
     + b"0" * 20_000 + b"1}}"),
])
def test_json_bombs_get_a_4xx(hub: Hub, label: str, method: str, path: str, body: bytes) -> None:
    before = table_counts(hub.app)
    started = time.monotonic()
    headers = {"Content-Type": "application/json-patch+json" if method == "patch" else FHIR_JSON}
    resp = hub.watch(getattr(hub.web, method)(path, data=body, headers=headers))
    assert 400 <= resp.status_code < 500, (label, resp.status_code)
    assert len(resp.data) < 100_000, (label, len(resp.data))  # the answer is not a bomb of its own
    assert time.monotonic() - started < 120, label  # generous: a bomb must not take the worker for minutes
    assert table_counts(hub.app) == before


def test_over_size_bodies_get_413_before_they_are_read(make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(max_body=1024 * 1024)
    watch = Watch(caplog)
    web = authorized(app)
    body = b"[" + TEN_MB_OF_NUMBERS + b"]"
    for method, path, ctype in [("post", "/fhir/Patient", FHIR_JSON), ("post", "/fhir", FHIR_JSON),
                                ("put", "/fhir/Patient/x", FHIR_JSON), ("post", "/ingest/hl7v2", HL7),
                                ("post", "/ingest/csv?profile=case-report", "text/csv")]:
        resp = watch(getattr(web, method)(path, data=body, headers={"Content-Type": ctype}))
        assert resp.status_code == 413, (path, resp.status_code)
        chunked = watch(getattr(web, method)(path, input_stream=io.BytesIO(body), headers={
            "Content-Type": ctype, "Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True}))
        assert chunked.status_code == 413, (path, "chunked", chunked.status_code)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol9;&xxe;"/></name></Patient>"""


@pytest.mark.parametrize("method, path, ctype, status", [
    ("post", "/fhir/Patient", "application/fhir+xml", 415), ("post", "/fhir/Patient", "application/xml", 415),
    ("post", "/fhir/Patient", "text/xml", 415), ("put", "/fhir/Patient/seed-ann", "application/fhir+xml", 415),
    ("post", "/fhir", "application/fhir+xml", 415), ("post", "/fhir/Patient/$validate", "application/fhir+xml", 415),
    ("post", "/fhir/Patient", FHIR_JSON, 400),  # XML said to be JSON: not JSON
    ("post", "/ingest/hl7v2", "application/xml", 415), ("post", "/ingest/csv?profile=case-report", "text/xml", 415),
])
def test_xml_bodies_are_refused_unparsed(hub: Hub, method: str, path: str, ctype: str, status: int) -> None:
    before = table_counts(hub.app)
    resp = hub.watch(getattr(hub.web, method)(path, data=BILLION_LAUGHS, headers={"Content-Type": ctype}))
    assert resp.status_code == status
    assert b"lollol" not in resp.data and b"root:" not in resp.data
    assert table_counts(hub.app) == before


# -- 2. classic attacks: CR/LF into headers, oversized headers ------------------------------------

CRLF = ["%0d%0aX-Injected:%201", "%0aX-Injected:%201", "%0dX-Injected:%201", "%0d%0a%0d%0a<html>", "%E5%98%8A%E5%98%8D"
        "X-Injected:%201", "%0a", "%0d"]


@pytest.mark.parametrize("payload", CRLF)
def test_crlf_never_reaches_a_header(hub: Hub, payload: str) -> None:
    from urllib.parse import unquote

    raw = unquote(payload)
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:crlf", "value": "v" + raw}]}
    answers = [
        hub.web.put(f"/fhir/Patient/crlf{payload}", data=orjson.dumps({**body, "id": "crlf" + raw}),
                    headers={"Content-Type": FHIR_JSON}),
        hub.web.get(f"/fhir/Patient/crlf{payload}"), hub.web.delete(f"/fhir/Patient/crlf{payload}"),
        hub.web.get(f"/fhir/Patient/seed-ann/_history/1{payload}"),
        hub.web.post("/fhir/Patient", data=orjson.dumps(body), headers={
            "Content-Type": FHIR_JSON, "If-None-Exist": f"identifier=urn:crlf|v{payload}"}),
        hub.web.post("/fhir/Patient", data=orjson.dumps(body), headers={  # again: now it exists
            "Content-Type": FHIR_JSON, "If-None-Exist": f"identifier=urn:crlf|v{payload}"}),
        hub.web.put(f"/fhir/Patient?identifier=urn:crlf|w{payload}", data=orjson.dumps(body),
                    headers={"Content-Type": FHIR_JSON}),
        hub.web.get(f"/fhir/Patient?_id=crlf{payload}&_format=json{payload}"),
        hub.web.get(f"/fhir/$export?_type=Patient{payload}", headers={"Prefer": "respond-async"}),
        hub.web.get(f"/bulk/status/x{payload}"),
        # a raw CR/LF in a request header, as a proxy that does not check would pass it on
        hub.web.get("/fhir/Patient/seed-ann", environ_overrides={"HTTP_X_REQUEST_ID": "abc" + raw,
                                                                 "HTTP_PREFER": "return=minimal" + raw}),
        hub.web.post("/fhir/Patient", data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON},
                     environ_overrides={"HTTP_IF_NONE_EXIST": "identifier=urn:crlf|v" + raw}),
    ]
    for resp in answers:
        hub.watch(resp)  # no header holds CR or LF
        assert "X-Injected" not in resp.headers
        if "Location" in resp.headers:
            assert resp.headers["Location"].startswith("http://hub.test/fhir/Patient/")
    # an id with a CR or LF is not an id: refused, not looked up
    assert answers[0].status_code == 400 and answers[1].status_code == 400 and answers[2].status_code == 400


BIG = "x" * 100_000


@pytest.mark.parametrize("header", ["Authorization", "If-None-Exist", "If-Match", "If-None-Match", "If-Modified-Since",
                                    "Prefer", "Accept", "Content-Type", "X-Request-ID", "Origin", "Cookie",
                                    "Accept-Encoding", "X-Forwarded-For", "X-Anything"])
def test_a_100kb_header_value_is_no_500(hub: Hub, header: str) -> None:
    """What reaches the hub through WSGI with a header past gunicorn's 8190-byte field limit gets
    the same refusal gunicorn would give: 431 with an OperationOutcome, nothing stored."""
    value = {"Accept": ",".join(["text/x"] * 14_000), "Prefer": "handling=" + BIG, "If-None-Exist": "name=" + BIG,
             "Content-Type": FHIR_JSON + "; a=" + BIG}.get(header, BIG)
    before = table_counts(hub.app)
    get = hub.watch(hub.web.get("/fhir/Patient/seed-ann", headers={header: value}))
    post = hub.watch(hub.web.post("/fhir/Patient", data=orjson.dumps({"resourceType": "Patient"}),
                                  headers={"Content-Type": FHIR_JSON, header: value}))
    if header == "Cookie":  # Werkzeug's test client sends its own cookie jar, not this header
        return
    assert get.status_code == post.status_code == 431
    assert post.get_json()["issue"][0]["code"] == "too-costly"
    assert table_counts(hub.app) == before


def test_a_100kb_header_gets_431_from_the_http_server(hub: Hub, live_server: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Over a real socket (the Werkzeug server ``healthhub serve`` falls back to; gunicorn's limit
    is 8 KB): 431 or 400, and the server goes on serving."""
    port = int(live_server.split(":")[2].split("/")[0])
    request = (f"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {BIG}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 431), reply[:200]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # The server's own line about the refusal ("code 431, message Line too long") is all there is.
    werkzeug = [r for r in caplog.records if r.name == "werkzeug"]
    assert any(r.levelno == logging.ERROR and str(status) in r.getMessage() for r in werkzeug)
    for record in werkzeug:
        caplog.records.remove(record)
    hub.watch.nothing_logged("431")


# -- 2. long values where PostgreSQL has limits ---------------------------------------------------

def test_long_random_codes_are_stored_and_found(hub: Hub) -> None:
    """A btree entry holds at most ~2.7 kB on PostgreSQL: a long random quantity unit (random, so
    it does not compress) answered 500 there. Index values are clipped, and searches alike."""
    rng = random.Random(7)
    unit = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(20_000))
    system = "http://example.org/" + unit
    obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org",
                                                                                     "code": "8480-6"}]},
           "valueQuantity": {"value": 7, "system": system, "code": unit},
           "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                          "valueQuantity": {"value": 7, "system": system, "code": unit}}]}
    created = hub.watch(hub.web.post("/fhir/Observation", data=orjson.dumps(obs), headers={"Content-Type": FHIR_JSON}))
    assert created.status_code == 201
    rid = created.get_json()["id"]
    for query in (f"value-quantity=7|{quote(system, safe='')}|{unit}", f"value-quantity=7||{unit}",
                  f"component-value-quantity=7||{unit}", f"code-value-quantity=8480-6$7||{unit}"):
        found = hub.watch(hub.web.get(f"/fhir/Observation?{query}")).get_json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [rid], query[:60]
    other = "x" + unit[1:]  # another unit: it differs within what the index keeps
    assert hub.watch(hub.web.get(f"/fhir/Observation?value-quantity=7||{other}")).get_json()["total"] == 0


# -- what the fuzz found, kept as plain regressions -----------------------------------------------

@pytest.mark.parametrize("message", [
    b"BHS|^~\\&||ABCHS||AUSDHSV|20070101123401||||abchs20070101123401-1\r",  # a batch cut after its header
    b"FHS|^~\\&|APP|FAC\rBHS|^~\\&|APP|FAC\rBTS|0\rFTS|1\r",  # a file with an empty batch
])
def test_an_hl7_batch_without_a_message_gets_ar(hub: Hub, message: bytes) -> None:
    resp = hub.watch(hub.web.post("/ingest/hl7v2", data=message, headers={"Content-Type": HL7}), "hl7")
    assert resp.status_code == 200 and b"MSA|AR|" in resp.data


@pytest.mark.parametrize("claim, value", [("patient", ["seed-ann"]), ("patient", {"id": "seed-ann"}), ("sub", None),
                                          ("client_id", 7), ("scope", ["system/*.rs"]), ("organization", ["x"]),
                                          ("jti", None), ("fhirUser", {"a": 1})])
def test_a_signed_token_with_a_claim_of_the_wrong_type_gets_401(hub: Hub, claim: str, value: Any) -> None:
    """Only the hub signs tokens, always with strings there; anything else is refused at the door
    (a ``patient`` list reached SQL: the export kick-off answered 500)."""
    kid = hub.app.extensions["healthhub.auth"].tokens.keys.kid
    token = signed_with_hub_key(hub.app, {"alg": "RS256", "typ": "at+jwt", "kid": kid},
                                {**good_claims(hub.app), claim: value})
    client = hub.app.test_client()
    for path in ("/fhir/$export", "/fhir/Observation?subject=seed-ann", "/fhir/Patient/seed-ann"):
        resp = hub.watch(client.get(path, headers={"Authorization": f"Bearer {token}", "Prefer": "respond-async"}))
        assert resp.status_code == 401, (path, resp.status_code)
    control = signed_with_hub_key(hub.app, {"alg": "RS256", "typ": "at+jwt", "kid": kid}, good_claims(hub.app))
    assert hub.watch(client.get("/fhir/Patient/seed-ann", headers={"Authorization": f"Bearer {control}"})
                     ).status_code == 200


@pytest.mark.parametrize("criteria", ["_format:x=json", "_pretty:y=true", "_type=Organization", "_format=json",
                                      "_type=Patient"])
def test_conditional_writes_whose_criteria_select_nothing_touch_nothing(hub: Hub, criteria: str) -> None:
    """``DELETE Organization?_format:x=json`` (and ``?_type=Patient``, while ``_type`` was ignored)
    had no criteria left once parsed: they matched every Organization and deleted the only one."""
    deleted = hub.watch(hub.web.delete(f"/fhir/Organization?{criteria}"))
    assert deleted.status_code in (200, 400)
    updated = hub.watch(hub.web.put(f"/fhir/Organization?{criteria}", data=orjson.dumps({
        "resourceType": "Organization", "name": "Renamed"}), headers={"Content-Type": FHIR_JSON}))
    assert updated.status_code in (201, 400)  # 400, or (for _type=Patient) a new Organization
    current = hub.watch(hub.web.get("/fhir/Organization/seed-org")).get_json()
    assert current["name"] == "Seed Hospital" and current["meta"]["versionId"] == "1"
    if criteria.startswith("_type=Patient"):
        assert "Nothing to delete" in deleted.get_json()["issue"][0]["diagnostics"]


# -- 3. slow-loris on MLLP -----------------------------------------------------------------------

class _Watcher(threading.Thread):
    """Reads a socket until the server closes it, and notes when (monotonic)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.closed_at: float | None = None

    def run(self) -> None:
        self.sock.settimeout(120)
        try:
            while self.sock.recv(4096):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        except OSError:  # our own close at the end, or the generous timeout: not closed by the server
            return
        self.closed_at = time.monotonic()


def test_mllp_slow_loris_is_cut_off_while_others_are_served(hub: Hub) -> None:
    """``healthhub mllp --idle-timeout`` (``MllpServer.idle_timeout``; a block must also be complete
    within it): an idle connection, one that stalls mid-frame and one that trickles a byte at a
    time are closed after the timeout, never before, while another sender's messages are ACKed."""
    from healthhub.ingest.mllp import send

    timeout = 2.0
    message = ("MSH|^~\\&|LAB|LORIS-H|HUB|HUB|20240101120000||ADT^A01|{n}|P|2.5.1\r"
               "EVN|A01|20240101120000\rPID|1||{n}^^^LORIS-H^MR||Doe^Jane||19800101|F\r")
    register_sender(hub.app, "LORIS-H")
    archived_before = _count(hub.app, "inbound_messages")
    stop = threading.Event()
    with mllp_listener(hub.app, idle_timeout=timeout) as server:
        # Each clock is read before the event the server times from, so the bound below holds.
        idle_since = time.monotonic()
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        stalled_since = time.monotonic()
        stalled.sendall(b"\x0b" + message.format(n="STALLED").encode()[:40])  # a block that never ends
        trickler = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        trickled_since = time.monotonic()
        trickler.sendall(b"\x0b")

        def trickle() -> None:  # never idle for long, but its block never completes
            try:
                while not stop.wait(0.2):
                    trickler.sendall(b"x")
            except OSError:
                pass

        dripping = threading.Thread(target=trickle, daemon=True)
        watchers = [_Watcher(sock) for sock in (idle, stalled, trickler)]
        for thread in (dripping, *watchers):
            thread.start()
        try:
            # Meanwhile another sender, a connection per message: each one ACKed.
            acks = [send("127.0.0.1", server.port, [message.format(n=f"OK{i}").encode()], timeout=30)[0]
                    for i in range(3)]
            assert all(b"MSA|AA|OK" in ack for ack in acks), acks
            for watcher in watchers:
                watcher.join(90)
        finally:
            stop.set()
            dripping.join(5)
            for sock in (idle, stalled, trickler):
                sock.close()
        closed = [w.closed_at for w in watchers]
        assert None not in closed, f"a slow connection was never closed: {closed}"
        # Never before the timeout (a lower bound on a monotonic clock: no flakiness from a slow machine).
        since = (idle_since, stalled_since, trickled_since)
        assert all(c - s >= timeout - 0.01 for c, s in zip(closed, since, strict=True)), (closed, since)  # type: ignore[operator]
        assert server.stats.timeouts >= 3
        assert server.stats.aborted_frames >= 2  # the stalled and the trickled partial blocks were dropped
    # Only the three whole messages reached the pipeline and its archive; the partial blocks did not.
    assert _count(hub.app, "inbound_messages") == archived_before + 3
    hub.watch.nothing_logged("mllp")
