"""Index rows of a resource: what each search parameter's expression finds, as typed values.

For every search parameter of the resource's type, the FHIRPath expression of its definition is
evaluated and each value found becomes a row of the parameter's type
(https://hl7.org/fhir/R4B/search.html#ptypes):

- string: ``string``/``markdown``… as is; HumanName family, given, prefix, suffix, text; Address
  line, city, district, state, postalCode, country, text;
- token: Coding, CodeableConcept (each coding, plus its text), Identifier (with its type for
  ``:of-type``), ContactPoint (value only: its system is not a URI), code/string/id/uri, boolean;
- reference: Reference (literal reference and/or identifier), canonical/uri;
- date: date, dateTime, instant, Period, Timing (its outer limits) — each one ``[low, high]`` range;
- number, quantity (Quantity and its profiles, Money), uri, and composite parameters.

Speed: most definitions are plain paths (``Observation.code``, ``(Observation.value as
Quantity)``, ``Patient.telecom.where(system='phone')``). Those are evaluated here by walking the
dict, with the same type bookkeeping as fhirpathpy (the R4 model's path → type tables, choice
elements, ``ofType`` with inheritance); everything else falls back to fhirpathpy, compiled once.
``Indexer(registry, force_fhirpathpy=True)`` evaluates every expression with fhirpathpy: the
tests use it to prove the fast path finds the same values.

Before evaluation ``X as T`` and ``X.as(T)`` are rewritten ``(X).ofType(T)``: the search
definitions use ``as`` on collections (``Observation.component.value as Quantity``), which
fhirpathpy rejects with "expected singleton"; ``ofType`` is the filtering they mean (R5 wrote them
so). ``as(DateTime)``/``as(String)``… name FHIR primitives in the wrong case and are read as
``dateTime``/``string``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import FP_DateTime, FP_Time, ResourceNode, TypeInfo
from fhirpathpy.models import models

from .. import resources
from . import ucum, values
from .registry import Registry, SearchParam, split_union

log = logging.getLogger(__name__)

UCUM = "http://unitsofmeasure.org"
CURRENCY = "urn:iso:std:iso:4217"


# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True, slots=True)
class StringRow:
    param: str
    value: str  # values.normalize(exact)
    exact: str


@dataclass(frozen=True, slots=True)
class TokenRow:
    param: str
    system: str  # "" when absent
    code: str | None
    text: str | None  # normalized display / CodeableConcept.text / Identifier.type.text
    type_system: str | None = None  # Identifier.type.coding.system (:of-type)
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    param: str
    target_type: str | None
    target_id: str | None
    url: str | None
    ident_system: str | None = None
    ident_value: str | None = None


@dataclass(frozen=True, slots=True)
class DateRow:
    param: str
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberRow:
    param: str
    value: Decimal


@dataclass(frozen=True, slots=True)
class QuantityRow:
    param: str
    value: Decimal
    system: str | None
    code: str | None
    unit: str | None
    canonical_value: Decimal | None
    canonical_code: str | None


@dataclass(frozen=True, slots=True)
class UriRow:
    param: str
    uri: str


ComponentRow = StringRow | TokenRow | ReferenceRow | DateRow | NumberRow | QuantityRow | UriRow


@dataclass(frozen=True, slots=True)
class CompositeRow:
    param: str
    parts: tuple[ComponentRow, ...]  # one row per component, ``param`` = the component's code


Row = ComponentRow | CompositeRow

# Parameters that are not index rows: columns of the resource table, or not expressions at all.
SKIPPED_CODES = frozenset({"_id", "_lastUpdated", "_text", "_content", "_list", "_query", "_has"})

# ---------------------------------------------------------------------------------------------
# the FHIR type model (fhirpathpy's R4 tables: the only FHIRPath model it ships close to R4B)

_MODEL: dict[str, Any] = models["r4"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENT: dict[str, str] = _MODEL["type2Parent"]
_PRIMITIVES = frozenset(t for t in _PARENT if t[:1].islower()) | {"xhtml"}
_COMPLEX = frozenset(t for t in _PARENT if t[:1].isupper())

Node = tuple[Any, str | None]  # (value, type as fhirpathpy names it: "Quantity", "Observation.component", "System.String")


@cache
def _member_info(tp: str | None, key: str) -> tuple[tuple[str, str], ...]:
    """The JSON keys that ``key`` reads on an element of type ``tp`` and their types, in
    fhirpathpy's order (several for a choice element ``value[x]``: the first present wins)."""
    child = f"{tp}.{key}" if tp else f"_.{key}"
    child = _ELSEWHERE.get(child, child)
    actual = _CHOICES.get(child)
    if actual:
        return tuple((key + t, _PATH2TYPE.get(child + t, child + t)) for t in actual)
    if key == "extension":
        child = "Extension"
    return ((key, _PATH2TYPE.get(child, child)),)


@cache
def _is_type(tp: str | None, target: str) -> bool:
    """fhirpathpy's ``ofType``: the node's type or one of its ancestors is ``target``."""
    if tp is None:
        return False
    if tp.startswith("System."):
        return tp[7:] == target
    name: str | None = "BackboneElement" if "." in tp else tp
    while name:
        if name == target:
            return True
        name = _PARENT.get(name) or _PATH2TYPE.get(name)
    return False


def _children(data: Any, tp: str | None, key: str, out: list[Node]) -> None:
    if type(data) is not dict:
        return
    for field, ctp in _member_info(tp, key):
        v = data.get(field)
        if v is None:
            if "_" + field in data:
                break  # only a primitive extension: nothing to index, and fhirpathpy stops here too
            continue
        if type(v) is list:
            for x in v:
                out.append((x, x["resourceType"] if type(x) is dict and "resourceType" in x else ctp))
        else:
            out.append((v, v["resourceType"] if type(v) is dict and "resourceType" in v else ctp))
        break


# ---------------------------------------------------------------------------------------------
# expressions: rewriting, the fast path, the fhirpathpy fallback

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_AS_CALL = re.compile(r"\.as\(\s*(" + _IDENT + r")\s*\)")
_AS_OP = re.compile(r"\s+as\s+(" + _IDENT + r")\s*$")
#: ``extension('url')`` is ``extension.where(url='url')`` (FHIRPath's FHIR-specific function).
_EXTENSION_CALL = re.compile(r"\.extension\(\s*('[^'\\]*')\s*\)")
_OFTYPE_ARG = re.compile(r"\.ofType\(\s*(" + _IDENT + r")\s*\)")
_STEP = re.compile(
    r"\.ofType\(\s*(?P<type>" + _IDENT + r")\s*\)"
    r"|\.where\(\s*(?P<wfield>" + _IDENT + r")\s*=\s*'(?P<wvalue>[^'\\]*)'\s*\)"
    r"|\.(?P<member>" + _IDENT + r")\b(?!\s*\()"
    r"|\[(?P<index>\d+)\]"
)
_ROOT = re.compile(r"%resource|" + _IDENT)
_KEYWORDS = frozenset({"and", "or", "xor", "implies", "is", "as", "in", "contains", "div", "mod", "true", "false"})


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at ``start`` (outside string literals), or -1."""
    depth, quote = 0, False
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "'" and (i == 0 or text[i - 1] != "\\"):
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _depth_at(text: str, end: int) -> int:
    depth, quote = 0, False
    for i in range(end):
        ch = text[i]
        if ch == "'" and (i == 0 or text[i - 1] != "\\"):
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
    return depth


def _type_name(name: str) -> str:
    lowered = name[:1].lower() + name[1:]
    return lowered if name[:1].isupper() and lowered in _PRIMITIVES else name


def rewrite(part: str) -> str:
    """One union part as evaluated: ``as`` → ``ofType``, primitive type names in FHIR case."""
    part = part.strip()
    while part.startswith("(") and _closing(part, 0) == len(part) - 1:
        part = part[1:-1].strip()
    m = _AS_OP.search(part)
    if m and _depth_at(part, m.start()) == 0:
        part = f"({part[:m.start()].strip()}).ofType({m.group(1)})"
    part = _AS_CALL.sub(lambda mm: f".ofType({mm.group(1)})", part)
    part = _EXTENSION_CALL.sub(lambda mm: f".extension.where(url={mm.group(1)})", part)
    return _OFTYPE_ARG.sub(lambda mm: f".ofType({_type_name(mm.group(1))})", part)


# fast-path program: a root then steps
_ROOT_TYPE, _ROOT_RESOURCE, _MEMBER, _OFTYPE, _WHERE, _INDEX = range(6)
Step = tuple[int, str, str]


def _parse_steps(text: str, steps: list[Step]) -> bool:
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if not m:
            return False
        if m["type"] is not None:
            steps.append((_OFTYPE, m["type"], ""))
        elif m["wfield"] is not None:
            steps.append((_WHERE, m["wfield"], m["wvalue"]))
        elif m["member"] is not None:  # after a dot any name is a member, even ``contains``
            steps.append((_MEMBER, m["member"], ""))
        else:
            steps.append((_INDEX, m["index"], ""))
        pos = m.end()
    return True


def _parse_path(text: str, top_level: bool) -> list[Step] | None:
    text = text.strip()
    steps: list[Step] = []
    if text.startswith("("):
        end = _closing(text, 0)
        if end < 0:
            return None
        inner = _parse_path(text[1:end], top_level)
        if inner is None:
            return None
        steps.extend(inner)
        return steps if _parse_steps(text[end + 1:].strip(), steps) else None
    m = _ROOT.match(text)
    if not m or m.group(0) in _KEYWORDS:
        return None
    root = m.group(0)
    if root == "%resource":
        steps.append((_ROOT_RESOURCE, "", ""))
    elif root[0].isupper():
        if not top_level:
            return None  # fhirpathpy reads a capitalised name on a non-resource node differently
        steps.append((_ROOT_TYPE, root, ""))
    else:
        steps.append((_MEMBER, root, ""))
    return steps if _parse_steps(text[m.end():], steps) else None


def _run_fast(steps: list[Step], nodes: list[Node], resource: dict[str, Any]) -> list[Node]:
    for kind, arg, lit in steps:
        if kind == _MEMBER:
            out: list[Node] = []
            for data, tp in nodes:
                _children(data, tp, arg, out)
            nodes = out
        elif kind == _OFTYPE:
            nodes = [n for n in nodes if _is_type(n[1], arg)]
        elif kind == _WHERE:
            kept = []
            for node in nodes:
                data = node[0]
                if type(data) is not dict or any("_" + f in data for f, _ in _member_info(node[1], arg)):
                    continue
                found: list[Node] = []
                _children(data, node[1], arg, found)
                if len(found) == 1 and type(found[0][0]) is str and found[0][0] == lit:
                    kept.append(node)
            nodes = kept
        elif kind == _INDEX:
            i = int(arg)
            nodes = nodes[i:i + 1]
        elif kind == _ROOT_TYPE:
            nodes = [(d, arg) for d, _ in nodes if type(d) is dict and d.get("resourceType") == arg]
        else:  # _ROOT_RESOURCE
            nodes = [(resource, resource.get("resourceType"))]
    return nodes


def _unwrap(item: Any) -> Node | None:
    if isinstance(item, ResourceNode):
        return item.data, item.path
    if isinstance(item, FP_DateTime | FP_Time):
        return str(item), None
    if isinstance(item, float):
        return Decimal(repr(item)), None
    if isinstance(item, str | bool | int | Decimal | dict | list):
        return item, None
    return None


def _nothing(*args: Any) -> list[Any]:
    return []


class _Expr:
    """One union part, compiled once: fast program when it has a simple shape, else fhirpathpy."""

    __slots__ = ("text", "steps", "root", "top_level", "needs", "_compiled")

    def __init__(self, text: str, top_level: bool, force_fhirpathpy: bool) -> None:
        self.text = rewrite(text)
        self.top_level = top_level
        steps = None if force_fhirpathpy else _parse_path(self.text, top_level)
        self.root: str | None = None  # ``Observation`` of ``Observation.x``: checked once, not stepped
        if steps and steps[0][0] == _ROOT_TYPE:
            self.root = steps[0][1]
            steps = steps[1:]
        self.steps = steps
        #: The JSON keys of the resource this expression starts from (``Observation.code``:
        #: ``code``), when it starts with a member; extraction skips it when none is present
        #: (most of a type's ~40 parameters find nothing in a given resource).
        self.needs: tuple[str, ...] | None = None
        if self.root is not None and steps and steps[0][0] == _MEMBER:
            self.needs = tuple(key for key, _ in _member_info(self.root, steps[0][1]))
        self._compiled: Callable[..., Any] | None = None

    @property
    def fast(self) -> bool:
        return self.steps is not None

    def evaluate(self, nodes: list[Node], resource: dict[str, Any]) -> list[Node]:
        """The values found from each context node (top level: the resource itself)."""
        steps = self.steps
        if steps is not None:
            if self.root is not None:  # top level only: the context is the resource
                if resource.get("resourceType") != self.root:
                    return []
                nodes = [(resource, self.root)]
            return _run_fast(steps, nodes, resource) if steps else nodes
        if self._compiled is None:
            try:
                self._compiled = fhirpathpy.compile(self.text, _MODEL, options={"returnRawData": True})
            except Exception:  # an expression fhirpathpy cannot parse: it finds nothing, said once
                log.warning("cannot compile FHIRPath %r: its parameter is not indexed", self.text, exc_info=True)
                self._compiled = _nothing
        TypeInfo.model = _MODEL  # type: ignore[assignment]  # ofType follows type inheritance only when the model is set
        out: list[Node] = []
        env = {"resource": resource}
        for data, tp in nodes:
            # the resource itself goes in as a dict, so that a leading ``Observation`` filters on it
            context = data if self.top_level else ResourceNode.create_node(data, tp)
            try:
                found = self._compiled(context, env)
            except Exception:  # odd data, or something fhirpathpy cannot do
                log.debug("fhirpathpy failed on %r", self.text, exc_info=True)
                continue
            for item in found if isinstance(found, list) else [found]:
                node = _unwrap(item)
                if node is not None:
                    out.append(node)
        return out


# ---------------------------------------------------------------------------------------------
# values → rows


@lru_cache(maxsize=65536)
def _norm(text: str) -> str:
    return values.normalize(text)


@lru_cache(maxsize=16384)
def _range(text: str) -> tuple[datetime, datetime] | None:
    try:
        return values.date_range(text)
    except values.BadValue:
        return None


def _kind(tp: str | None) -> str | None:
    """The datatype of a node when the model says it, else None (duck-type the value)."""
    if tp is None:
        return None
    if tp.startswith("System."):
        return tp[7:].lower()
    if tp in _PRIMITIVES or tp in _COMPLEX:
        return tp
    return None


def _str(v: Any) -> str | None:
    return v if type(v) is str and v else None


Emit = list[Any]
Converter = Callable[[str, Any, str | None, tuple[str, ...], Emit], None]


def _string_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit) -> None:
    kind = _kind(tp)
    if type(v) is str:
        if v.strip() and (kind is None or kind in _PRIMITIVES):
            out.append(StringRow(param, _norm(v), v))
        return
    if type(v) is not dict:
        return
    if kind == "HumanName" or (kind is None and ("family" in v or "given" in v)):
        fields: tuple[str, ...] = ("family", "given", "prefix", "suffix", "text")
    elif kind == "Address" or (kind is None and ("line" in v or "city" in v or "postalCode" in v)):
        fields = ("line", "city", "district", "state", "postalCode", "country", "text")
    else:
        return
    for field in fields:
        x = v.get(field)
        for s in x if type(x) is list else (x,):
            if type(s) is str and s.strip():
                out.append(StringRow(param, _norm(s), s))


_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_TOKEN_PRIMITIVES = frozenset({"code", "string", "id", "uri", "url", "canonical", "oid", "uuid", "markdown",
                               "integer", "positiveInt", "unsignedInt", "decimal"})


def _coding_row(param: str, c: Any) -> TokenRow | None:
    if type(c) is not dict:
        return None
    code, display = _str(c.get("code")), _str(c.get("display"))
    if code is None and display is None:
        return None
    return TokenRow(param, _str(c.get("system")) or "", code, _norm(display) if display else None)


def _token_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit) -> None:
    kind = _kind(tp)
    if type(v) is bool:
        if kind in (None, "boolean"):
            out.append(TokenRow(param, "", "true" if v else "false", None))
        return
    if type(v) is str:
        if v and (kind is None or kind in _TOKEN_PRIMITIVES):
            out.append(TokenRow(param, "", v, None))
        return
    if type(v) is int or type(v) is Decimal:
        if kind is None or kind in _TOKEN_PRIMITIVES:
            out.append(TokenRow(param, "", str(v), None))
        return
    if type(v) is not dict or (kind is not None and kind in _PRIMITIVES):
        return
    if kind is None:  # duck-typing, for nodes fhirpathpy or the model could not type
        if "coding" in v or set(v) <= {"text", "id", "extension"}:
            kind = "CodeableConcept"
        elif "code" in v or "display" in v:
            kind = "Coding"
        elif "value" in v:
            kind = "ContactPoint" if v.get("system") in _CONTACT_SYSTEMS and "type" not in v else "Identifier"
        else:
            return
    if kind == "CodeableConcept":
        codings = v.get("coding")
        displays = set()
        if type(codings) is list:
            for c in codings:
                row = _coding_row(param, c)
                if row is not None:
                    out.append(row)
                    displays.add(row.text)
        text = _str(v.get("text"))
        # A text-only row only when no coding row carries the same text already: ``:text``
        # matches the text column of any row, and nothing else reads a row without a code
        # (Synthea's CodeableConcepts repeat their coding's display as text: a row saved each).
        if text and _norm(text) not in displays:
            out.append(TokenRow(param, "", None, _norm(text)))
    elif kind == "Coding":
        row = _coding_row(param, v)
        if row is not None:
            out.append(row)
    elif kind == "Identifier":
        value = _str(v.get("value"))
        if value is None:
            return
        system = _str(v.get("system")) or ""
        itype = v.get("type")
        text = None
        types: list[tuple[str | None, str | None]] = []
        if type(itype) is dict:
            t = _str(itype.get("text"))
            text = _norm(t) if t else None
            codings = itype.get("coding")
            if type(codings) is list:
                for c in codings:
                    if type(c) is dict and _str(c.get("code")):
                        types.append((_str(c.get("system")) or "", c["code"]))
        for type_system, type_code in types or [(None, None)]:
            out.append(TokenRow(param, system, value, text, type_system, type_code))
    elif kind == "ContactPoint":
        value = _str(v.get("value"))
        if value is not None:
            out.append(TokenRow(param, "", value, None))


_RELATIVE_REF = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ABSOLUTE_REF = re.compile(r"^(?P<base>.+?)/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_TYPE_URL = "http://hl7.org/fhir/StructureDefinition/"


@lru_cache(maxsize=1)
def _resource_types() -> frozenset[str]:
    return frozenset(resources.resource_types())


@lru_cache(maxsize=65536)
def _parse_reference(ref: str) -> tuple[str | None, str | None, str | None] | None:
    """(type, id, url) of a literal reference; None for a local ``#contained`` one."""
    if not ref or ref.startswith("#"):
        return None
    m = _RELATIVE_REF.match(ref)
    if m and m["type"] in _resource_types():
        return m["type"], m["id"], None
    if "://" in ref:
        m = _ABSOLUTE_REF.match(ref)
        if m and m["type"] in _resource_types():
            url = ref[:ref.index("/_history/")] if "/_history/" in ref else ref
            return m["type"], m["id"], url
    return None, None, ref  # urn:uuid:, urn:oid:, a canonical, or something unreadable: kept as a URL


def _reference_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit,
                    targets: tuple[str, ...] = ()) -> None:
    kind = _kind(tp)
    if type(v) is str:  # canonical / uri / url
        if v and kind in (None, "canonical", "uri", "url", "oid", "uuid", "string"):
            if allowed:
                return  # a URL says nothing of the target's type
            out.append(ReferenceRow(param, None, None, v.split("|", 1)[0]))
        return
    if type(v) is not dict:
        return
    if "resourceType" in v:  # a resource itself (Bundle.entry[0].resource): a reference to it, when it is
        rtype, rid = v["resourceType"], _str(v.get("id"))  # of a type the parameter targets
        ok = allowed or targets
        if type(rtype) is str and rtype in _resource_types() and rid and (not ok or rtype in ok):
            out.append(ReferenceRow(param, rtype, rid, None))
        return
    if kind is not None and kind != "Reference":
        return
    target_type = target_id = url = None
    ref = v.get("reference")
    if type(ref) is str:
        parsed = _parse_reference(ref)
        if parsed is not None:
            target_type, target_id, url = parsed
    hint = _str(v.get("type"))
    if target_type is None and hint:
        hint = hint[len(_TYPE_URL):] if hint.startswith(_TYPE_URL) else hint
        target_type = hint if hint in _resource_types() else None
    ident_system = ident_value = None
    ident = v.get("identifier")
    if type(ident) is dict and _str(ident.get("value")):
        ident_system, ident_value = _str(ident.get("system")) or "", ident["value"]
    if target_id is None and url is None and ident_value is None:
        return
    if allowed and target_type not in allowed:
        return
    out.append(ReferenceRow(param, target_type, target_id, url, ident_system, ident_value))


def _date_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit) -> None:
    kind = _kind(tp)
    if type(v) is str:
        if kind is None or kind in ("date", "dateTime", "instant", "string"):
            r = _range(v)
            if r is not None:
                out.append(DateRow(param, r[0], r[1]))
        return
    if type(v) is not dict:
        return
    if kind == "Period" or (kind is None and ("start" in v or "end" in v)):
        start, end = v.get("start"), v.get("end")
        if start is None and end is None:
            return
        low, high = values.MIN_INSTANT, values.MAX_INSTANT
        if start is not None:
            r = _range(start) if type(start) is str else None
            if r is None:
                return
            low = r[0]
        if end is not None:
            r = _range(end) if type(end) is str else None
            if r is None:
                return
            high = r[1]
        out.append(DateRow(param, low, high))
    elif kind == "Timing" or (kind is None and ("event" in v or "repeat" in v)):
        # "Timing: the specified scheduling details are ignored and only the outer limits
        # matter" (https://hl7.org/fhir/R4B/search.html#date): one range from the earliest to
        # the latest event or bound, so a Timing is one value like a Period.
        events = v.get("event")
        ranges = [r for e in (events if type(events) is list else ()) if type(e) is str
                  for r in (_range(e),) if r is not None]
        repeat = v.get("repeat")
        bounds = repeat.get("boundsPeriod") if type(repeat) is dict else None
        if type(bounds) is dict and (bounds.get("start") is not None or bounds.get("end") is not None):
            start, end = bounds.get("start"), bounds.get("end")
            lo = _range(start) if type(start) is str else None
            hi = _range(end) if type(end) is str else None
            ranges.append((lo[0] if lo else values.MIN_INSTANT, hi[1] if hi else values.MAX_INSTANT))
        if ranges:
            out.append(DateRow(param, min(r[0] for r in ranges), max(r[1] for r in ranges)))


def _decimal(v: Any) -> Decimal | None:
    if type(v) is int:
        return Decimal(v)
    if type(v) is Decimal:
        return v if v.is_finite() else None
    if type(v) is float:
        try:
            d = Decimal(repr(v))
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def _number_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit) -> None:
    d = _decimal(v)
    if d is not None:
        out.append(NumberRow(param, d))


_QUANTITIES = frozenset(t for t in _COMPLEX if _is_type(t, "Quantity"))  # Quantity, Age, Duration, …


def _quantity_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit) -> None:
    if type(v) is not dict:
        return
    kind = _kind(tp)
    if kind is None:
        if "currency" in v:
            kind = "Money"
        elif "value" in v and not ({"low", "high", "origin", "data", "numerator"} & set(v)):
            kind = "Quantity"
        else:
            return
    value = _decimal(v.get("value"))
    if value is None:
        return
    if kind == "Money":
        currency = _str(v.get("currency"))
        out.append(QuantityRow(param, value, CURRENCY if currency else None, currency, None, None, None))
    elif kind in _QUANTITIES:
        system, code, unit = _str(v.get("system")), _str(v.get("code")), _str(v.get("unit"))
        canon = ucum.canonical(value, code) if system == UCUM and code else None  # not cached: 1.0 == 1
        out.append(QuantityRow(param, value, system, code, unit,
                               canon[0] if canon else None, canon[1] if canon else None))
    # Range, SampledData, Ratio: not indexed (one value per row cannot say them)


def _uri_rows(param: str, v: Any, tp: str | None, allowed: tuple[str, ...], out: Emit) -> None:
    if type(v) is str and v:
        out.append(UriRow(param, v))


_CONVERTERS: dict[str, Converter] = {
    "string": _string_rows, "token": _token_rows, "reference": _reference_rows, "date": _date_rows,
    "number": _number_rows, "quantity": _quantity_rows, "uri": _uri_rows,
}

# ---------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class _Component:
    code: str
    exprs: tuple[_Expr, ...]
    convert: Converter


@dataclass(frozen=True)
class _Plan:
    code: str
    type: str
    exprs: tuple[_Expr, ...]
    allowed: tuple[str, ...]
    convert: Converter | None  # None for composites
    components: tuple[_Component, ...] = ()
    #: Resource keys of which one must be present for any expression to find a value; None
    #: when an expression does not start with a member.
    needs: frozenset[str] | None = None


def _needs(exprs: tuple[_Expr, ...]) -> frozenset[str] | None:
    if any(e.needs is None for e in exprs):
        return None
    return frozenset(key for e in exprs for key in e.needs or ())


def _by_key(plans: tuple[_Plan, ...]) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """(plans that always run, resource key → plans that need it), as indexes into ``plans``."""
    always = []
    by_key: dict[str, list[int]] = {}
    for i, plan in enumerate(plans):
        if plan.needs is None:
            always.append(i)
        else:
            for key in plan.needs:
                by_key.setdefault(key, []).append(i)
    return tuple(always), {k: tuple(v) for k, v in by_key.items()}


def _extension_value(ext: Any) -> tuple[Any, str | None]:
    """An Extension found by an expression stands for its ``value[x]`` (the core extension
    search parameters, e.g. ``Patient.extension('…patient-mothersMaidenName')``, end at the
    Extension; HAPI FHIR indexes its value the same way)."""
    if type(ext) is dict:
        for key, value in ext.items():
            if key.startswith("value") and len(key) > 5:
                kind = key[5:]
                return value, _type_name(kind) if kind[:1].isupper() else kind
    return None, None


class Indexer:
    """Turns resources into index rows, one list per resource (see the module docstring)."""

    def __init__(self, registry: Registry, force_fhirpathpy: bool = False) -> None:
        self.registry = registry
        self.force_fhirpathpy = force_fhirpathpy
        self._plans: dict[str, tuple[_Plan, ...]] = {}
        self._by_key: dict[str, tuple[tuple[int, ...], dict[str, tuple[int, ...]]]] = {}
        self._relative: dict[str, tuple[_Expr, ...]] = {}

    def extract(self, resource: dict[str, Any]) -> list[Row]:
        """Every index row of ``resource``, without duplicates; never raises on odd data."""
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if type(rtype) is not str:
            return []
        rows: list[Any] = []
        root: list[Node] = [(resource, rtype)]
        for plan in self._selected(rtype, resource):
            try:
                if plan.convert is not None:
                    for expr in plan.exprs:
                        for v, tp in expr.evaluate(root, resource):
                            if tp == "Extension" or (tp is None and type(v) is dict and "url" in v):
                                v, tp = _extension_value(v)
                            plan.convert(plan.code, v, tp, plan.allowed, rows)
                else:
                    self._composite(plan, root, resource, rows)
            except Exception:  # one odd value must not stop the others
                log.warning("could not index %s.%s", rtype, plan.code, exc_info=True)
        return _one_row_per_code(list(dict.fromkeys(rows)))

    def fallback_expressions(self, resource_type: str) -> list[tuple[str, str]]:
        """(param code, expression part) evaluated by fhirpathpy for ``resource_type``."""
        out: list[tuple[str, str]] = []
        for plan in self._plans_for(resource_type):
            out.extend((plan.code, e.text) for e in plan.exprs if not e.fast)
            for comp in plan.components:
                out.extend((f"{plan.code}/{comp.code}", e.text) for e in comp.exprs if not e.fast)
        return out

    # -- internals

    def _composite(self, plan: _Plan, root: list[Node], resource: dict[str, Any], rows: list[Any]) -> None:
        for expr in plan.exprs:
            for node in expr.evaluate(root, resource):
                # last component first: it is the rarer one (code-value-date: the value), so most
                # elements are ruled out without converting their code
                per_component: list[list[Any]] = []
                for comp in reversed(plan.components):
                    found: list[Any] = []
                    for cexpr in comp.exprs:
                        for v, tp in cexpr.evaluate([node], resource):
                            comp.convert(comp.code, v, tp, (), found)
                    if not found:
                        break
                    per_component.append(list(dict.fromkeys(found)))
                else:
                    per_component.reverse()
                    for combo in itertools.product(*per_component):
                        rows.append(CompositeRow(plan.code, tuple(combo)))

    def _selected(self, rtype: str, resource: dict[str, Any]) -> list[_Plan]:
        """The plans that can find something in ``resource``, in plan order: those whose
        expressions start at one of its keys (a type has ~40 parameters, a resource uses a few
        elements), and those that do not start with a member."""
        found = self._by_key.get(rtype)
        if found is None:
            found = self._by_key[rtype] = _by_key(self._plans_for(rtype))
        always, by_key = found
        wanted = set(always)
        for key in resource:
            hit = by_key.get(key)
            if hit is not None:
                wanted.update(hit)
        plans = self._plans_for(rtype)
        return [plans[i] for i in sorted(wanted)]

    def _plans_for(self, rtype: str) -> tuple[_Plan, ...]:
        plans = self._plans.get(rtype)
        if plans is None:
            plans = self._plans[rtype] = tuple(self._build(rtype))
        return plans

    def _build(self, rtype: str) -> Iterable[_Plan]:
        for code, param in sorted(self.registry.params_for(rtype).items()):
            if code in SKIPPED_CODES or param.type == "special" or not self.registry.storage(rtype, code).own(code):
                continue  # (a parameter stored as others' rows: registry.Storage)
            found = param.expression_for(rtype)
            if found is None:
                continue
            expression, allowed = found
            exprs = tuple(_Expr(p, True, self.force_fhirpathpy) for p in split_union(expression))
            if param.type == "composite":
                components = self._components(param)
                if components:
                    yield _Plan(code, param.type, exprs, allowed, None, components, _needs(exprs))
                continue
            convert = _CONVERTERS.get(param.type)
            if param.type == "reference" and param.targets:
                convert = functools.partial(_reference_rows, targets=param.targets)
            if convert is not None:
                yield _Plan(code, param.type, exprs, allowed, convert, (), _needs(exprs))

    def _components(self, param: SearchParam) -> tuple[_Component, ...]:
        out = []
        for comp in param.components:
            target = self.registry.by_url(comp.definition)
            convert = _CONVERTERS.get(target.type) if target is not None else None
            if target is None or convert is None:
                return ()
            exprs = self._relative.get(comp.expression)
            if exprs is None:
                exprs = self._relative[comp.expression] = tuple(
                    _Expr(p, False, self.force_fhirpathpy) for p in split_union(comp.expression))
            out.append(_Component(target.code, exprs, convert))
        return tuple(out)


def _one_row_per_code(rows: list[Any]) -> list[Any]:
    """At most one coding row per (parameter, system, code): a code repeated with another display
    keeps that display as a text-only row (``:text`` still finds it; no search by code needs a
    second row), so statistics can count a resource once per code with ``count(*)``
    (``stats/query.py``). Identifier rows (with a type) are left as they are."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Any] = []
    for row in rows:
        if type(row) is TokenRow and row.code is not None and row.type_system is None and row.type_code is None:
            key = (row.param, row.system, row.code)
            if key in seen:
                if row.text:
                    out.append(TokenRow(row.param, "", None, row.text))
                continue
            seen.add(key)
        out.append(row)
    return list(dict.fromkeys(out))

