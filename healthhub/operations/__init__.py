"""FHIR operations as plug-ins: ``(name) → handler``, registered by decorator.

The CapabilityStatement lists exactly what is registered here
(https://hl7.org/fhir/R4B/operations.html).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..storage.repository import Repository


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


#: A handler returns (HTTP status, FHIR resource).
Handler = Callable[[OperationCall], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Operation:
    name: str
    definition: str  # canonical URL of the OperationDefinition
    levels: frozenset[str]
    methods: frozenset[str]
    affects_state: bool
    handler: Handler


REGISTRY: dict[str, Operation] = {}


def operation(name: str, definition: str, levels: set[str], methods: set[str],
              affects_state: bool = False) -> Callable[[Handler], Handler]:
    """Register ``handler`` as ``$name``."""

    def register(handler: Handler) -> Handler:
        REGISTRY[name] = Operation(name, definition, frozenset(levels), frozenset(methods), affects_state, handler)
        return handler

    return register


def load() -> dict[str, Operation]:
    """Import the operation modules (they register themselves) and return the registry."""
    from . import meta, validate  # noqa: F401

    return REGISTRY
