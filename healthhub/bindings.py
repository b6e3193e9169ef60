"""Required code bindings, checked on a validated R4B model.

``fhir.resources`` parses ``code`` elements as plain strings; its field metadata carries the
codes of the element's value set (``enum_values``) where the specification lists them all in
the element's short description (``male | female | other | unknown``). A list that ends in
``+`` is incomplete (the value set has more codes than the short text names), so only complete
lists are enforced. https://hl7.org/fhir/R4B/terminologies.html#required
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from pydantic import BaseModel


@cache
def _coded_fields(cls: type[BaseModel]) -> tuple[tuple[str, str, frozenset[str] | None], ...]:
    """(python name, JSON name, allowed codes or None) of the fields of ``cls`` that can hold a
    bound code: coded fields with a complete list, and fields holding elements (``abc.…Type``,
    which may contain some). Plain primitives without a list are left out: validation walks
    every resource, so skipping them matters."""
    out = []
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        codes = extra.get("enum_values")
        allowed = frozenset(str(c) for c in codes) if isinstance(codes, list) and codes and "+" not in codes \
            else None
        if allowed is not None or "abc." in str(info.annotation):
            out.append((name, info.alias or name, allowed))
    return tuple(out)


#: A FHIRPath built only when a violation is reported: (parent, JSON name, list index or None).
_Path = tuple[Any, str, "int | None"] | str


def violations(model: BaseModel, path: _Path) -> Iterator[tuple[str, str, frozenset[str]]]:
    """Yield (FHIRPath, bad code, allowed codes) for each code outside its required value set."""
    for name, alias, allowed in _coded_fields(type(model)):
        value = getattr(model, name, None)
        if value is None:
            continue
        many = isinstance(value, list)
        for i, item in enumerate(value if many else (value,)):
            if isinstance(item, BaseModel):
                yield from violations(item, (path, alias, i if many else None))
            elif allowed is not None and isinstance(item, str) and item not in allowed:
                yield _render((path, alias, i if many else None)), item, allowed


def _render(path: _Path) -> str:
    if isinstance(path, str):
        return path
    parent, alias, index = path
    return f"{_render(parent)}.{alias}" + ("" if index is None else f"[{index}]")
