"""FHIR operations as plug-ins: a handler per ``OperationDefinition`` under ``fhir/operations/``.

The definition decides where an operation answers (system / type / instance, which resource
types) and what the CapabilityStatement says; the handler only does the work. A handler without
a definition, or a definition without a handler, is a start-up error.
https://hl7.org/fhir/R4B/operations.html
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .. import jsonio
from ..config import PROJECT_ROOT
from ..storage.repository import Repository

DEFINITIONS_DIR = PROJECT_ROOT / "fhir" / "operations"


@dataclass(frozen=True)
class OperationCall:
    """One invocation: where it was called and with what input."""

    repo: Repository
    base_url: str
    level: str  # system | type | instance
    method: str
    resource_type: str | None = None
    resource_id: str | None = None
    body: Any = None  # parsed JSON body (a resource or Parameters) for POST
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # the request's (Prefer, Accept, …)
    url: str = ""  # the request URL as the client sent it
    client_id: str | None = None  # the OAuth client calling


#: A handler returns (HTTP status, FHIR resource) or (HTTP status, FHIR resource, response headers).
Handler = Callable[[OperationCall], "tuple[int, dict[str, Any]] | tuple[int, dict[str, Any], dict[str, str]]"]


@dataclass(frozen=True)
class Operation:
    name: str
    definition: str  # canonical URL of the OperationDefinition
    levels: frozenset[str]
    methods: frozenset[str]
    affects_state: bool
    resource_types: frozenset[str] | None  # None: every type
    handler: Handler

    def applies_to(self, level: str, resource_type: str | None) -> bool:
        return level in self.levels and (
            resource_type is None or self.resource_types is None or resource_type in self.resource_types)


_HANDLERS: dict[str, tuple[Handler, frozenset[str]]] = {}


def operation(code: str, methods: set[str]) -> Callable[[Handler], Handler]:
    """Register ``handler`` for the OperationDefinition whose ``code`` is ``code``."""

    def register(handler: Handler) -> Handler:
        _HANDLERS[code] = (handler, frozenset(methods))
        return handler

    return register


@lru_cache(maxsize=1)
def load() -> dict[str, Operation]:
    """Pair the definitions in ``fhir/operations`` with their handlers."""
    from . import everything, export, match, meta, validate  # noqa: F401  (they register their handlers)

    definitions = {}
    for path in sorted(DEFINITIONS_DIR.glob("OperationDefinition-*.json")):
        definition = jsonio.loads(path.read_bytes())
        definitions[definition["code"]] = definition
    if set(definitions) != set(_HANDLERS):
        raise RuntimeError(f"operations without a definition: {sorted(set(_HANDLERS) - set(definitions))}; "
                           f"definitions without a handler: {sorted(set(definitions) - set(_HANDLERS))}")
    registry = {}
    for code, d in definitions.items():
        handler, methods = _HANDLERS[code]
        levels = frozenset(level for level in ("system", "type", "instance") if d.get(level))
        types = frozenset(d.get("resource") or ["Resource"])
        registry[code] = Operation(code, d["url"], levels, methods, bool(d.get("affectsState")),
                                   None if "Resource" in types else types, handler)
    return registry
