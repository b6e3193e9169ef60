"""healthhub.ingest.hl7v2 on the wire: decoding, rejection (AR), errors (AE), the ACK, and
fuzzing: nothing but :class:`Rejected` ever escapes."""
from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthhub import resources
from healthhub.ingest import hl7v2

from .test_hl7v2 import DATA, MALFORMED, SAMPLES, SENDER, message, of_type

ADT = ("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||{type}|CTRL1|P|{version}",
       "EVN|A01|20240101120000",
       "PID|1||MRN1^^^HOSP^MR||DOE^JANE||19800101|F")


def adt(mtype: str = "ADT^A01", version: str = "2.5", *extra: str) -> bytes:
    return message(ADT[0].format(type=mtype, version=version), *ADT[1:], *extra)


def raw_control_id(data: bytes) -> str:
    """MSH-10 read by hand: the field separator is the byte after "MSH"."""
    text = data.decode("latin-1")
    start = text.index("MSH")
    fs = text[start + 3]
    line = text[start:].replace("\n", "\r").split("\r")[0]
    fields = line.split(fs)
    return fields[9].strip() if len(fields) > 9 else ""


def parse_ack(data: bytes) -> hl7.Message:
    assert data.endswith(b"\r") and b"\n" not in data
    return hl7.parse(data.decode("utf-8"))


def outcome(data: bytes) -> tuple[str, hl7v2.MessageHeader | None, list[hl7v2.Located]]:
    """What the pipeline would answer: AR (rejected), AE (errors) or AA, with the ACK's inputs."""
    try:
        parsed = hl7v2.parse(data)
    except hl7v2.Rejected as exc:
        return "AR", exc.header, [exc.issue]
    mapped = hl7v2.to_fhir(parsed, SENDER)
    for entry in mapped.bundle["entry"]:
        resources.validate(entry["resource"])
    return ("AE" if mapped.errors else "AA"), mapped.header, mapped.issues


# --------------------------------------------------------------------------- malformed files

# file → (ACK code, table 0357 code of the first error, MSH-10 readable?)
EXPECTED = {
    "cdcdex_oru_case_bad_delimiters.hl7": ("AR", "102", True),  # MSH-2 "&&&&"
    "cdciis_vxu_unknown_segment_and_mojibake.hl7": ("AE", "100", True),  # segment "WHOOPS"
    "cdcti_msh_missing_msh2_encoding_chars.hl7": ("AR", "102", True),  # MSH-2 empty
    "hl7apy_duplicate_encoding_chars.hl7": ("AR", "102", True),  # MSH-2 "^&&^"
    "hl7apy_first_segment_is_pid_not_msh.hl7": ("AR", "100", False),
    "hl7apy_missing_msh9_message_type.hl7": ("AR", "101", True),
    "lfh_adt_double_escaped_msh2_literal_backslash_r.hl7": ("AR", "102", True),  # MSH-2 "^~\\&"
    # BOM + LF separators: both accepted by design, so this one is mapped like its CR twin.
    "ms_adt_a04_bom_and_lf_separators.hl7": ("AA", None, True),
    "node_adt_segments_joined_by_spaces.hl7": ("AE", "100", True),  # one line: no PID segment
    "pyhl7_bhs_batch_without_msh.hl7": ("AR", "100", False),
    "pyhl7_cp1252_byte_truncated.hl7": ("AR", "102", False),  # not UTF-8, no MSH-18
    "pyhl7_nonstandard_delimiters_truncated.hl7": ("AR", "101", False),  # no MSH-9/10/12
    "pyhl7_oru_invalid_dob_and_value_type.hl7": ("AE", "102", True),  # PID-7 and OBX-2 "FN"
}


def test_every_malformed_file_has_an_expectation():
    assert sorted(EXPECTED) == sorted(p.name for p in MALFORMED)


@pytest.mark.parametrize("path", MALFORMED, ids=[p.name for p in MALFORMED])
def test_malformed_file_gives_ar_or_ae_and_a_parseable_ack(path):
    data = path.read_bytes()
    want_code, want_error, readable = EXPECTED[path.name]
    code, header, issues = outcome(data)
    assert code == want_code
    errors = [i for i in issues if i.severity == "E"]
    if want_error is None:
        assert not errors
    else:
        assert errors[0].code == want_error
    reply = parse_ack(hl7v2.ack(header, code, issues))
    assert str(reply.segment("MSA")[1]) == code
    assert str(reply.segment("MSA")[2]) == (raw_control_id(data) if readable else "")
    assert len([s for s in reply if str(s[0]) == "ERR"]) == len(issues)
    assert code == "AA" or issues


def test_bom_and_lf_twin_maps_like_the_clean_file():
    lenient = hl7v2.to_fhir(hl7v2.parse((DATA / "malformed" / "ms_adt_a04_bom_and_lf_separators.hl7").read_bytes()),
                            SENDER)
    clean = hl7v2.to_fhir(hl7v2.parse((DATA / "ms_adt04_251.hl7").read_bytes()), SENDER)
    assert [e["resource"] for e in lenient.bundle["entry"]][0] == [e["resource"] for e in clean.bundle["entry"]][0]
    assert [e["request"] for e in lenient.bundle["entry"]] == [e["request"] for e in clean.bundle["entry"]]


def test_header_of_a_rejected_message_keeps_its_separators():
    with pytest.raises(hl7v2.Rejected) as caught:
        hl7v2.parse((DATA / "malformed" / "pyhl7_nonstandard_delimiters_truncated.hl7").read_bytes())
    header = caught.value.header
    assert header is not None and (header.field_separator, header.encoding_characters) == ("$", "%~\\&")
    assert header.sending_application == "GHH LAB"
    ack = hl7v2.ack(header, "AR", [caught.value.issue]).decode()
    assert ack.startswith("MSH$%~\\&$") and "\rMSA$AR$" in ack


# --------------------------------------------------------------------------- rejection

@pytest.mark.parametrize(("mtype", "code"), [("SIU^S12", "200"), ("ACK^A01", "200"), ("ORM^O01", "200"),
                                             ("ADT^A99", "201"), ("ORU^R30", "201"), ("ADT", "201")])
def test_unsupported_message_type(mtype, code):
    with pytest.raises(hl7v2.Rejected) as caught:
        hl7v2.parse(adt(mtype))
    assert caught.value.code == code and caught.value.header.control_id == "CTRL1"
    assert not hl7v2.supported(mtype)


@pytest.mark.parametrize("version", ["2.1", "2.2", "3.0", "2.9", "2.8.3", "banana"])
def test_unsupported_version(version):
    with pytest.raises(hl7v2.Rejected) as caught:
        hl7v2.parse(adt(version=version))
    assert caught.value.code == "203"
    reply = parse_ack(hl7v2.ack(caught.value.header, "AR", [caught.value.issue]))
    assert str(reply.segment("MSA")[2]) == "CTRL1"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.3.z", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8",
                                     "2.8.1", "2.8.2"])
def test_supported_versions(version):
    assert hl7v2.parse(adt(version=version)).header.version == version


@pytest.mark.parametrize("data", [b"", b"   \r\n", b"\x00\x01\x02garbage\xff\xfe", b"hello world",
                                  b"\x0b\x1c\r", "MSH|^~\\&|é".encode("latin-1")])
def test_garbage_is_rejected(data):
    with pytest.raises(hl7v2.Rejected) as caught:
        hl7v2.parse(data)
    reply = parse_ack(hl7v2.ack(caught.value.header, "AR", [caught.value.issue]))
    assert str(reply.segment("MSA")[1]) == "AR" and str(reply.segment("MSH")(12)) == "2.5"


def test_supported():
    assert hl7v2.supported("ADT^A01") and hl7v2.supported("ADT^A04^ADT_A01") and hl7v2.supported("VXU^V04^VXU_V04")
    assert hl7v2.supported("ADT^A40") and hl7v2.supported("ORU^R01")
    assert not hl7v2.supported("ADT") and not hl7v2.supported("") and not hl7v2.supported("SIU^S12")


def test_read_header():
    header = hl7v2.read_header((DATA / "ms_adt_a01_01.hl7").read_bytes())
    assert (header.message_type, header.control_id, header.version, header.processing_id) == (
        "ADT^A01", "MSG00001", "2.8", "P")
    assert header.sending_facility == "GHHSFacility^2.16.840.1.122848.1.30^ISO"
    assert header.sending_facility_id == "GHHSFacility"
    with pytest.raises(hl7v2.Rejected):
        hl7v2.read_header(b"PID|1||x")


# --------------------------------------------------------------------------- decoding and batches

def test_latin1_with_msh18_is_decoded_and_without_is_rejected():
    text = ("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||ADT^A08|C1|P|2.5||||||8859/1\r"
            "PID|1||MRN1^^^HOSP^MR||MÜLLER^JOSÉ\r")
    patient = of_type(hl7v2.to_fhir(hl7v2.parse(text.encode("latin-1")), SENDER), "Patient")[0]
    assert patient["name"][0] == {"family": "Müller", "given": ["José"]}
    with pytest.raises(hl7v2.Rejected) as caught:
        hl7v2.parse(text.replace("8859/1", "").encode("latin-1"))
    assert caught.value.code == "102" and caught.value.header.control_id == "C1"


def test_segment_separators_and_bom():
    crlf = adt().replace(b"\r", b"\r\n")
    lf = b"\xef\xbb\xbf" + adt().replace(b"\r", b"\n")
    for data in (crlf, lf, b"\x0b" + adt() + b"\x1c\r"):
        assert [s.id for s in hl7v2.parse(data).segments] == ["MSH", "EVN", "PID"]


def test_single_message_batch_and_multi_message_batch():
    parsed = hl7v2.parse((DATA / "pyhl7_adt_a04_v25_bhs_batch.hl7").read_bytes())
    assert parsed.header.control_id == "12334456778890"
    two = b"BHS|^~\\&|APP\r" + adt() + adt().replace(b"CTRL1", b"CTRL2") + b"BTS|2\r"
    with pytest.raises(hl7v2.Rejected) as caught:
        hl7v2.parse(two)
    assert caught.value.code == "100" and "2 messages" in caught.value.text
    parts = hl7v2.split_messages(two)
    assert [hl7v2.parse(p).header.control_id for p in parts] == ["CTRL1", "CTRL2"]


def test_z_segments_are_ignored():
    parsed = hl7v2.parse(adt("ADT^A01", "2.5", "ZPI|1|custom^stuff|more", "PV1|1|I|||||||||||||||||V1"))
    mapped = hl7v2.to_fhir(parsed, SENDER)
    assert not mapped.issues and [e["resource"]["resourceType"] for e in mapped.bundle["entry"]] == [
        "Patient", "Encounter"]


def test_twenty_megabyte_value():
    big = ("x" * 999 + "\\T\\") * 20_000  # 20 MB of text with escapes all through it
    data = message("MSH|^~\\&|LAB|HOSP|HH|HH|20240101120000||ORU^R01|BIG1|P|2.5.1",
                   "PID|1||MRN1^^^HOSP^MR||DOE^JANE",
                   "OBR|1||F1^LAB|11526-1^Pathology study^LN",
                   f"OBX|1|TX|11526-1^Pathology study^LN||{big}||||||F",
                   f"OBX|2|NM|1234-5^Test^LN||{'9' * 1000}x|mg/dL|||||F")
    mapped = hl7v2.to_fhir(hl7v2.parse(data), SENDER)
    text = of_type(mapped, "Observation")[0]["valueString"]
    assert len(text) == 1000 * 20_000 and text.count("&") == 20_000
    assert [(i.segment, i.sequence, i.field) for i in mapped.issues] == [("OBX", 2, 5)]
    assert len(mapped.issues[0].text) <= 300
    assert b"ERR" in hl7v2.ack(mapped.header, "AA", mapped.issues)


# --------------------------------------------------------------------------- the ACK

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_ack_v25_uses_err_2_3_4_and_8():
    header = hl7v2.read_header(adt(version="2.5.1"))
    issue = hl7v2.Located(severity="E", segment="PID", sequence=1, field=7, code="102",
                          text="bad date | with ^ delimiters & more ~ and \\ too")
    reply = parse_ack(hl7v2.ack(header, "AE", [issue], control_id="ACK1", now=NOW))
    msh = reply.segment("MSH")
    assert [str(msh(n)) for n in (3, 4, 5, 6, 7, 9, 10, 11, 12)] == [
        "HH", "HH", "APP", "HOSP", "20240506070809+0000", "ACK^A01^ACK", "ACK1", "P", "2.5.1"]
    msa = reply.segment("MSA")
    assert [str(msa(1)), str(msa(2)), reply.unescape(str(msa(3)))] == ["AE", "CTRL1", issue.text]
    err = reply.segment("ERR")
    assert str(err(2)) == "PID^1^7^1"
    assert str(err(3)) == "102^Data type error^HL70357"
    assert str(err(4)) == "E"
    assert reply.unescape(str(err(8))) == issue.text
    assert str(err(1)) == ""


def test_ack_v23_uses_err_1():
    header = hl7v2.read_header(adt(version="2.3"))
    issue = hl7v2.Located(severity="E", segment="OBX", sequence=2, field=5, code="102", text="not a number")
    raw = hl7v2.ack(header, "AE", [issue], now=NOW).decode()
    err = [s for s in raw.split("\r") if s.startswith("ERR")]
    assert err == ["ERR|OBX^2^5^102&not a number&HL70357"]
    msa = [s for s in raw.split("\r") if s.startswith("MSA")][0]
    assert msa == "MSA|AE|CTRL1|not a number"


def test_ack_v28_has_no_msa_3():
    header = hl7v2.read_header(adt(version="2.8"))
    raw = hl7v2.ack(header, "AR", text="rejected").decode()
    assert [s for s in raw.split("\r") if s.startswith("MSA")] == ["MSA|AR|CTRL1"]
    assert "rejected" in [s for s in raw.split("\r") if s.startswith("ERR")][0]


def test_ack_v28_accept_with_a_note_carries_it_in_an_informational_err():
    """MSA-3 is gone from v2.7 on: an AA's note (a duplicate) is an ERR of severity I, code 0."""
    header = hl7v2.read_header(adt(version="2.8"))
    reply = parse_ack(hl7v2.ack(header, "AA", text="Duplicate of a message already stored (archive 7)", now=NOW))
    msa = reply.segment("MSA")
    assert [str(msa(1)), str(msa(2))] == ["AA", "CTRL1"]
    err = reply.segment("ERR")
    assert [str(err(3)), str(err(4))] == ["0^Message accepted^HL70357", "I"]
    assert reply.unescape(str(err(8))) == "Duplicate of a message already stored (archive 7)"
    older = hl7v2.ack(hl7v2.read_header(adt(version="2.5.1")), "AA", text="Duplicate", now=NOW).decode()
    assert "MSA|AA|CTRL1|Duplicate" in older and "ERR" not in older  # before v2.7: MSA-3, as before


def test_ack_for_garbage_is_minimal_v25():
    raw = hl7v2.ack(None, "AR", text="not HL7", control_id="X1", now=NOW).decode()
    assert raw.split("\r")[:2] == ["MSH|^~\\&|HEALTHHUB||||20240506070809+0000||ACK|X1|P|2.5", "MSA|AR||not HL7"]
    with pytest.raises(ValueError):
        hl7v2.ack(None, "XX")


def test_ack_of_every_sample_is_aa_or_ae_and_parses():
    for path in SAMPLES:
        code, header, issues = outcome(path.read_bytes())
        reply = parse_ack(hl7v2.ack(header, code, issues))
        assert str(reply.segment("MSA")[2]) == header.control_id
        assert len([s for s in reply if str(s[0]) == "ERR"]) == len(issues)


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SEED = (DATA / "ms_lri_2.0_ng_cbc_typ_message.hl7").read_bytes()[:3000]
ALPHABET = b"|^~\\&\r\n\"\x00\xff0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .-+<>=\xc2\xb5"


def _never_crashes(data: bytes) -> None:
    try:
        parsed = hl7v2.parse(data)
    except hl7v2.Rejected as exc:
        assert exc.code != "207"
        hl7v2.ack(exc.header, "AR", [exc.issue])
        return
    try:
        mapped = hl7v2.to_fhir(parsed, SENDER)
    except hl7v2.Rejected as exc:  # 207 would be a mapping bug
        raise AssertionError(f"mapping failed: {exc.text}") from exc
    hl7v2.ack(mapped.header, "AE" if mapped.errors else "AA", mapped.issues)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    _never_crashes(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 3), st.sampled_from(ALPHABET)),
                min_size=1, max_size=12))
def test_fuzz_mutations_of_a_real_message(edits):
    data = bytearray(SEED)
    for position, action, byte in edits:
        position %= max(len(data), 1)
        if action == 0 and data:
            data[position] = byte
        elif action == 1:
            data.insert(position, byte)
        elif action == 2 and data:
            del data[position]
        else:
            data[position:position] = bytes([byte]) * 3
    _never_crashes(bytes(data))
