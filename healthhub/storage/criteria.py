"""Match criteria for conditional interactions (``If-None-Exist``, conditional update/delete,
conditional references ``Patient?identifier=...``), compiled to SQL.

Only ``_id`` and ``identifier`` are matched here; the general search compiler replaces this
module when search lands. Any other parameter is refused with 400 rather than ignored, since
ignoring a criterion would make a conditional write hit the wrong resource.
https://hl7.org/fhir/R4B/http.html#ccreate
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Select, and_, or_, select

from ..outcome import invalid, not_supported
from .models import Resource, ResourceIdentifier

SUPPORTED = ("_id", "identifier")
#: Result-shaping parameters that do not change which resources match.
_IGNORED = frozenset({"_format", "_pretty", "_count", "_summary", "_elements", "_total", "_sort"})


@dataclass(frozen=True)
class Token:
    """A token search value: ``system|code``, ``|code`` (no system), ``code`` (any system)."""

    system: str | None  # None = any system; "" = no system
    code: str | None  # None = any code (``system|``)


@dataclass(frozen=True)
class Criteria:
    """Parsed criteria: AND across entries, OR within one entry's values."""

    ids: tuple[tuple[str, ...], ...] = ()
    identifiers: tuple[tuple[Token, ...], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.ids and not self.identifiers


def parse(query: str) -> Criteria:
    """Parse a query string such as ``identifier=http://x|123&_id=a,b``."""
    ids: list[tuple[str, ...]] = []
    identifiers: list[tuple[Token, ...]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _IGNORED:
            continue
        if name not in SUPPORTED:
            raise not_supported(
                f"Search parameter {name!r} is not supported in conditional criteria; "
                f"supported: {', '.join(SUPPORTED)}")
        values = tuple(v for v in _split_or(value) if v != "")
        if not values:
            raise invalid(f"Search parameter {name!r} has no value")
        if name == "_id":
            ids.append(values)
        else:
            identifiers.append(tuple(_token(v) for v in values))
    return Criteria(tuple(ids), tuple(identifiers))


def _split_or(value: str) -> list[str]:
    # https://hl7.org/fhir/R4B/search.html#escaping : "\," is a literal comma.
    parts, cur, i = [], "", 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur += value[i + 1]
            i += 2
            continue
        if ch == ",":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return parts


def _token(value: str) -> Token:
    if "|" not in value:
        return Token(None, value)
    system, code = value.split("|", 1)
    return Token(system, code or None)


def select_ids(resource_type: str, criteria: Criteria, limit: int | None = None) -> Select[Any]:
    """One SELECT of the ids of current, non-deleted ``resource_type`` resources matching."""
    stmt = select(Resource.id).where(Resource.resource_type == resource_type, Resource.deleted.is_(False))
    for alternatives in criteria.ids:
        stmt = stmt.where(Resource.id.in_(alternatives))
    for tokens in criteria.identifiers:
        # IN (subquery on the identifier index) lets both databases start from the index
        # rather than test every resource of the type.
        conds = []
        for tok in tokens:
            c = []
            if tok.code is not None:
                c.append(ResourceIdentifier.value == tok.code)
            if tok.system is not None:
                c.append(ResourceIdentifier.system == tok.system)
            conds.append(and_(*c))
        stmt = stmt.where(Resource.id.in_(
            select(ResourceIdentifier.resource_id).where(ResourceIdentifier.resource_type == resource_type,
                                                         or_(*conds))))
    stmt = stmt.order_by(Resource.id)
    return stmt.limit(limit) if limit is not None else stmt
