"""Search parameters as data: loaded from the official ``SearchParameter`` Bundle in ``fhir/``.

Nothing here is a hand-typed list of parameters: a new parameter is a new definition in
``fhir/search-parameters.json`` (then ``healthhub search reindex``).
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


class Registry:
    """The search parameters of every resource type."""

    def __init__(self, params: list[SearchParam]) -> None:
        self._by_url = {p.url: p for p in params}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        common = {p.code: p for p in params if set(p.base) & set(_ABSTRACT_BASES)}
        for rtype in resources.resource_types():
            own = dict(common)
            own.update({p.code: p for p in params if rtype in p.base})
            self._by_type[rtype] = own

    @classmethod
    def load(cls, path: Path = DEFINITIONS) -> Registry:
        bundle = jsonio.loads(path.read_bytes())
        params = [_param(e["resource"]) for e in bundle.get("entry", [])
                  if e.get("resource", {}).get("resourceType") == "SearchParameter"]
        return cls(params)

    def params_for(self, resource_type: str) -> dict[str, SearchParam]:
        """Code → parameter for one resource type (including the common ``_id``, ``_tag``, …)."""
        return self._by_type.get(resource_type, {})

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self._by_type.get(resource_type, {}).get(code)

    def by_url(self, url: str) -> SearchParam | None:
        return self._by_url.get(url)


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
    """The registry built from ``fhir/search-parameters.json`` (loaded once per process)."""
    return Registry.load()
