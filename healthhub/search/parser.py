"""Parse a FHIR search query into a :class:`~healthhub.search.request.SearchRequest` (pure).

Grammar: https://hl7.org/fhir/R4B/search.html — parameter names (``code``, ``code:modifier``,
chains ``subject:Patient.name``, reverse chains ``_has:Observation:patient:code``), values
(``,`` = OR, repeated parameter = AND, ``\\`` escapes), prefixes for number/date/quantity, and the
result parameters (``_count``, ``_sort``, ``_include``, …).

No database and no Flask here: every problem with the input becomes a 400 :class:`FhirError`
whose issue names the parameter in ``expression``; nothing else escapes :func:`parse`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class
from pydantic.fields import FieldInfo

from ..outcome import FhirError, Issue, error, invalid
from ..resources import is_resource_type
from .registry import Registry, SearchParam, split_union
from .request import (
    PREFIXES,
    Chain,
    Clause,
    CompositeValue,
    DateValue,
    Include,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    ReverseChain,
    SearchRequest,
    SortKey,
    TokenValue,
    Value,
)
from .values import BadValue, date_range, decimal

__all__ = ["MAX_CHAIN_DEPTH", "MAX_COUNT", "MAX_OR_VALUES", "MAX_PARAMETERS", "parse", "split_escaped",
           "unescape"]

MAX_PARAMETERS = 100  # query pairs per search
MAX_OR_VALUES = 1000  # comma-separated values in one parameter
MAX_COUNT = 1000  # _count is capped here (CONTRACT §4)
MAX_CHAIN_DEPTH = 4  # links (chains + _has) in one parameter name
_MAX_EXPONENT = 1000  # |adjusted exponent| of a searched number: keeps Decimal arithmetic finite

# https://hl7.org/fhir/R4B/search.html#modifiers — which modifier goes with which parameter type.
# A reference also takes a resource type as modifier (``subject:Patient``).
_MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"text", "not", "of-type", "missing"}),
    "reference": frozenset({"identifier", "missing", "above", "below"}),
    "uri": frozenset({"above", "below", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "composite": frozenset({"missing"}),
}
_TERMINOLOGY_MODIFIERS = frozenset({"in", "not-in", "above", "below"})  # need a terminology server

# https://hl7.org/fhir/R4B/search.html#all — defined by FHIR, not implemented here.
_UNSUPPORTED = frozenset({"_text", "_content", "_list", "_query", "_filter", "_contained", "_containedType"})
_IGNORED = frozenset({"_format", "_pretty"})  # handled by the HTTP layer
_SINGLE = frozenset({"_count", "_sort", "_summary", "_total", "_elements", "_cursor"})  # at most once
_SUMMARY = ("true", "text", "data", "count", "false")  # https://hl7.org/fhir/R4B/search.html#summary
_TOTAL = ("none", "estimate", "accurate")  # https://hl7.org/fhir/R4B/search.html#total
_ELEMENT = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # an absolute URI (http:, https:, urn:, …)
_AS_URI = re.compile(r"\bas\s+(?:canonical|uri)\b")
_TYPE_REF = re.compile(r"\b([A-Z][A-Za-z0-9]*)Type\b")
_RESOLVE_IS = re.compile(r"resolve\(\)\s+is\s+([A-Za-z]+)")
_CALL = re.compile(r"\.\w+\(")


@dataclass
class _Context:
    """What every step of one :func:`parse` call needs."""

    resource_type: str
    registry: Registry
    strict: bool
    base_url: str | None
    request: SearchRequest
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (parameter, why)
    seen: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Resolved:
    """A parameter name resolved to its final parameter, the links to reach it and its modifier."""

    chain: tuple[Chain | ReverseChain, ...]
    param: SearchParam
    modifier: str | None
    owner: str  # the resource type ``param`` is searched on (the end of the chain)


class _Unknown(Exception):
    """A parameter name that is not defined for the type it is used on (strict: 400, lenient: warn)."""

    def __init__(self, owner: str, code: str) -> None:
        super().__init__(f"{owner} has no search parameter {_show(code)}")


# -- public API --------------------------------------------------------------------------------


def parse(resource_type: str, params: list[tuple[str, str]], registry: Registry, *, strict: bool = False,
          base_url: str | None = None) -> SearchRequest:
    """Parse decoded query pairs (in order; a repeated name is an AND) for a search on ``resource_type``.

    ``strict`` follows ``Prefer: handling=strict``: unknown parameters are a 400 instead of a warning
    (https://hl7.org/fhir/R4B/search.html#errors). ``base_url`` (e.g. ``http://hub/fhir``) turns
    absolute references to this server into ``Type/id``. Raises :class:`FhirError` (400) only.
    """
    if len(params) > MAX_PARAMETERS:
        raise invalid(f"Too many search parameters ({len(params)}); at most {MAX_PARAMETERS} are allowed",
                      [params[MAX_PARAMETERS][0]])  # the first one over the limit
    ctx = _Context(resource_type, registry, strict, base_url.rstrip("/") if base_url else None,
                   SearchRequest(resource_type))
    for name, raw in params:
        _parse_pair(ctx, name, raw)
    if ctx.unknown and strict:
        raise FhirError(400, [Issue("error", "not-supported", f"Unknown search parameter {_show(n)}: {why}", (n,))
                              for n, why in ctx.unknown])
    return ctx.request


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped by ``\\``; escapes are kept in the parts.

    https://hl7.org/fhir/R4B/search.html#escaping
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(text: str) -> str:
    """Undo ``\\,`` ``\\|`` ``\\$`` ``\\\\``; any other backslash is kept as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",|$\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# -- one query pair ----------------------------------------------------------------------------


def _parse_pair(ctx: _Context, name: str, raw: str) -> None:
    """Dispatch one ``name=value`` pair to a result parameter or a search clause."""
    base = name.split(":", 1)[0]
    if base in _IGNORED:
        return
    if base == "_type":
        _type_filter(ctx, name, raw)
        return
    if base in _UNSUPPORTED:
        raise _unsupported(f"Search parameter {base} is not supported by this server", name)
    if base in _SINGLE:
        if base in ctx.seen:
            raise invalid(f"{base} may be given only once", [name])
        ctx.seen.add(base)
    handler = _RESULT_PARAMS.get(base)
    if handler is not None:
        if not raw.strip():
            _ignore_empty(ctx, name)
            return
        handler(ctx, name, raw)
        return
    try:
        resolved = _resolve(ctx, ctx.resource_type, name, name, 0)
    except _Unknown as exc:
        _unknown(ctx, name, str(exc))
        return
    _check_modifier(resolved, name)
    _add_clause(ctx, resolved, name, raw)


def _type_filter(ctx: _Context, name: str, raw: str) -> None:
    """``_type`` on a search of one type: the types to search, of which only the URL's can match
    (https://hl7.org/fhir/R4B/search.html#_type). It used to be ignored, so ``Patient?_type=
    Observation`` (or ``_type=' OR 1=1--``) found every Patient (tests/system/test_hostile_input.py)."""
    if name != "_type":
        raise invalid(f"_type takes no modifier (in {_show(name)})", [name])
    if not raw.strip():
        _ignore_empty(ctx, name)
        return
    types = [t.strip() for t in raw.split(",")]
    unknown = next((t for t in types if not is_resource_type(t)), None)
    if unknown is not None:
        raise invalid(f"_type: {_show(unknown)} is not a resource type", [name])
    if ctx.resource_type not in types:
        ctx.request.ids.append(())  # an empty set of ids: no resource of this type is of those types


def _unknown(ctx: _Context, name: str, why: str) -> None:
    """Record an unknown parameter: a 400 at the end in strict mode, a warning otherwise."""
    ctx.unknown.append((name, why))
    if not ctx.strict:
        ctx.request.warnings.append(f"Unknown search parameter {_show(name)} was ignored ({why})")


def _ignore_empty(ctx: _Context, name: str) -> None:
    """An empty value (``?family=``) constrains nothing: lenient drops it with a warning; strict (also
    used for conditional create/update/delete criteria, where dropping it would widen the match) is a 400."""
    if ctx.strict:
        raise invalid(f"Search parameter {_show(name)} has no value", [name])
    ctx.request.warnings.append(f"Search parameter {_show(name)} has no value and was ignored")


def _add_clause(ctx: _Context, resolved: _Resolved, name: str, raw: str) -> None:
    """Parse the OR values of an ordinary parameter and add them as one AND-ed clause."""
    pieces = _or_values(raw, name)
    if not pieces:
        _ignore_empty(ctx, name)
        return
    param, modifier = resolved.param, resolved.modifier
    if not resolved.chain and modifier is None and param.code == "_id":
        ctx.request.ids.append(tuple(unescape(p) for p in pieces))  # _id=a,b
        return
    values = tuple(_value(ctx, resolved, p, name) for p in pieces)
    if not resolved.chain and param.code == "_lastUpdated":
        ctx.request.last_updated.append(tuple(v for v in values if isinstance(v, DateValue)))
        return
    ctx.request.clauses.append(Clause(param, modifier, values, resolved.chain))


def _or_values(raw: str, name: str) -> list[str]:
    """The comma-separated (OR) values, escapes kept; empty ones dropped."""
    pieces = split_escaped(raw, ",")
    if len(pieces) > MAX_OR_VALUES:
        raise invalid(f"Too many values for {_show(name)} ({len(pieces)}); at most {MAX_OR_VALUES} "
                      "comma-separated values are allowed in one parameter", [name])
    return [p for p in pieces if p != ""]


# -- names: chains, reverse chains, modifiers ----------------------------------------------------


def _resolve(ctx: _Context, owner: str, name: str, full: str, depth: int) -> _Resolved:
    """Resolve ``name`` (as searched on ``owner``) to its final parameter and chain.

    Chaining: https://hl7.org/fhir/R4B/search.html#chaining ; reverse chaining (``_has``):
    https://hl7.org/fhir/R4B/search.html#has
    """
    if depth > MAX_CHAIN_DEPTH:
        raise invalid(f"Chain too long in {_show(full)}: at most {MAX_CHAIN_DEPTH} links are allowed", [full])
    if name == "_has" or name.startswith("_has:"):
        return _resolve_has(ctx, owner, name, full, depth)
    head, dot, tail = name.partition(".")
    code, colon, modifier = head.partition(":")
    if dot:
        return _resolve_chain(ctx, owner, code, modifier if colon else None, tail, full, depth)
    if colon and not modifier:
        raise invalid(f"Empty modifier in {_show(full)}", [full])
    param = _lookup(ctx, owner, code, full)
    return _Resolved((), param, modifier if colon else None, owner)


def _lookup(ctx: _Context, owner: str, code: str, full: str) -> SearchParam:
    """The parameter ``code`` of ``owner``; unknown → :class:`_Unknown`; unsupported → 400."""
    if code in _UNSUPPORTED:
        raise _unsupported(f"Search parameter {code} is not supported by this server", full)
    param = ctx.registry.get(owner, code)
    if param is None:
        raise _Unknown(owner, code)
    if param.type == "special" or param.expression is None:
        raise _unsupported(f"Search parameter {code} (type {param.type}) of {owner} is not supported "
                           "by this server", full)
    return param


def _resolve_chain(ctx: _Context, owner: str, code: str, type_modifier: str | None, tail: str, full: str,
                   depth: int) -> _Resolved:
    """``code[:Type].tail`` — follow the reference ``code`` to one target type, then resolve ``tail``."""
    param = _lookup(ctx, owner, code, full)
    if param.type != "reference":
        raise invalid(f"{code} is a {param.type} parameter; only reference parameters can be chained "
                      f"(in {_show(full)})", [full])
    if not tail:
        raise invalid(f"Missing chained parameter after '.' in {_show(full)}", [full])
    target = _chain_target(ctx, param, owner, type_modifier, tail, full)
    rest = _resolve(ctx, target, tail, full, depth + 1)
    return _Resolved((Chain(param, target), *rest.chain), rest.param, rest.modifier, rest.owner)


def _chain_target(ctx: _Context, param: SearchParam, owner: str, type_modifier: str | None, tail: str,
                  full: str) -> str:
    """The resource type a chain follows: the ``:Type`` given, the only target, or the only target
    type that has the next parameter (else 400 asking for ``:Type``)."""
    if type_modifier is not None:
        _check_target_type(param, owner, type_modifier, full)
        return type_modifier
    targets = _targets_on(param, owner)
    if len(targets) == 1:
        return targets[0]
    next_code = tail.split(".", 1)[0].split(":", 1)[0]
    candidates = [t for t in targets if next_code != "_has" and ctx.registry.get(t, next_code)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and next_code != "_has" and targets:
        raise _Unknown("/".join(targets), next_code)
    options = candidates or list(targets)
    if not options:
        raise invalid(f"Chain {_show(full)} needs a type: write {param.code}:[type].{tail}", [full])
    raise invalid(f"Ambiguous chain {_show(full)}: {param.code} may refer to {', '.join(options)}; "
                  f"add the type, e.g. {param.code}:{options[0]}.{tail}", [full])


def _resolve_has(ctx: _Context, owner: str, name: str, full: str, depth: int) -> _Resolved:
    """``_has:Source:param:rest`` — resources of ``Source`` whose ``param`` refers to ``owner``."""
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts[1:]):
        raise invalid(f"Malformed reverse chain {_show(full)}; expected _has:Type:reference-parameter:"
                      "search-parameter", [full])
    _, source, code, rest = parts
    if not is_resource_type(source):
        raise invalid(f"{_show(source)} in {_show(full)} is not a resource type", [full])
    param = _lookup(ctx, source, code, full)
    if param.type != "reference":
        raise invalid(f"{source}.{code} is a {param.type} parameter; _has needs a reference parameter", [full])
    targets = _targets_on(param, source)
    if targets and owner not in targets:
        raise invalid(f"{source}:{code} cannot refer to {owner} (it refers to {', '.join(targets)})", [full])
    inner = _resolve(ctx, source, rest, full, depth + 1)
    return _Resolved((ReverseChain(source, param), *inner.chain), inner.param, inner.modifier, inner.owner)


def _check_target_type(param: SearchParam, owner: str, type_name: str, full: str) -> None:
    """``:Type`` on a reference (searched on ``owner``) must name a type the parameter can refer to."""
    if not is_resource_type(type_name):
        raise invalid(f"{_show(type_name)} is not a resource type (in {_show(full)})", [full])
    targets = _targets_on(param, owner)
    if targets and type_name not in targets:
        raise invalid(f"{param.code} of {owner} cannot refer to {type_name}; allowed: {', '.join(targets)}",
                      [full])


def _check_modifier(resolved: _Resolved, full: str) -> None:
    """Reject modifiers the final parameter's type does not take (https://hl7.org/fhir/R4B/search.html#modifiers)."""
    param, modifier = resolved.param, resolved.modifier
    if modifier is None:
        return
    if param.code in ("_id", "_lastUpdated") and not resolved.chain:
        if param.code == "_id" and modifier == "not":
            return
        raise invalid(f"Modifier :{_show(modifier)} is not supported on {param.code}", [full])
    if param.type == "token" and modifier in _TERMINOLOGY_MODIFIERS:
        raise _unsupported(f"Modifier :{modifier} needs a terminology server, which this server does not "
                           "have", full)
    if param.type == "reference" and modifier[:1].isupper():
        _check_target_type(param, resolved.owner, modifier, full)
        return
    allowed = _MODIFIERS.get(param.type, frozenset())
    if modifier not in allowed:
        shown = ", ".join(f":{m}" for m in sorted(allowed)) or "none"
        raise invalid(f"Modifier :{_show(modifier)} is not valid on {param.code} (a {param.type} parameter; "
                      f"allowed: {shown})", [full])
    if param.type == "reference" and modifier in ("above", "below") and not _is_canonical(param, resolved.owner):
        raise invalid(f"Modifier :{modifier} is only supported on canonical references; {param.code} is not "
                      "one", [full])


# -- values -------------------------------------------------------------------------------------


def _value(ctx: _Context, resolved: _Resolved, piece: str, name: str) -> Value:
    """One OR value of the final parameter, read per its type and modifier."""
    param, modifier = resolved.param, resolved.modifier
    if modifier == "missing":
        return _missing(piece, name)
    if param.type == "token" and modifier == "text":
        return unescape(piece)
    if param.type == "token" and modifier == "of-type":
        return _of_type(piece, name)
    if param.type == "reference" and modifier == "identifier":
        return _token(piece, name)
    if param.type == "reference" and modifier in ("above", "below"):
        return ReferenceValue(None, None, unescape(split_escaped(piece, "|")[0]))
    if param.type == "reference" and modifier is not None:
        return _reference(ctx, param, resolved.owner, piece, name, modifier)
    return _plain_value(ctx, param, resolved.owner, piece, name)


def _plain_value(ctx: _Context, param: SearchParam, owner: str, piece: str, name: str) -> Value:
    """A value without a modifier (also each part of a composite)."""
    kind = param.type
    if kind in ("string", "uri"):
        return unescape(piece)
    if kind == "token":
        return _token(piece, name)
    if kind == "reference":
        return _reference(ctx, param, owner, piece, name, None)
    if kind == "date":
        return _date(piece, name)
    if kind == "number":
        prefix, rest = _prefix(piece)
        return NumberValue(prefix, _number(rest, name))
    if kind == "quantity":
        return _quantity(piece, name)
    if kind == "composite":
        return _composite(ctx, param, owner, piece, name)
    raise _unsupported(f"Search parameter {param.code} (type {kind}) is not supported by this server", name)


def _missing(piece: str, name: str) -> bool:
    """``:missing=true|false`` (https://hl7.org/fhir/R4B/search.html#modifiers)."""
    if piece in ("true", "false"):
        return piece == "true"
    raise invalid(f"{_show(name)} takes true or false, not {_show(piece)}", [name])


def _prefix(text: str) -> tuple[str, str]:
    """Split a comparison prefix off a number/date/quantity (https://hl7.org/fhir/R4B/search.html#prefix)."""
    if len(text) > 2 and text[:2] in PREFIXES and (text[2].isdigit() or text[2] == "-"):
        return text[:2], text[2:]
    return "eq", text


def _token(piece: str, name: str) -> TokenValue:
    """``code``, ``system|code``, ``|code``, ``system|`` (https://hl7.org/fhir/R4B/search.html#token)."""
    parts = split_escaped(piece, "|")
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]))
    if len(parts) > 2:
        raise invalid(f"{_show(piece)} is not a token for {_show(name)}: use [system]|[code] (escape a "
                      "literal | as \\|)", [name])
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise invalid(f"Empty token '|' for {_show(name)}", [name])
    return TokenValue(system, code or None)


def _of_type(piece: str, name: str) -> OfTypeValue:
    """``identifier:of-type=type-system|type-code|value``."""
    parts = [unescape(p) for p in split_escaped(piece, "|")]
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise invalid(f"{_show(piece)} is not valid for {_show(name)}: :of-type takes "
                      "[type-system]|[type-code]|[value]", [name])
    return OfTypeValue(parts[0] or None, parts[1], parts[2])


def _date(piece: str, name: str) -> DateValue:
    """``[prefix]date`` as a range (https://hl7.org/fhir/R4B/search.html#date)."""
    prefix, rest = _prefix(piece)
    rest = rest.replace(" ", "+")  # an unencoded '+' in a time zone arrives as a space
    try:
        low, high = date_range(rest)
    except BadValue as exc:
        raise invalid(f"Invalid date for {_show(name)}: {exc}", [name]) from None
    return DateValue(prefix, low, high)


def _number(text: str, name: str) -> Decimal:
    """A decimal (``100``, ``1.5``, ``1e2``); 400 when it is not one or is absurdly large/small."""
    try:
        value = decimal(text)
    except BadValue as exc:
        raise invalid(f"Invalid number for {_show(name)}: {exc}", [name]) from None
    if abs(value.adjusted()) > _MAX_EXPONENT or len(value.as_tuple().digits) > 100:
        raise invalid(f"Number {_show(text)} for {_show(name)} is out of range", [name])
    return value


def _quantity(piece: str, name: str) -> QuantityValue:
    """``[prefix]number|system|code``, ``number||code``, ``number`` (https://hl7.org/fhir/R4B/search.html#quantity)."""
    parts = split_escaped(piece, "|")
    if len(parts) not in (1, 3):
        raise invalid(f"{_show(piece)} is not a quantity for {_show(name)}: use [prefix]number, "
                      "number|system|code or number||code", [name])
    prefix, rest = _prefix(parts[0])
    value = _number(unescape(rest), name)
    if len(parts) == 1:
        return QuantityValue(prefix, value, None, None)
    return QuantityValue(prefix, value, unescape(parts[1]) or None, unescape(parts[2]) or None)


def _composite(ctx: _Context, param: SearchParam, owner: str, piece: str, name: str) -> CompositeValue:
    """``part$part`` — one part per component, each read as the component's own parameter type.

    https://hl7.org/fhir/R4B/search.html#composite
    """
    parts = split_escaped(piece, "$")
    if len(parts) != len(param.components):
        raise invalid(f"{_show(piece)} is not valid for {_show(name)}: it takes {len(param.components)} "
                      "values separated by $", [name])
    values: list[Value] = []
    for component, part in zip(param.components, parts, strict=True):
        sub = ctx.registry.by_url(component.definition)
        if sub is None or sub.type in ("composite", "special"):
            raise _unsupported(f"Composite {param.code} has a component this server cannot search", name)
        if not part:
            raise invalid(f"Empty component in {_show(piece)} for {_show(name)}", [name])
        values.append(_plain_value(ctx, sub, owner, part, name))
    return CompositeValue(tuple(values))


def _reference(ctx: _Context, param: SearchParam, owner: str, piece: str, name: str,
               type_modifier: str | None) -> ReferenceValue:
    """``Type/id``, ``Type/id/_history/v``, ``id``, an absolute URL, or ``url|version`` (canonical).

    https://hl7.org/fhir/R4B/search.html#reference
    """
    parts = split_escaped(piece, "|")
    if len(parts) > 2:
        raise invalid(f"{_show(piece)} is not a reference for {_show(name)}", [name])
    ref = unescape(parts[0])  # a canonical's |version is not kept
    if ctx.base_url and ref.startswith(ctx.base_url + "/"):
        ref = ref[len(ctx.base_url) + 1:]
    elif _SCHEME.match(ref):
        return ReferenceValue(type_modifier, None, ref)
    segments = ref.split("/")
    if len(segments) == 1:
        rtype, rid = type_modifier, segments[0]
    elif len(segments) == 2 or (len(segments) == 4 and segments[2] == "_history"):
        rtype, rid = segments[0], segments[1]
        _check_reference_type(param, owner, rtype, type_modifier, name)
    else:
        raise invalid(f"{_show(piece)} is not a reference for {_show(name)}: use [type]/[id], [id] or a URL",
                      [name])
    if not rid:
        raise invalid(f"{_show(piece)} has no id (for {_show(name)})", [name])
    return ReferenceValue(rtype, rid, None)


def _check_reference_type(param: SearchParam, owner: str, rtype: str, type_modifier: str | None,
                          name: str) -> None:
    """The ``Type`` of ``Type/id`` must agree with a ``:Type`` modifier and be a target of the parameter."""
    if type_modifier is not None and rtype != type_modifier:
        raise invalid(f"Reference to {_show(rtype)} does not match the modifier :{type_modifier} of "
                      f"{_show(name)}", [name])
    _check_target_type(param, owner, rtype, name)


# -- what the R4B models say about a reference element ---------------------------------------------


@lru_cache(maxsize=4096)
def _targets_on(param: SearchParam, owner: str) -> tuple[str, ...]:
    """The types ``param`` can refer to *on* ``owner``: a shared parameter's ``target`` is the union
    over all its bases (``clinical-encounter`` → Encounter, EpisodeOfCare) but ``Observation.encounter``
    is only an Encounter. Narrowed by ``.where(resolve() is X)`` and the model's reference types."""
    allowed: set[str] = set()
    for part in _owner_parts(param, owner):
        resolved = _RESOLVE_IS.findall(part)
        if resolved:
            allowed.update(resolved)
            continue
        types = [t for f in _leaf_fields(part) for t in _reference_types(f)]
        if not types or "Resource" in types:
            return param.targets  # any type, or cannot tell: keep the definition's list
        allowed.update(types)
    narrowed = tuple(t for t in param.targets if t in allowed)
    return narrowed or param.targets


@lru_cache(maxsize=4096)
def _is_canonical(param: SearchParam, owner: str) -> bool:
    """True when the reference parameter's element on ``owner`` is a ``canonical`` (or uri)."""
    for part in _owner_parts(param, owner):
        if _AS_URI.search(part):
            return True
        annotations = [repr(f.annotation) for f in _leaf_fields(part)]
        if any(k in a for a in annotations for k in ("Canonical()", "Uri()", "Url()")):
            return True
    return False


def _owner_parts(param: SearchParam, owner: str) -> list[str]:
    """The ``|``-separated parts of the expression that apply to ``owner``, rooted at it."""
    out = []
    for part in split_union(param.expression or ""):
        head = re.match(r"[A-Za-z]+", part.strip().lstrip("(").strip())
        name = head.group(0) if head else ""
        if name in ("Resource", "DomainResource"):
            out.append(part.replace(f"{name}.", f"{owner}.", 1))
        elif name == owner:
            out.append(part)
    return out


def _leaf_fields(part: str) -> list[FieldInfo]:
    """The model fields a simple FHIRPath ``Type.a.b`` ends on (a choice ``b`` gives each ``bX``);
    ``[]`` when the path cannot be followed through the R4B models."""
    path = re.sub(r"\s+as\s+\w+\s*\)?$", "", _strip_calls(part).strip().lstrip("(")).strip("() ")
    segments = path.split(".")
    try:
        cls = get_fhir_model_class(segments[0])
        for i, seg in enumerate(segments[1:], start=1):
            fields = cls.model_fields
            names = [seg] if seg in fields else [
                f for f in fields if f.startswith(seg) and f[len(seg):][:1].isupper() and not f.endswith("__ext")]
            found = [fields[n] for n in names]
            if i == len(segments) - 1:
                return found
            nested = {m.group(1) for f in found for m in _TYPE_REF.finditer(repr(f.annotation))}
            if len(nested) != 1:
                return []
            cls = get_fhir_model_class(nested.pop())
    except (KeyError, ValueError, ImportError, AttributeError, TypeError):
        return []
    return []


def _reference_types(info: FieldInfo) -> list[str]:
    """``Reference(A|B)`` types fhir.resources records on a field (``["Resource"]`` means any)."""
    extra = info.json_schema_extra
    types = extra.get("enum_reference_types") if isinstance(extra, dict) else None
    return [t for t in types if isinstance(t, str)] if isinstance(types, list) else []


def _strip_calls(expr: str) -> str:
    """Drop ``.fn(...)`` calls (``.where(type='x')``) from a FHIRPath path, keeping nested parens balanced."""
    out: list[str] = []
    i = 0
    while i < len(expr):
        m = _CALL.match(expr, i)
        if not m:
            out.append(expr[i])
            i += 1
            continue
        depth, j = 1, m.end()
        while j < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[j], 0)
            j += 1
        i = j
    return "".join(out)


# -- result parameters (https://hl7.org/fhir/R4B/search.html#Summary) ------------------------------


def _no_modifier(name: str) -> None:
    """Result parameters other than _include/_revinclude take no modifier."""
    if ":" in name:
        raise invalid(f"{name.split(':', 1)[0]} takes no modifier (got {_show(name)})", [name])


def _count(ctx: _Context, name: str, raw: str) -> None:
    """``_count``: a whole number ≥ 0, capped at :data:`MAX_COUNT`."""
    _no_modifier(name)
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise invalid(f"_count must be a whole number ≥ 0, not {_show(raw)}", [name])
    digits = text.lstrip("0") or "0"
    ctx.request.count = MAX_COUNT if len(digits) > 6 else min(int(digits), MAX_COUNT)


def _sort(ctx: _Context, name: str, raw: str) -> None:
    """``_sort=a,-b`` — known parameters of the type; ``-`` for descending."""
    _no_modifier(name)
    for key in (k.strip() for k in raw.split(",")):
        if not key:
            continue
        descending = key.startswith("-")
        code = key[1:] if descending else key
        param = ctx.registry.get(ctx.resource_type, code)
        if param is None:
            raise invalid(f"Cannot sort by {_show(code)}: {ctx.resource_type} has no such search parameter", [name])
        if param.type in ("composite", "special") or param.expression is None:
            raise _unsupported(f"Sorting by {code} (type {param.type}) is not supported", name)
        ctx.request.sort.append(SortKey(param, descending))


def _summary(ctx: _Context, name: str, raw: str) -> None:
    """``_summary=true|text|data|count|false``."""
    _no_modifier(name)
    if raw not in _SUMMARY:
        raise invalid(f"_summary must be one of {', '.join(_SUMMARY)}, not {_show(raw)}", [name])
    ctx.request.summary = raw


def _total(ctx: _Context, name: str, raw: str) -> None:
    """``_total=none|estimate|accurate``."""
    _no_modifier(name)
    if raw not in _TOTAL:
        raise invalid(f"_total must be one of {', '.join(_TOTAL)}, not {_show(raw)}", [name])
    ctx.request.total = raw


def _elements(ctx: _Context, name: str, raw: str) -> None:
    """``_elements=a,b`` — top-level element names (``Type.a`` accepted for the searched type)."""
    _no_modifier(name)
    out: list[str] = []
    for item in (i.strip() for i in raw.split(",")):
        if item.startswith(ctx.resource_type + "."):
            item = item[len(ctx.resource_type) + 1:]
        if not item:
            continue
        if not _ELEMENT.match(item):
            raise invalid(f"{_show(item)} is not an element name (in _elements)", [name])
        if item not in out:
            out.append(item)
    ctx.request.elements = tuple(out)


def _cursor(ctx: _Context, name: str, raw: str) -> None:
    """``_cursor``: the opaque paging token of a ``next``/``previous`` link, kept as given."""
    _no_modifier(name)
    ctx.request.cursor = raw


def _include(ctx: _Context, name: str, raw: str) -> None:
    """``_include`` / ``_revinclude`` ``[:iterate]`` = ``Source:param[:Target]`` | ``Source:*`` | ``*``.

    https://hl7.org/fhir/R4B/search.html#include (``:recurse`` is R4's spelling of ``:iterate``).
    """
    base, _, modifier = name.partition(":")
    reverse = base == "_revinclude"
    if modifier not in ("", "iterate", "recurse"):
        raise invalid(f"{base} takes only the :iterate modifier, not :{_show(modifier)}", [name])
    iterate = bool(modifier)
    parts = raw.split(":")
    if parts == ["*"]:
        if reverse:
            raise invalid("_revinclude=* needs a source type: use _revinclude=Type:*", [name])
        parts = [ctx.resource_type, "*"]
    if len(parts) not in (2, 3) or not all(parts):
        raise invalid(f"{_show(raw)} is not valid for {base}: use SourceType:parameter[:TargetType]", [name])
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not is_resource_type(source):
        raise invalid(f"{_show(source)} is not a resource type (in {base})", [name])
    param = None if code == "*" else _include_param(ctx, source, code, name)
    if target is not None:
        if param is not None:
            _check_target_type(param, source, target, name)
        elif not is_resource_type(target):
            raise invalid(f"{_show(target)} is not a resource type (in {base})", [name])
    _include_warnings(ctx, base, source, param, iterate)
    ctx.request.includes.append(Include(source, param, target, iterate, reverse))


def _include_param(ctx: _Context, source: str, code: str, name: str) -> SearchParam:
    """The reference parameter ``code`` of ``source`` (400 when there is none)."""
    param = ctx.registry.get(source, code)
    if param is None or param.type != "reference":
        raise invalid(f"{source} has no reference search parameter {_show(code)}", [name])
    return param


def _include_warnings(ctx: _Context, base: str, source: str, param: SearchParam | None, iterate: bool) -> None:
    """Without :iterate an include only applies to the matches: say so when it can add nothing."""
    if iterate:
        return
    if base == "_include" and source != ctx.resource_type:
        ctx.request.warnings.append(f"_include={source}:… adds nothing to a {ctx.resource_type} search "
                                    "without :iterate")
    targets = _targets_on(param, source) if param is not None else ()
    if base == "_revinclude" and param is not None and targets and ctx.resource_type not in targets:
        ctx.request.warnings.append(f"_revinclude={source}:{param.code} cannot refer to {ctx.resource_type}")


_RESULT_PARAMS: dict[str, Callable[[_Context, str, str], None]] = {
    "_count": _count, "_sort": _sort, "_summary": _summary, "_total": _total, "_elements": _elements,
    "_cursor": _cursor, "_include": _include, "_revinclude": _include,
}


# -- helpers ------------------------------------------------------------------------------------


def _unsupported(diagnostics: str, name: str) -> FhirError:
    """400 ``not-supported`` naming the parameter (``outcome.not_supported`` has no expression)."""
    return error(400, "not-supported", diagnostics, [name])


def _show(text: str, limit: int = 80) -> str:
    """Quote user input for a message, cut short so a huge value cannot flood the outcome."""
    return repr(text if len(text) <= limit else text[:limit] + "…")

