"""HL7 v2 adapter: ER7 bytes in; a FHIR transaction Bundle, located issues and the ACK out.

Versions 2.3 to 2.8.2; ADT^A01 A03 A04 A05 A08 A11 A13 A28 A31 A40, ORU^R01 and VXU^V04.
Parsing is python-hl7's (``hl7.parse`` and its ``unescape``); mapping follows the HL7 v2-to-FHIR
IG (https://build.fhir.org/ig/HL7/v2-to-fhir/) in :mod:`healthhub.ingest.v2`.

Leniency, decided once here:

* Bytes are UTF-8 (a BOM is dropped), else the character set MSH-18 names; anything else is
  rejected (AR). Segments may end in CR, LF or CRLF; blank lines and whitespace around
  segments are ignored; MLLP framing characters left around a message are dropped.
* A BHS/FHS batch holding one message is that message. A batch (or file) of several messages
  is rejected as a whole, with a text saying so: :func:`split_messages` cuts one into single
  messages for callers that read files.
* Unknown segments (Z-segments included) are skipped; a segment whose id is not three
  upper-case letters or digits is an error (AE): something was lost on the way.
"""
from __future__ import annotations

import codecs
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import hl7

from healthhub.ingest.normalize import SenderProfile
from healthhub.ingest.v2.mapping import to_fhir as _map
from healthhub.ingest.v2.model import (
    DEFAULT_ENCODING_CHARACTERS,
    TABLE_0357,
    Located,
    Mapped,
    Merge,
    MessageHeader,
    ParsedMessage,
    Rejected,
    Seg,
    make_unescaper,
)

__all__ = ["SUPPORTED", "Located", "Mapped", "Merge", "MessageHeader", "ParsedMessage", "Rejected", "Seg", "ack",
           "parse", "read_header", "split_messages", "supported", "supported_version", "to_fhir"]

log = logging.getLogger("healthhub.hl7v2")

#: Message types (MSH-9.1 ^ MSH-9.2) the adapter maps.
SUPPORTED = frozenset({f"ADT^{t}" for t in ("A01", "A03", "A04", "A05", "A08", "A11", "A13", "A28", "A31", "A40")}
                      | {"ORU^R01", "VXU^V04"})
_TYPES = frozenset(t.partition("^")[0] for t in SUPPORTED)
# 2.3, 2.3.1, 2.3.z (a state profile of 2.3), 2.4, 2.5, 2.5.1, 2.6, 2.7, 2.7.1, 2.8, 2.8.1, 2.8.2
_VERSION = re.compile(r"^2\.([3-8])(?:\.([0-9A-Za-z]+))?$")
_BOM = b"\xef\xbb\xbf"
_ENVELOPE = ("FHS", "FTS", "BHS", "BTS")
# MSH-18 (HL7 table 0211) → Python codec; other names are tried as codec names.
_CHARSETS = {"ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "UTF-8": "utf-8",
             "ISO IR6": "ascii", "ISO IR100": "iso8859-1", "ISO IR101": "iso8859-2", "ISO IR144": "iso8859-5",
             "ISO IR127": "iso8859-6", "ISO IR126": "iso8859-7", "ISO IR138": "iso8859-8", "ISO IR148": "iso8859-9",
             "GB 18030-2000": "gb18030", "BIG-5": "big5", "KS X 1001": "euc_kr", "ISO IR87": "iso2022_jp",
             "CNS 11643-1992": "euc_tw"}
_8859 = re.compile(r"^8859/(\d{1,2})$")


def supported(message_type: str) -> bool:
    """True when the adapter maps this message type (``ADT^A01``; a third component is ignored)."""
    parts = [p.strip() for p in (message_type or "").split("^")]
    return len(parts) >= 2 and f"{parts[0]}^{parts[1]}" in SUPPORTED


def supported_version(version: str) -> bool:
    """True for HL7 v2.3 up to v2.8.2."""
    m = _VERSION.match(version.strip())
    if not m:
        return False
    return not (m[1] == "8" and m[2] is not None and (not m[2].isdigit() or int(m[2]) > 2))


# --------------------------------------------------------------------------- bytes → segments

def _codec(name: str) -> str | None:
    name = name.strip().upper()
    if not name:
        return None
    m = _8859.match(name)
    if m:
        return f"iso8859-{int(m[1])}"
    if name in _CHARSETS:
        return _CHARSETS[name]
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _declared_charset(data: bytes) -> str | None:
    """MSH-18 read from the raw bytes (its value is ASCII in every character set HL7 allows)."""
    text = data.decode("latin-1")
    start = text.find("MSH")
    if start < 0 or len(text) < start + 8:
        return None
    line = re.split(r"[\r\n]", text[start:], maxsplit=1)[0]
    if len(line) < 8:
        return None
    fs = line[3]
    fields = line.split(fs)
    if len(fields) < 18:
        return None
    enc = fields[1]
    first = fields[17]
    for sep in enc[:2]:  # component and repetition separators
        first = first.split(sep, 1)[0]
    return _codec(first)


def _decode(data: bytes) -> tuple[str, str]:
    """The message as text, and the codec used: UTF-8, else MSH-18's character set."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        bad = exc
    charset = _declared_charset(data)
    if charset is not None and charset != "utf-8":
        try:
            return data.decode(charset), charset
        except (UnicodeError, LookupError, ValueError):  # LookupError: a bytes-to-bytes codec ("hex")
            pass
    header = _lenient_header(data.decode("latin-1"))
    raise Rejected("102", f"The message is not valid UTF-8 (byte {bad.start}) and MSH-18 names no character set "
                          "it can be read in", header, field=18)


def _lines(text: str) -> list[str]:
    """Segments: CR, LF or CRLF terminated, trimmed, blank ones dropped, MLLP bytes removed."""
    text = text.strip("\x0b\x1c\x00 \t\r\n\ufeff")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [line.strip(" \t\x0b\x1c\x00") for line in text.split("\r") if line.strip(" \t\x0b\x1c\x00")]


def _messages(lines: list[str]) -> list[list[str]]:
    """The messages of a message, batch or file: each MSH starts one; envelopes are dropped."""
    messages: list[list[str]] = []
    for line in lines:
        tag = line[:3]
        if tag in _ENVELOPE:
            continue
        if tag == "MSH" or not messages:
            messages.append([line])
        else:
            messages[-1].append(line)
    return messages


# --------------------------------------------------------------------------- MSH

def _valid_separators(fs: str, enc: str) -> bool:
    # HL7 v2.5 §2.5.4: four encoding characters (a fifth, truncation, since v2.7), all distinct.
    chars = fs + enc
    return (4 <= len(enc) <= 5 and len(set(chars)) == len(chars)
            and not any(c.isalnum() or c.isspace() for c in chars))


def _split_header(line: str) -> tuple[MessageHeader, bool]:
    """MSH as a header (best effort) and whether its separators are valid."""
    fs = line[3] if len(line) > 3 else "|"
    end = line.find(fs, 4)
    enc = line[4:end] if end > 0 else line[4:]
    valid = _valid_separators(fs, enc)
    if not valid:
        enc = DEFAULT_ENCODING_CHARACTERS
        if fs.isalnum() or fs.isspace() or fs in enc:
            fs = "|"
    fields = line.split(fs)

    def msh(n: int) -> str:
        return fields[n - 1].strip() if len(fields) >= n else ""

    comp = enc[0]
    type_parts = [p.strip() for p in msh(9).split(comp)]
    message_type = "^".join(p for p in type_parts[:2]) if type_parts[0] else ""
    header = MessageHeader(
        sending_application=msh(3), sending_facility=msh(4),
        receiving_application=msh(5), receiving_facility=msh(6),
        control_id=msh(10), message_type=message_type, version=msh(12).split(comp, 1)[0].strip(),
        processing_id=msh(11), field_separator=fs, encoding_characters=enc,
    )
    return header, valid


def _lenient_header(text: str) -> MessageHeader | None:
    """The first MSH segment read as well as it can be, to address the ACK of a rejection."""
    line = next((x.strip() for x in re.split(r"[\r\n]", text) if x.strip().startswith("MSH")), None)
    return _split_header(line)[0] if line else None


def _check_header(line: str) -> MessageHeader:
    header, valid = _split_header(line)
    if not valid:
        raise Rejected("102", "MSH-1/MSH-2: the field separator and the four encoding characters must be distinct "
                              "punctuation characters (like |^~\\&)", header, field=2)
    missing = [f"MSH-{n}" for n, value in ((9, header.message_type), (10, header.control_id), (12, header.version))
               if not value]
    if missing:
        names = {"MSH-9": "message type", "MSH-10": "message control id", "MSH-12": "version id"}
        raise Rejected("101", "Required " + ", ".join(f"{m} ({names[m]})" for m in missing) + " missing", header,
                       field=int(missing[0][4:]))
    if not supported_version(header.version):
        raise Rejected("203", f"HL7 version {header.version!r} is not supported (2.3 to 2.8.2 are)", header,
                       field=12)
    mtype, _, trigger = header.message_type.partition("^")
    if mtype not in _TYPES:
        raise Rejected("200", f"Message type {mtype!r} is not supported (ADT, ORU^R01 and VXU^V04 are)", header,
                       field=9)
    if not supported(header.message_type):
        raise Rejected("201", f"Event {trigger or '(none)'!r} of {mtype} is not supported "
                              f"({', '.join(sorted(t for t in SUPPORTED if t.startswith(mtype)))} are)",
                       header, field=9)
    return header


def _message_lines(data: bytes) -> tuple[list[list[str]], str]:
    if not data or not data.strip():
        raise Rejected("100", "The message is empty")
    text, charset = _decode(data)
    lines = _lines(text)
    if not lines:
        raise Rejected("100", "The message is empty")
    messages = _messages(lines)
    if not messages:  # only batch/file envelope segments: an IndexError here was a 500 (test_hostile_input)
        envelopes = ", ".join(dict.fromkeys(line[:3] for line in lines))
        raise Rejected("100", f"The batch holds no message, only {envelopes} envelope segments", segment=lines[0][:3])
    first = messages[0][0]
    if not first.startswith("MSH"):
        what = "a batch" if lines[0][:3] in _ENVELOPE else "the message"
        raise Rejected("100", f"The first segment of {what} is {first[:3]!r}, not MSH", _lenient_header(text),
                       segment=first[:3] if re.fullmatch(r"[A-Z][A-Z0-9]{2}", first[:3]) else "MSH")
    return messages, charset


def read_header(data: bytes) -> MessageHeader:
    """Read and check MSH: separators, required fields, version and message type."""
    messages, _ = _message_lines(data)
    header = _check_header(messages[0][0])
    if b"\x00" in data:
        # ER7 is text: a NUL byte is corruption (and PostgreSQL cannot store one in text).
        raise Rejected("102", "The message holds NUL (0x00) bytes, which HL7 v2 text cannot contain",
                       None if "\x00" in messages[0][0] else header)
    return header


def parse(data: bytes) -> ParsedMessage:
    """Decode and parse one message (python-hl7), or raise :class:`Rejected`."""
    messages, charset = _message_lines(data)
    header = _check_header(messages[0][0])
    if len(messages) > 1:
        raise Rejected("100", f"{len(messages)} messages arrived together (a batch or file); send one message at a "
                              "time", header)
    text = "\r".join(messages[0])
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted errors on text it cannot split
        raise Rejected("102", f"The message cannot be parsed: {exc}", header) from None
    unescape = make_unescaper(message, charset)
    component = header.encoding_characters[0]
    counts: dict[str, int] = {}
    segments = []
    for index, raw in enumerate(message):
        seg_id = str(raw[0][0]) if len(raw) and len(raw[0]) else ""
        counts[seg_id] = counts.get(seg_id, 0) + 1
        segments.append(Seg(raw, counts[seg_id], index, unescape, component))
    return ParsedMessage(header=header, message=message, charset=charset, segments=segments,
                         has_replacement_character="\ufffd" in text)


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a batch or file (BHS/FHS envelopes dropped), each as UTF-8 ER7 bytes with
    CR separators; segments before the first MSH come back as one more "message", so that
    :func:`parse` rejects them rather than they being lost."""
    if not data or not data.strip():
        return []
    text, _ = _decode(data)
    return [("\r".join(m) + "\r").encode() for m in _messages(_lines(text))]


def to_fhir(message: ParsedMessage, sender: SenderProfile) -> Mapped:
    """Map a parsed message to a transaction Bundle, located issues and normalization notes.

    A failure of the mapping itself (a bug, not bad data) is logged and raised as
    :class:`Rejected` 207, so the sender gets an AR rather than a dropped connection.
    """
    try:
        return _map(message, sender)
    except Rejected:
        raise
    except Exception as exc:
        log.exception("HL7 v2 mapping failed for message %r", message.header.control_id)
        raise Rejected("207", f"Application internal error while mapping the message: {type(exc).__name__}",
                       message.header) from exc


# --------------------------------------------------------------------------- ACK

def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) if len(numbers) >= 2 else (2, 5)


def _escaper(fs: str, enc: str) -> dict[int, str]:
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    # HL7 v2.5 §2.7.4: delimiters inside a value are escaped; a line break would end the segment.
    return {ord(esc): f"{esc}E{esc}", ord(fs): f"{esc}F{esc}", ord(comp): f"{esc}S{esc}",
            ord(rep): f"{esc}R{esc}", ord(sub): f"{esc}T{esc}", ord("\r"): " ", ord("\n"): " "}


def ack(header: MessageHeader | None, code: str, issues: Sequence[Located] = (), text: str | None = None, *,
        control_id: str | None = None, now: datetime | None = None) -> bytes:
    """The ACK (original acknowledgment mode, HL7 v2.5 §2.9.2) answering a message.

    Same separators and version as the message; one ERR per issue: ERR-2/3/4/8 from v2.5 on,
    ERR-1 (ELD) before. ``header`` None (the bytes were not HL7) gives a minimal v2.5 ACK.
    An AE/AR with a ``text`` and no issues gets one ERR (207) carrying the text.
    """
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise ValueError(f"{code!r} is not an acknowledgment code (HL7 table 0008)")
    fs = header.field_separator if header else "|"
    enc = header.encoding_characters if header else DEFAULT_ENCODING_CHARACTERS
    table = _escaper(fs, enc)

    def escape(value: str) -> str:
        return value.translate(table)

    comp = enc[0]
    version = (header.version if header else "") or "2.5"
    numeric = _version_tuple(version)
    trigger = header.trigger if header else ""
    # MSH-3 … MSH-12; the original's fields are echoed as sent (same separators, already escaped).
    fields = [
        (header.receiving_application if header else "") or "HEALTHHUB",
        header.receiving_facility if header else "",
        header.sending_application if header else "",
        header.sending_facility if header else "",
        (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z"),
        "",
        comp.join(["ACK", escape(trigger), "ACK"]) if trigger else "ACK",
        escape(control_id or f"HH{uuid.uuid4().hex[:18].upper()}"),
        (header.processing_id if header else "") or "P",
        version,
    ]
    issues = list(issues)
    if not issues and text and code in ("AE", "AR", "CE", "CR"):
        issues = [Located(severity="E", segment="MSH", sequence=1, field=None, code="207", text=text)]
    elif not issues and text and numeric >= (2, 7):
        # An accept's note ("duplicate of a message already stored") had no place from v2.7 on,
        # where MSA-3 is withdrawn: it goes in an informational ERR (code 0 "Message accepted",
        # severity I; HL7 v2.8 §2.14.5), so a sender of any version sees it.
        issues = [Located(severity="I", segment="MSH", sequence=1, field=None, code="0", text=text)]
    msa = ["MSA", code, header.control_id if header else ""]
    message = text or (issues[0].text if issues else "")
    if numeric < (2, 7) and message:  # MSA-3 (text message) was withdrawn in v2.7
        msa.append(escape(message))
    segments = ["MSH" + fs + enc + fs + fs.join(fields), fs.join(msa)]
    segments += [fs.join(_err(issue, numeric, enc, escape)) for issue in issues]
    return ("\r".join(segments) + "\r").encode("utf-8")


def _err(issue: Located, version: tuple[int, ...], enc: str, escape: Callable[[str], str]) -> list[str]:
    comp, sub = enc[0], enc[3]
    code = issue.code if issue.code in TABLE_0357 else "207"
    field = "" if issue.field is None else str(issue.field)
    if version < (2, 5):
        # ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&HL70357 (v2.4 §2.16.5)
        eld = comp.join([escape(issue.segment), str(issue.sequence), field,
                         sub.join([code, escape(issue.text), "HL70357"])])
        return ["ERR", eld]
    location = [escape(issue.segment), str(issue.sequence)]
    if issue.field is not None:
        location += [field, "1"] + ([str(issue.component)] if issue.component else [])
    cwe = comp.join([code, escape(TABLE_0357[code]), "HL70357"])
    severity = issue.severity if issue.severity in ("E", "W", "I") else "E"
    # ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 user message (v2.5 §2.15.5)
    return ["ERR", "", comp.join(location), cwe, severity, "", "", "", escape(issue.text)]
