"""The parsed form of a FHIR search (pure data; https://hl7.org/fhir/R4B/search.html).

``parser.parse`` builds it from a query string; ``compiler`` turns it into SQL. A search is an
AND of :class:`Clause` s; each clause is an OR of :class:`Value` s of one parameter (with one
modifier), possibly reached through a chain or a reverse chain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .registry import SearchParam

#: https://hl7.org/fhir/R4B/search.html#prefix
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code ("system|")


@dataclass(frozen=True)
class OfTypeValue:
    """``identifier:of-type=system|code|value`` (https://hl7.org/fhir/R4B/search.html#modifiers)."""

    type_system: str | None
    type_code: str
    value: str


@dataclass(frozen=True)
class DateValue:
    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class NumberValue:
    prefix: str
    value: Decimal


@dataclass(frozen=True)
class QuantityValue:
    prefix: str
    value: Decimal
    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceValue:
    resource_type: str | None  # None when only an id (or an absolute URL) was given
    id: str | None
    url: str | None  # absolute or canonical URL as given


@dataclass(frozen=True)
class CompositeValue:
    parts: tuple[Value, ...]  # one per component, in definition order


Value = (str | TokenValue | OfTypeValue | DateValue | NumberValue | QuantityValue | ReferenceValue
         | CompositeValue | bool)  # bool: the value of ``:missing``


@dataclass(frozen=True)
class Chain:
    """One link ``subject:Patient.`` — follow ``param`` (a reference) to ``target_type``."""

    param: SearchParam
    target_type: str


@dataclass(frozen=True)
class ReverseChain:
    """``_has:Observation:patient:`` — resources of ``source_type`` whose ``param`` points here."""

    source_type: str
    param: SearchParam


@dataclass(frozen=True)
class Clause:
    param: SearchParam
    modifier: str | None  # exact contains missing not text above below identifier of-type, or a type
    values: tuple[Value, ...]  # OR
    chain: tuple[Chain | ReverseChain, ...] = ()  # applied left to right from the searched type


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class Include:
    source_type: str  # "*" allowed for _revinclude? no: the resource type that holds the reference
    param: SearchParam | None  # None for "*"
    target_type: str | None
    iterate: bool
    reverse: bool  # _revinclude


@dataclass
class SearchRequest:
    resource_type: str
    clauses: list[Clause] = field(default_factory=list)
    ids: list[tuple[str, ...]] = field(default_factory=list)  # _id (AND of ORs)
    last_updated: list[tuple[DateValue, ...]] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 20
    summary: str | None = None  # true text data count false
    elements: tuple[str, ...] = ()
    total: str = "accurate"  # none estimate accurate
    includes: list[Include] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # unknown parameters ignored (lenient)
    cursor: str | None = None  # opaque paging token from a next link
