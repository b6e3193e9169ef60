"""``_summary`` and ``_elements``: return part of each resource, marked SUBSETTED.

https://hl7.org/fhir/R4B/search.html#summary and #elements. Which elements are "summary"
elements (and which are mandatory) comes from the R4B models' field metadata, not a list here.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from .. import resources

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS = ("resourceType", "id", "meta")


@lru_cache(maxsize=512)
def _element_flags(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary elements, mandatory elements) of a type, as JSON names."""
    cls = resources.model_class(resource_type)
    if cls is None:
        return frozenset(), frozenset()
    summary, required = set(), set()
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        alias = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(alias)
        if extra.get("element_required"):
            required.add(alias)
    return frozenset(summary), frozenset(required)


def summarize(resource: dict[str, Any], mode: str | None) -> dict[str, Any]:
    """Apply ``_summary=true|text|data|false``."""
    if mode in (None, "false", "count"):
        return resource
    summary, required = _element_flags(resource.get("resourceType", ""))
    if mode == "true":
        keep = set(_ALWAYS) | summary | required
    elif mode == "text":
        keep = set(_ALWAYS) | {"text"} | required
    elif mode == "data":
        keep = set(resource) - {"text"}
    else:
        return resource
    return _mark({k: v for k, v in resource.items() if k in keep or (k.startswith("_") and k[1:] in keep)})


def select_elements(resource: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Apply ``_elements=a,b``: the named top-level elements plus mandatory ones."""
    if not names:
        return resource
    _, required = _element_flags(resource.get("resourceType", ""))
    wanted = set(names) | set(_ALWAYS) | required
    out = {}
    for key, value in resource.items():
        base = key[1:] if key.startswith("_") else key
        # value[x]: "_elements=value" keeps valueQuantity, valueString, …
        if base in wanted or any(base.startswith(n) and base[len(n):][:1].isupper() for n in names):
            out[key] = value
    return _mark(out)


def _mark(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    return {**resource, "meta": meta}
