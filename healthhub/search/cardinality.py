"""Which search parameters find at most one value in a resource of a given type.

Repeated parameters AND together, and for a parameter with several values each repetition may
be met by a different value (https://hl7.org/fhir/R4B/search.html#combining). When the
expression can only reach one element — ``Encounter.period``, the choice ``Observation.effective``
— both repetitions must hold for the same index row, so ``date=ge…&date=lt…`` can be answered
by one range lookup over that row instead of two open-ended scans (bench/RESULTS.md, finding 6).
The answer comes from the element definitions of the R4B models: a path whose every step has
max cardinality 1. Anything this module does not understand is "several values", the safe side.
"""
from __future__ import annotations

import re
import typing
from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class

from .. import resources
from .registry import SearchParam, split_union

#: Type filters and ``where`` keep a subset of what the path before them finds.
_FILTERS = re.compile(r"\.as\(\s*[A-Za-z]+\s*\)|\s+as\s+[A-Za-z]+|\.ofType\(\s*[A-Za-z]+\s*\)")
_PATH = re.compile(r"^[A-Za-z]+(?:\.[A-Za-z]+)*$")


@lru_cache(maxsize=4096)
def single_valued(resource_type: str, param: SearchParam) -> bool:
    """True when ``param`` extracts at most one value from any ``resource_type`` resource."""
    found = param.expression_for(resource_type)
    if found is None:
        return False
    paths = set()
    for branch in split_union(found[0]):
        path = element_path(branch)
        if path is None:
            return False
        paths.add(path)
    # Several branches are one element only when they are type filters of one choice element
    # (``Condition.onset.as(dateTime) | Condition.onset.as(Period)``).
    return len(paths) == 1 and _at_most_one(paths.pop())


def element_path(branch: str) -> str | None:
    """``(Observation.value as Quantity)`` → ``Observation.value``; None for other expressions."""
    text = branch.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    text = _FILTERS.sub("", _drop_where(text)).strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text if _PATH.match(text) else None


def _drop_where(text: str) -> str:
    """Remove ``.where(…)`` calls (balanced parentheses)."""
    out = text
    while (start := out.find(".where(")) >= 0:
        depth, end = 0, -1
        for i in range(start + len(".where"), len(out)):
            depth += {"(": 1, ")": -1}.get(out[i], 0)
            if depth == 0:
                end = i
                break
        if end < 0:
            return out
        out = out[:start] + out[end + 1:]
    return out


def _at_most_one(path: str) -> bool:
    steps = path.split(".")
    model: typing.Any = resources.model_class(steps[0])
    for i, step in enumerate(steps[1:], start=1):
        if model is None:
            return False
        fields = model.model_fields
        if step in fields:
            annotation = fields[step].annotation
        else:  # a choice element: effective → effectiveDateTime, effectivePeriod, …
            choices = [f for f in fields.values()
                       if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("one_of_many") == step]
            if not choices or i < len(steps) - 1:
                return False  # unknown, or a step below a choice (type unknown here)
            return not any(_is_list(f.annotation) for f in choices)
        if _is_list(annotation):
            return False
        model = _element_model(annotation)
    return True


def _is_list(annotation: typing.Any) -> bool:
    return "List[" in str(annotation) or "list[" in str(annotation)


def _element_model(annotation: typing.Any) -> typing.Any:
    """The model class of a non-list element annotation (``PeriodType | None`` → Period)."""
    for arg in typing.get_args(annotation) or (annotation,):
        name = getattr(arg, "__name__", "")
        if name.endswith("Type") and name != "NoneType":
            try:
                return get_fhir_model_class(name[:-len("Type")])
            except (KeyError, ValueError):
                return None
    return None
