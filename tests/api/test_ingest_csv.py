"""CSV case reports over HTTP and the CLI: good rows stored, bad rows reported and kept, dry runs,
re-sent files, replay. Expected values are computed from the CSV files with the csv module."""
from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import select

from healthhub.clock import utcnow
from healthhub.ingest import senders
from healthhub.ingest.models import InboundRow
from tests.conftest import DATA, archived, authorized

GOOD = DATA / "csv" / "case-report-good.csv"
BAD = DATA / "csv" / "case-report-bad.csv"


def rows_of(path: Any) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [r for r in csv.DictReader(fh) if any((v or "").strip() for v in r.values())]


def register(app: Any, *codes: str, client_id: str | None = None) -> None:
    with app.extensions["healthhub.db"].transaction() as session:
        for code in codes:
            if session.get(senders.Sender, code) is None:
                senders.create(session, code, f"Hospital {code}", utcnow(), client_id=client_id,
                               organization=None, timezone="Asia/Bangkok")


def upload(client: Any, path: Any, query: str = "profile=case-report") -> Any:
    return client.post(f"/ingest/csv?{query}", data=path.read_bytes(), headers={"Content-Type": "text/csv"})


def test_good_file_is_stored(app, client):
    expected = rows_of(GOOD)
    register(app, *{r["hospital_code"] for r in expected})
    resp = upload(client, GOOD)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    report = resp.json
    assert report["accepted"] == len(expected) and report["rejected"] == []
    with_tests = [r for r in expected if r["test_code"]]
    assert report["resources"]["Condition"] == len(expected)
    assert report["resources"]["Observation"] == len(with_tests)
    assert client.get("/fhir/Condition").json["total"] == len(expected)
    dengue = [r for r in expected if r["condition_code"].strip().upper() == "A90"]
    found = client.get("/fhir/Condition?code=http://hl7.org/fhir/sid/icd-10|A90").json
    assert found["total"] == len(dengue)
    one = expected[0]
    patient = client.get(f"/fhir/Patient?identifier=urn:healthhub:id:national|{one['national_id']}").json
    assert patient["total"] == 1
    address = patient["entry"][0]["resource"]["address"][0]
    assert (address["state"], address["district"]) == (one["province"], one["district"])
    [row] = archived(app)
    assert (row.kind, row.outcome, row.size) == ("csv", "stored", GOOD.stat().st_size)
    source = f"http://hub.test/ingest/archive/{row.id}"
    assert patient["entry"][0]["resource"]["meta"]["source"] == source
    provenance = client.get("/fhir/Provenance").json
    targets = {t["reference"].split("/_history/")[0] for e in provenance["entry"] for t in e["resource"]["target"]}
    assert f"Patient/{patient['entry'][0]['resource']['id']}" in targets


def test_resent_file_changes_nothing(app, client):
    register(app, *{r["hospital_code"] for r in rows_of(GOOD)})
    upload(client, GOOD)
    versions = client.get("/fhir/_history").json["total"]
    again = upload(client, GOOD).json
    assert again["accepted"] == len(rows_of(GOOD))
    assert client.get("/fhir/Condition").json["total"] == len(rows_of(GOOD))
    # Nothing changed, so no new versions (the second upload's Provenance aside: it writes none)
    assert client.get("/fhir/_history").json["total"] == versions


def test_bad_rows_are_reported_with_their_numbers_and_kept(app, client):
    register(app, "H01")
    report = upload(client, BAD).json
    rows = list(csv.reader(io.StringIO(BAD.read_text(encoding="utf-8"))))
    header, data = rows[0], rows[1:]
    numbered = [(i, r) for i, r in enumerate(data, 1) if any(c.strip() for c in r)]
    rejected = {r["row"]: r["errors"] for r in report["rejected"]}
    assert report["accepted"] + len(rejected) == len(numbered)
    col = {name: i for i, name in enumerate(header)}
    # Rows the test can judge on their own: a missing case id, a wrong sex code, an
    # unregistered hospital, too few cells.
    missing_case = [i for i, r in numbered if len(r) == len(header) and not r[col["case_id"]].strip()]
    bad_sex = [i for i, r in numbered if len(r) == len(header) and r[col["sex"]].strip() == "X"]
    unknown_hospital = [i for i, r in numbered if len(r) == len(header) and r[col["hospital_code"]].strip() == "ZZZ"]
    short = [i for i, r in numbered if len(r) < len(header)]
    assert missing_case and bad_sex and unknown_hospital and short
    for i in missing_case:
        assert "case_id" in rejected[i]
    for i in bad_sex:
        assert "sex" in rejected[i]
    for i in unknown_hospital:
        assert "hospital_code" in rejected[i]
    for i in short:
        assert i in rejected
    [message] = archived(app)
    assert message.outcome == "partial"
    with app.extensions["healthhub.db"].transaction() as session:
        kept = {r.row: r.errors for r in session.scalars(select(InboundRow))}
    assert kept == rejected
    assert client.get("/fhir/Condition").json["total"] == report["accepted"]


def test_dry_run_stores_nothing(app, client, db_counts):
    register(app, *{r["hospital_code"] for r in rows_of(GOOD)})
    before = db_counts()
    report = upload(client, GOOD, "profile=case-report&dry-run=true").json
    assert report["accepted"] == len(rows_of(GOOD)) and report["dry_run"] is True
    assert db_counts() == before


def test_wrong_header_is_refused_and_archived(app, client):
    resp = upload(client, DATA / "csv" / "case-report-wrong-header.csv")
    assert resp.status_code == 400 and resp.json["resourceType"] == "OperationOutcome"
    assert "column" in resp.json["issue"][0]["diagnostics"].lower()
    assert [r.outcome for r in archived(app)] == ["rejected"]
    assert upload(client, GOOD, "profile=no-such-profile").status_code == 400


def test_other_profile_and_encodings(app, client):
    register(app, "H01", "H02", "H03")
    dengue = rows_of(DATA / "csv" / "dengue-506.csv")
    report = upload(client, DATA / "csv" / "dengue-506.csv", "profile=dengue-506").json
    assert report["accepted"] + len(report["rejected"]) == len(dengue)
    assert report["accepted"] >= 1
    for name in ("case-report-bom.csv", "case-report-quoted.csv", "case-report-latin1-row.csv"):
        report = upload(client, DATA / "csv" / name).json
        assert report["accepted"] >= 1, (name, report)
    latin = upload(client, DATA / "csv" / "case-report-latin1-row.csv").json
    assert any("UTF-8" in " ".join(sum(r["errors"].values(), [])) for r in latin["rejected"])


def test_rows_of_an_unregistered_hospital_are_stored_after_replay(app, client, cli):
    expected = rows_of(GOOD)
    codes = sorted({r["hospital_code"] for r in expected})
    register(app, *codes[1:])
    report = upload(client, GOOD).json
    missing = [r for r in expected if r["hospital_code"] == codes[0]]
    assert len(report["rejected"]) == len(missing)
    [message] = archived(app)
    register(app, codes[0])
    result = cli("ingest", "replay", "--failed")
    assert result.exit_code == 0, result.output
    assert client.get("/fhir/Condition").json["total"] == len(expected)
    assert archived(app)[0].outcome == "replayed"


def test_client_bound_to_a_hospital_may_send_only_its_rows(app):
    expected = rows_of(GOOD)
    codes = sorted({r["hospital_code"] for r in expected})
    register(app, *codes[1:])
    register(app, codes[0], client_id="lab-a")
    report = upload(authorized(app, client_id="lab-a"), GOOD).json
    assert report["accepted"] == sum(1 for r in expected if r["hospital_code"] == codes[0])


def test_cli_ingests_csv_and_hl7_files(app, client, cli, tmp_path):
    register(app, *{r["hospital_code"] for r in rows_of(GOOD)})
    hl7 = DATA / "hl7v2" / "ms_oru_r01_rmgead.hl7"
    text = hl7.read_bytes().decode()
    fs = text[3]
    msh = text.split("\r")[0].split(fs)
    register(app, msh[3].split("^")[0] or msh[2].split("^")[0])
    result = cli("ingest", str(GOOD), str(hl7))
    assert result.exit_code == 0, result.output
    assert f"{len(rows_of(GOOD))} CSV rows stored" in result.output and "1 HL7 AA" in result.output
    assert client.get("/fhir/Condition").json["total"] == len(rows_of(GOOD))
    bad = cli("ingest", str(BAD))
    assert bad.exit_code == 1 and "row 2" in bad.output
    assert {r.transport for r in archived(app)} == {"cli"}


def test_cases_of_one_patient_in_one_file_make_one_patient(app, client, tmp_path):
    rows = rows_of(GOOD)
    register(app, *{r["hospital_code"] for r in rows})
    header = list(rows[0])
    first = dict(rows[0])
    second = {**first, "case_id": first["case_id"] + "-B", "condition_code": "A91"}
    path = tmp_path / "two-cases.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows([first, second])
    report = upload(client, path).json
    assert report["accepted"] == 2
    patients = client.get(f"/fhir/Patient?identifier=urn:healthhub:id:national|{first['national_id']}").json
    assert patients["total"] == 1
    pid = patients["entry"][0]["resource"]["id"]
    found = client.get(f"/fhir/Condition?subject=Patient/{pid}").json
    assert found.get("total") == 2, found


def test_a_person_two_hospitals_sent_still_gets_case_reports(app, client, tmp_path):
    """One Patient per hospital, linked by the MPI: a national id then matches several records,
    and a conditional create on it alone was refused (412: more than one match). A hospital's
    case report is written under its own record — its MRN, or without one, the record its
    earlier reports made — and the new record joins the person."""
    rows = rows_of(GOOD)
    first = dict(next(r for r in rows if r["national_id"] and r["mrn"]))
    register(app, first["hospital_code"])
    national = first["national_id"]
    for hospital in ("HOSP-A", "HOSP-B"):  # the person's records at two other hospitals
        r = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": f"urn:healthhub:sender:{hospital}:mrn", "value": f"{hospital}-1"},
            {"system": "urn:healthhub:id:national", "value": national}]})
        assert r.status_code == 201, r.json
    others = {e["resource"]["id"] for e in client.get(
        f"/fhir/Patient?identifier=urn:healthhub:id:national|{national}").json["entry"]}
    assert len(others) == 2
    with_mrn = {**first, "case_id": first["case_id"] + "-M"}
    without_mrn = {**first, "case_id": first["case_id"] + "-N", "mrn": ""}
    path = tmp_path / "cases.csv"
    for row in (with_mrn, without_mrn):
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, list(first))
            writer.writeheader()
            writer.writerow(row)
        for _ in range(2):  # sent twice: the second time nothing new
            report = upload(client, path).json
            assert report["accepted"] == 1 and report["rejected"] == [], report
    patients = client.get(f"/fhir/Patient?identifier=urn:healthhub:id:national|{national}").json
    ids = {e["resource"]["id"] for e in patients["entry"]}
    assert len(ids) == 4  # the two hospitals' records, this hospital's by MRN, and its MRN-less one
    mine = ids - others
    subjects = {e["resource"]["subject"]["reference"].removeprefix("Patient/")
                for e in client.get(f"/fhir/Condition?identifier={first['case_id']}-M,{first['case_id']}-N").json["entry"]}
    assert subjects == mine
    # all four are one person: $everything of any of them has both cases
    everything = client.get(f"/fhir/Patient/{sorted(others)[0]}/$everything").json
    assert {e["resource"]["id"] for e in everything["entry"] if e["resource"]["resourceType"] == "Patient"} == ids
    assert sum(e["resource"]["resourceType"] == "Condition" for e in everything["entry"]) == 2


def test_rows_the_store_refuses_fail_alone(app):
    """A client that may not write Observations: the rows with a lab test are refused (403 on
    their Observation), the rows without one are stored."""
    rows = rows_of(GOOD)
    register(app, *{r["hospital_code"] for r in rows})
    narrow = authorized(app, "system/Patient.cruds system/Condition.cruds system/Provenance.c", client_id="no-labs")
    report = upload(narrow, GOOD).json
    with_tests = [i for i, r in enumerate(rows, 1) if r["test_code"]]
    assert sorted(r["row"] for r in report["rejected"]) == with_tests
    assert report["accepted"] == len(rows) - len(with_tests)
    assert all("Observation" in " ".join(r["errors"]["_row"]) for r in report["rejected"])
