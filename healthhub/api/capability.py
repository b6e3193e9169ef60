"""The CapabilityStatement, generated from what this server has registered.

Resource types come from the R4B models, interactions from the ``@supports`` decorators on the
views, operations from the operation registry and search parameters from the search module —
so the statement cannot list what the code does not do.
https://hl7.org/fhir/R4B/capabilitystatement.html
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from .. import __version__, resources
from ..operations import load as load_operations
from ..search.registry import default_registry, is_searchable

F = TypeVar("F", bound=Callable[..., Any])

#: Interactions implemented by the views, by level (filled in by ``@supports`` at import).
TYPE_INTERACTIONS: set[str] = set()
SYSTEM_INTERACTIONS: set[str] = set()
_SYSTEM_CODES = frozenset({"transaction", "batch", "search-system", "history-system"})
_TYPE_ORDER = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type",
               "create", "search-type")


def supports(*codes: str) -> Callable[[F], F]:
    """Declare the FHIR interactions (restful-interaction codes) a view implements."""

    def mark(view: F) -> F:
        for code in codes:
            (SYSTEM_INTERACTIONS if code in _SYSTEM_CODES else TYPE_INTERACTIONS).add(code)
        return view

    return mark


@lru_cache(maxsize=4)
def capability_statement(base_url: str, date: str) -> dict[str, Any]:
    """Build the statement for the FHIR endpoint at ``base_url``."""
    ops = load_operations()
    type_ops = [o for o in ops.values() if o.levels & {"type", "instance"}]
    system_ops = [o for o in ops.values() if "system" in o.levels]
    type_interactions = [{"code": c} for c in _TYPE_ORDER if c in TYPE_INTERACTIONS]
    registry = default_registry()
    conditional = "search-type" in TYPE_INTERACTIONS  # conditional interactions use the search compiler
    resource_entries = []
    for rtype in resources.resource_types():
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": type_interactions,
            "versioning": "versioned-update",
            "readHistory": "vread" in TYPE_INTERACTIONS,
            "updateCreate": "update" in TYPE_INTERACTIONS,
            "conditionalCreate": conditional,
            "conditionalRead": "not-supported",
            "conditionalUpdate": conditional,
            "conditionalDelete": "single" if conditional else "not-supported",
            "referencePolicy": ["literal", "logical"],
        }
        if "search-type" in TYPE_INTERACTIONS:
            entry["searchParam"] = [
                {"name": p.code, "definition": p.url, "type": p.type}
                for p in sorted(registry.params_for(rtype).values(), key=lambda p: p.code)
                if is_searchable(p)]
            entry["searchInclude"] = ["*", *sorted(f"{rtype}:{p.code}" for p in registry.params_for(rtype).values()
                                                   if p.type == "reference")]
        own_ops = [o for o in type_ops if o.resource_types is None or rtype in o.resource_types]
        if own_ops:
            entry["operation"] = [{"name": o.name, "definition": o.definition} for o in own_ops]
        resource_entries.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "HealthHub FHIR R4B REST API",
        "security": _security(base_url.removesuffix("/fhir")),
        "resource": resource_entries,
        "interaction": [{"code": c} for c in sorted(SYSTEM_INTERACTIONS)],
    }
    if system_ops:
        rest["operation"] = [{"name": o.name, "definition": o.definition} for o in system_ops]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "HealthHub",
        "kind": "instance",
        "software": {"name": "HealthHub", "version": __version__},
        "implementation": {"description": "HealthHub FHIR server", "url": base_url},
        "fhirVersion": resources.FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }


def _security(root: str) -> dict[str, Any]:
    """SMART on FHIR: the service code and the OAuth endpoints, in the extension older SMART
    clients (fhirclient) read (https://hl7.org/fhir/smart-app-launch/conformance.html)."""
    uris = {"authorize": "authorize", "token": "token", "introspect": "introspect", "revoke": "revoke"}
    return {
        "cors": True,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}],
                     "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"}],
        "description": f"SMART App Launch 2.x and Backend Services; discovery at {root}/.well-known/smart-configuration",
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": name, "valueUri": f"{root}/auth/{path}"} for name, path in uris.items()]}],
    }
