"""Required code bindings, checked on a resource that its R4B model has validated.

``fhir.resources`` parses ``code`` elements as plain strings; its field metadata carries the
codes of the element's value set (``enum_values``) where the specification lists them all in
the element's short description (``male | female | other | unknown``). A list that ends in
``+`` is incomplete (the value set has more codes than the short text names), so only complete
lists are enforced. https://hl7.org/fhir/R4B/terminologies.html#required

The check walks the resource's JSON, guided by a plan per model class made once from the
models' field metadata: a validated resource has exactly the model's shape, and a dict walk
over the keys an element sets costs a third of a walk over the model's attributes (every
write runs it; bench/RESULTS.md, fourth session).
"""
from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel

#: A field holding any resource (``contained``, ``Bundle.entry.resource``): the class comes from
#: each value's ``resourceType``.
_ANY_RESOURCE = "Resource"
_ELEMENT_TYPE = re.compile(r"abc\.(\w+)Type\b")

#: JSON name → (allowed codes or None, class of the element it holds or None).
_Plan = dict[str, tuple[frozenset[str] | None, "type[BaseModel] | str | None"]]


@cache
def _plan(cls: type[BaseModel]) -> _Plan:
    """The fields of ``cls`` that can hold a bound code: coded fields with a complete list, and
    fields holding elements (which may contain some). Plain primitives without a list are left out."""
    out: _Plan = {}
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        codes = extra.get("enum_values")
        allowed = frozenset(str(c) for c in codes) if isinstance(codes, list) and codes and "+" not in codes \
            else None
        child: type[BaseModel] | str | None = None
        found = _ELEMENT_TYPE.search(str(info.annotation))
        if found is not None:
            child = _ANY_RESOURCE if found.group(1) == _ANY_RESOURCE else _model(found.group(1))
        if allowed is not None or child is not None:
            out[info.alias or name] = (allowed, child)
    return out


@cache
def _model(name: str) -> type[BaseModel] | None:
    try:
        cls = get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


#: A FHIRPath built only when a violation is reported: (parent, JSON name, list index or None).
_Path = tuple[Any, str, "int | None"] | str


def violations(resource: dict[str, Any], resource_type: str) -> list[tuple[str, str, frozenset[str]]]:
    """(FHIRPath, bad code, allowed codes) of each code outside its required value set, in the
    order the resource's JSON has them. ``resource`` must have passed its model's validation."""
    found: list[tuple[str, str, frozenset[str]]] = []
    cls = _model(resource_type)
    if cls is not None:
        _walk(resource, cls, resource_type, found)
    return found


def _walk(data: dict[str, Any], cls: type[BaseModel], path: _Path, found: list[tuple[str, str, frozenset[str]]]) -> None:
    plan = _plan(cls)
    for key, value in data.items():
        field = plan.get(key)
        if field is None:
            continue
        allowed, child = field
        many = type(value) is list
        for i, item in enumerate(value if many else (value,)):
            if type(item) is dict:
                if child == _ANY_RESOURCE:
                    rtype = item.get("resourceType")
                    target = _model(rtype) if type(rtype) is str else None
                else:
                    target = child if isinstance(child, type) else None
                if target is not None:
                    _walk(item, target, (path, key, i if many else None), found)
            elif allowed is not None and type(item) is str and item not in allowed:
                found.append((_render((path, key, i if many else None)), item, allowed))


def _render(path: _Path) -> str:
    if isinstance(path, str):
        return path
    parent, alias, index = path
    return f"{_render(parent)}.{alias}" + ("" if index is None else f"[{index}]")
