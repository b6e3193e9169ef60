"""Search parameters as data: loaded from the official ``SearchParameter`` Bundle in ``fhir/``,
plus HealthHub's own definitions (``fhir/search-parameters-healthhub.json``: parameters R4B
lacks, such as ``address-district``), as HAPI FHIR loads custom SearchParameters beside the core.

Nothing here is a hand-typed list of parameters: a new parameter is a new definition in one of
those files (then ``healthhub search reindex``).
https://hl7.org/fhir/R4B/searchparameter.html
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import jsonio, resources
from ..config import PROJECT_ROOT

DEFINITIONS = PROJECT_ROOT / "fhir" / "search-parameters.json"
#: Definitions of HealthHub's own; a code defined here and in the core replaces the core one.
EXTRA_DEFINITIONS = PROJECT_ROOT / "fhir" / "search-parameters-healthhub.json"
_ABSTRACT_BASES = ("Resource", "DomainResource")
_RESOLVE_IS = re.compile(r"\.where\(\s*resolve\(\)\s+is\s+([A-Za-z]+)\s*\)")


@dataclass(frozen=True)
class Component:
    definition: str  # canonical URL of the component's SearchParameter
    expression: str  # FHIRPath relative to the composite's value


@dataclass(frozen=True)
class SearchParam:
    """One ``SearchParameter`` definition (shared by all its base types)."""

    code: str
    type: str  # number date string token reference composite quantity uri special
    url: str
    base: tuple[str, ...]
    expression: str | None
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    description: str = ""

    def expression_for(self, resource_type: str) -> tuple[str, tuple[str, ...]] | None:
        """The part of the expression that applies to ``resource_type``, rooted at it, with
        ``.where(resolve() is X)`` removed and X returned as the allowed reference types
        (fhirpathpy has no ``resolve()``; the indexer filters by the reference's type instead)."""
        if not self.expression:
            return None
        parts = []
        resolve_types: set[str] = set()
        for part in split_union(self.expression):
            part = part.strip()
            inner = part[1:-1].strip() if part.startswith("(") and part.endswith(")") else part
            root = re.match(r"[A-Za-z]+", inner)
            head = root.group(0) if root else ""
            if head in _ABSTRACT_BASES:
                part = part.replace(f"{head}.", f"{resource_type}.", 1)
            elif head != resource_type:
                continue
            for found in _RESOLVE_IS.findall(part):
                resolve_types.add(found)
            parts.append(_RESOLVE_IS.sub("", part))
        if not parts:
            return None
        return " | ".join(parts), tuple(sorted(resolve_types))


#: Defined for every type, but answered by no index (see the search issue's notes).
UNSUPPORTED = frozenset({"_text", "_content", "_list", "_query", "_filter", "_has"})


def is_searchable(param: SearchParam) -> bool:
    """True when the server answers searches on ``param`` (what the CapabilityStatement lists)."""
    return param.type != "special" and param.code not in UNSUPPORTED


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on ``|`` outside parentheses and string literals."""
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, False
    for ch in expression:
        if ch == "'" and (not cur or cur[-1] != "\\"):
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == "|":
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


@dataclass(frozen=True)
class Storage:
    """Where the index rows of a parameter of one resource type live.

    Most parameters have rows of their own. A parameter whose expression is the union of other
    parameters' expressions (``combo-code`` = ``code`` | ``component-code``) or another reference
    parameter restricted to one target type (``patient`` = ``subject.where(resolve() is
    Patient)``) is answered from those parameters' rows instead, so the same values are not
    extracted and stored twice: a fifth of the index rows of a Synthea resource
    (bench/RESULTS.md, fourth session)."""

    params: tuple[str, ...]
    #: Only rows pointing at this type (reference parameters).
    target_type: str | None = None

    def own(self, code: str) -> bool:
        """True when ``code`` is indexed under its own name."""
        return self.params == (code,) and self.target_type is None


class Registry:
    """The search parameters of every resource type."""

    def __init__(self, params: list[SearchParam]) -> None:
        self._storage: dict[tuple[str, str], Storage] = {}
        self._by_url = {p.url: p for p in params}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        common = {p.code: p for p in params if set(p.base) & set(_ABSTRACT_BASES)}
        for rtype in resources.resource_types():
            own = dict(common)
            own.update({p.code: p for p in params if rtype in p.base})
            self._by_type[rtype] = own

    @classmethod
    def load(cls, *paths: Path) -> Registry:
        params = []
        for path in paths or (DEFINITIONS, EXTRA_DEFINITIONS):
            bundle = jsonio.loads(path.read_bytes())
            params += [_param(e["resource"]) for e in bundle.get("entry", [])
                       if e.get("resource", {}).get("resourceType") == "SearchParameter"]
        return cls(params)

    def params_for(self, resource_type: str) -> dict[str, SearchParam]:
        """Code → parameter for one resource type (including the common ``_id``, ``_tag``, …)."""
        return self._by_type.get(resource_type, {})

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self._by_type.get(resource_type, {}).get(code)

    def by_url(self, url: str) -> SearchParam | None:
        return self._by_url.get(url)

    def storage(self, resource_type: str, code: str) -> Storage:
        """Where the index rows of ``code`` on ``resource_type`` live (see :class:`Storage`)."""
        key = (resource_type, code)
        found = self._storage.get(key)
        if found is None:
            found = self._storage[key] = self._find_storage(resource_type, code)
        return found

    def _find_storage(self, resource_type: str, code: str) -> Storage:
        own = Storage((code,))
        param = self.get(resource_type, code)
        found = param.expression_for(resource_type) if param is not None else None
        if param is None or found is None or code.startswith("_"):
            return own
        expression, allowed = found
        parts = split_union(expression)
        others = [(frozenset(split_union(f[0])), f[1], p) for c, p in self.params_for(resource_type).items()
                  if c != code and p.type == param.type and not c.startswith("_")
                  and (f := p.expression_for(resource_type)) is not None]
        # A base has fewer parts than the parameter it serves (a single one and no target filter
        # for a reference alias), so looking up whether it has rows of its own terminates.
        if len(parts) == 1 and len(allowed) == 1 and param.type == "reference":
            for their_parts, their_allowed, base in others:
                if their_parts == {parts[0]} and not their_allowed and (not base.targets or allowed[0] in base.targets):
                    return Storage((base.code,), allowed[0])
            return own
        if len(parts) < 2 or allowed:
            return own
        # An exact cover of the parts by other parameters' parts (largest first).
        remaining, codes = set(parts), []
        for their_parts, their_allowed, base in sorted(others, key=lambda o: -len(o[0])):
            if not their_allowed and their_parts <= remaining and len(their_parts) < len(parts) \
                    and self._same_rows(param, base) and self._own_rows(resource_type, base.code):
                remaining -= their_parts
                codes.append(base.code)
        return Storage(tuple(sorted(codes))) if not remaining and len(codes) > 1 else own

    def _own_rows(self, resource_type: str, code: str) -> bool:
        return self.storage(resource_type, code).own(code)

    def _same_rows(self, param: SearchParam, base: SearchParam) -> bool:
        """True when ``base``'s rows are ``param``'s for the part they share: same targets, and for
        composites the same component expressions of the same types, in order."""
        if param.targets != base.targets or len(param.components) != len(base.components):
            return False
        for mine, theirs in zip(param.components, base.components, strict=True):
            a, b = self.by_url(mine.definition), self.by_url(theirs.definition)
            if a is None or b is None or a.type != b.type or mine.expression != theirs.expression:
                return False
        return True


def _param(sp: dict[str, Any]) -> SearchParam:
    return SearchParam(
        code=sp["code"], type=sp["type"], url=sp["url"], base=tuple(sp.get("base", ())),
        expression=sp.get("expression"), targets=tuple(sp.get("target", ())),
        components=tuple(Component(c["definition"], c["expression"]) for c in sp.get("component", ())),
        modifiers=tuple(sp.get("modifier", ())), comparators=tuple(sp.get("comparator", ())),
        description=sp.get("description", ""),
    )


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry built from the definitions in ``fhir/`` (loaded once per process)."""
    return Registry.load()
