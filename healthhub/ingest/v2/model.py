"""Types of the HL7 v2 adapter, and a small reader over python-hl7's parse tree.

python-hl7 nests a field as text, repetitions, components and sub-components depending on
which separators the text happens to contain; :class:`Seg` and :class:`Rep` give every field
the same shape (repetitions → components → sub-components) and unescape values as they are read.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hl7
from hl7.util import unescape as _hl7_unescape

from healthhub.ingest.normalize import Note

#: HL7 table 0357 (message error condition codes), the text ERR-3.2 carries.
TABLE_0357: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

DEFAULT_ENCODING_CHARACTERS = "^~\\&"


@dataclass(frozen=True)
class MessageHeader:
    """What MSH says about a message. Field values are kept as sent (still escaped with the
    message's own separators), so an ACK can echo them byte for byte."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str  # MSH-10
    message_type: str  # "ADT^A01" (MSH-9.1 ^ MSH-9.2, whatever the message's separators)
    version: str  # MSH-12.1
    processing_id: str  # MSH-11
    field_separator: str = "|"
    encoding_characters: str = DEFAULT_ENCODING_CHARACTERS

    @property
    def trigger(self) -> str:
        """The trigger event (``A01``), empty when MSH-9 has none."""
        return self.message_type.partition("^")[2]

    @property
    def sending_facility_id(self) -> str:
        """MSH-4.1 (the facility's namespace id) unescaped, else MSH-3.1: the sender's short code."""
        for raw in (self.sending_facility, self.sending_application):
            first = raw.split(self.encoding_characters[0], 1)[0] if self.encoding_characters else raw
            if first.strip():
                return first.strip()
        return ""


@dataclass(frozen=True, kw_only=True)
class Located:
    """One problem, located in the message (it becomes an ERR segment of the ACK)."""

    severity: str  # "E": error, nothing is stored (ACK AE) | "W": warning, stored and reported
    segment: str
    sequence: int  # which occurrence of that segment (1 = the first)
    field: int | None
    component: int | None = None
    code: str  # HL7 table 0357
    text: str

    @property
    def location(self) -> str:
        """``PID-7``, ``OBX[3]-5.2``: the place as people write it."""
        where = self.segment + (f"[{self.sequence}]" if self.sequence > 1 else "")
        if self.field is not None:
            where += f"-{self.field}" + (f".{self.component}" if self.component else "")
        return where


@dataclass(frozen=True)
class Merge:
    """ADT^A40: the surviving patient's identifiers (PID-3) and the retired ones (MRG-1)."""

    surviving: list[dict[str, Any]]
    retired: list[dict[str, Any]]


@dataclass
class Mapped:
    """The result of mapping one message."""

    header: MessageHeader
    bundle: dict[str, Any]  # a FHIR transaction Bundle
    issues: list[Located]  # any severity "E" → store nothing, answer AE
    notes: list[Note]  # normalization notes: reported, never blocking
    merge: Merge | None = None  # ADT^A40 only

    @property
    def errors(self) -> list[Located]:
        """The issues that stop the message from being stored."""
        return [i for i in self.issues if i.severity == "E"]


class Rejected(Exception):
    """The message cannot be processed at all: answer AR."""

    def __init__(self, code: str, text: str, header: MessageHeader | None = None, *,
                 segment: str = "MSH", field: int | None = None) -> None:
        super().__init__(text)
        self.code = code  # HL7 table 0357
        self.text = text
        self.header = header  # what could be read of MSH, to address the ACK
        self.segment = segment
        self.field = field

    @property
    def issue(self) -> Located:
        """The rejection as a located error, for the ACK's ERR segment."""
        return Located(severity="E", segment=self.segment, sequence=1, field=self.field, code=self.code,
                       text=self.text)


# --------------------------------------------------------------------------- unescaping

# Escape sequences python-hl7 handles (HL7 v2.5 §2.7): separators, highlighting, formatting.
_HL7_SEQUENCES = frozenset({"F", "S", "T", "R", "E", "H", "N", ".br", ".sp", ".fi", ".nf", ".in", ".ti", ".sk", ".ce"})
_COUNTED = re.compile(r"^\.(?:sp|sk|in|ti)[+-]?\d{1,2}$")  # ".sp3": bounded, so no "\.sp999999999\" bomb
_HEX = re.compile(r"^X(?:[0-9A-Fa-f]{2})+$")
# Text, not rich text: highlighting is dropped and line breaks are "\n" (FHIR strings allow it).
_TEXT_MAP = {"H": "", "N": "", ".br": "\n", ".sp": "\n", ".ce": "\n", ".fi": "", ".nf": "", ".in": "", ".ti": "",
             ".sk": " "}
# python-hl7's unescape walks the text one character at a time in Python: above this size the
# same table is applied to the pre-split text instead (a 20 MB report stays fast).
_LARGE = 1 << 18


def make_unescaper(message: hl7.Message, charset: str) -> Callable[[str], str]:
    """A function that unescapes one value of ``message`` (HL7 v2.5 §2.7) with python-hl7.

    Sequences python-hl7 would log and drop (empty ``\\\\``, ``\\Cxxyy\\``/``\\Mxxyyzz\\``
    character-set switches, ``\\Zxx\\`` locally defined ones, malformed ones) are dropped here
    first; ``\\Xhh…\\`` bytes are decoded with the message's character set (python-hl7 reads
    each byte as its own Latin-1 character, which breaks multi-byte UTF-8); an escape character
    with no closing one is kept as text.
    """
    esc = message.esc
    separators = message.separators
    base = {"F": separators[1], "R": separators[2], "S": separators[3], "T": separators[4], "E": esc}

    def unescape(text: str) -> str:
        if not text or esc not in text:
            return text
        parts = text.split(esc)
        tail = ""
        if len(parts) % 2 == 0:  # an unterminated sequence: the escape character was meant as text
            tail = esc + parts.pop()
        app_map = dict(_TEXT_MAP)
        literal = [parts[0]]
        sequences: list[str] = []
        for i in range(1, len(parts), 2):
            seq = parts[i]
            if seq in _HL7_SEQUENCES or _COUNTED.match(seq):
                sequences.append(seq)
                literal.append(parts[i + 1])
                continue
            if _HEX.match(seq):
                app_map[seq] = bytes.fromhex(seq[1:]).decode(charset, errors="replace")
                sequences.append(seq)
                literal.append(parts[i + 1])
                continue
            literal[-1] += parts[i + 1]  # dropped, as python-hl7 would (with a log line)
        if len(text) > _LARGE:
            out = [literal[0]]
            for seq, after in zip(sequences, literal[1:], strict=True):
                out.append(_expand(seq, app_map, base))
                out.append(after)
            return "".join(out) + tail
        rebuilt = literal[0] + "".join(esc + s + esc + a for s, a in zip(sequences, literal[1:], strict=True))
        return str(_hl7_unescape(message, rebuilt, app_map)) + tail

    return unescape


def _expand(seq: str, app_map: dict[str, str], base: dict[str, str]) -> str:
    if seq in app_map:
        return app_map[seq]
    if seq in base:
        return base[seq]
    return app_map.get(seq[:3], "") * max(int(seq[3:]), 0)


# --------------------------------------------------------------------------- reading fields

NULL = '""'  # HL7 explicit null: "delete this value" (v2.5 §2.5.3) — for us, simply absent

# A FHIR string is [ \r\n\t\S]+ (https://hl7.org/fhir/R4B/datatypes.html#string): other white
# space (NBSP, form feed, U+2028 …) becomes a space, other control characters go.
_CLEAN: dict[int, str | None] = {c: None for c in range(0x20) if chr(c) not in "\t\n\r"}
_CLEAN.update({ord(c): " " for c in "\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
               "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"})
_CLEAN[0x7F] = None


class Rep:
    """One repetition of a field: components of sub-components, kept escaped until read."""

    __slots__ = ("comps", "_unescape", "_sep")

    def __init__(self, comps: list[list[str]], unescape: Callable[[str], str], component_separator: str) -> None:
        self.comps = comps
        self._unescape = unescape
        self._sep = component_separator

    def get(self, comp: int = 1, sub: int = 1, *, strip: bool = True) -> str:
        """Component ``comp``, sub-component ``sub`` (1-based), unescaped; "" when absent or null."""
        if comp > len(self.comps):
            return ""
        subs = self.comps[comp - 1]
        if sub > len(subs):
            return ""
        raw = subs[sub - 1]
        if raw == NULL or raw.strip() == NULL:
            return ""
        value = self._unescape(raw).translate(_CLEAN)
        return value.strip() if strip else value

    def subs(self, comp: int) -> list[str]:
        """All sub-components of component ``comp``, unescaped."""
        if comp > len(self.comps):
            return []
        return [self.get(comp, i + 1) for i in range(len(self.comps[comp - 1]))]

    def text(self, *, joiner: str | None = None) -> str:
        """The whole repetition as text: components joined by the component separator (or
        ``joiner``), for text values that happen to contain one."""
        sep = self._sep if joiner is None else joiner
        parts = [self.get(i + 1, strip=False) for i in range(len(self.comps))]
        if joiner is not None:
            parts = [p.strip() for p in parts if p.strip()]
        return sep.join(parts)

    @property
    def empty(self) -> bool:
        """True when no component holds a value."""
        return not any(self.get(i + 1, j + 1) for i, c in enumerate(self.comps) for j in range(len(c)))


class Seg:
    """One segment; ``seg.get(5, 1)`` is PID-5.1 (MSH-n is MSH-n too)."""

    __slots__ = ("id", "seq", "index", "_raw", "_unescape", "_sep", "_cache")

    def __init__(self, raw: hl7.Segment, seq: int, index: int, unescape: Callable[[str], str],
                 component_separator: str) -> None:
        self._raw = raw
        self.id = str(raw[0][0]) if len(raw) and len(raw[0]) else ""
        self.seq = seq  # occurrence of this segment id in the message, 1-based
        self.index = index  # position in the message, 0-based
        self._unescape = unescape
        self._sep = component_separator
        self._cache: dict[int, list[Rep]] = {}

    def reps(self, n: int) -> list[Rep]:
        """The repetitions of field ``n`` (an empty list when the field is absent or empty)."""
        if n in self._cache:
            return self._cache[n]
        out: list[Rep] = []
        if 0 < n < len(self._raw):
            for comps in _shape(self._raw[n]):
                rep = Rep(comps, self._unescape, self._sep)
                if any(any(s for s in c) for c in comps):
                    out.append(rep)
        self._cache[n] = out
        return out

    def rep(self, n: int) -> Rep:
        """The first repetition of field ``n`` (an empty one when absent)."""
        reps = self.reps(n)
        return reps[0] if reps else Rep([], self._unescape, self._sep)

    def get(self, n: int, comp: int = 1, sub: int = 1) -> str:
        """Field ``n``, component ``comp``, sub-component ``sub`` of the first repetition."""
        return self.rep(n).get(comp, sub)

    def fields_containing(self, text: str) -> list[int]:
        """The positions of the fields whose raw text contains ``text``."""
        return [n for n in range(1, len(self._raw)) if text in str(self._raw[n])]

    def raw(self, n: int) -> str:
        """Field ``n`` as sent (still escaped)."""
        return str(self._raw[n]) if 0 < n < len(self._raw) else ""

    def __repr__(self) -> str:
        return f"<Seg {self.id}[{self.seq}]>"


def _shape(value: Any) -> list[list[list[str]]]:
    """python-hl7's variably nested field → repetitions → components → sub-components."""
    if isinstance(value, str):
        return [[[value]]]
    reps: list[list[list[str]]] = []
    for rep in value:
        if isinstance(rep, str):
            reps.append([[rep]])
            continue
        reps.append([[comp] if isinstance(comp, str) else [str(s) for s in comp] for comp in rep])
    return reps


@dataclass
class ParsedMessage:
    """One parsed HL7 v2 message: its header, python-hl7's tree and a reader per segment."""

    header: MessageHeader
    message: hl7.Message
    charset: str  # the Python codec the bytes were decoded with
    segments: list[Seg] = field(default_factory=list)
    has_replacement_character: bool = False  # U+FFFD somewhere in the text

    def first(self, segment_id: str) -> Seg | None:
        """The first segment with this id, or None."""
        return next((s for s in self.segments if s.id == segment_id), None)

    def all(self, segment_id: str) -> list[Seg]:
        """Every segment with this id, in order."""
        return [s for s in self.segments if s.id == segment_id]
