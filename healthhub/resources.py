"""R4B resource types and validation with ``fhir.resources`` (https://hl7.org/fhir/R4B/).

The set of resource types is read from the R4B models themselves, so the CapabilityStatement
and URL checks cannot drift from what validation accepts.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import islice
from typing import Any

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir.resources.R4B.resource import Resource as _ResourceModel
from pydantic import ValidationError

from . import bindings
from .outcome import FhirError, Issue

FHIR_VERSION = "4.3.0"
# https://hl7.org/fhir/R4B/datatypes.html#id — anchored with \Z, not $: "$" also matches before a
# trailing newline, so "abc\n" passed as an id (tests/system/test_hostile_input.py).
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
_ABSTRACT = frozenset({"Resource", "DomainResource"})
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}\Z")


@lru_cache(maxsize=512)
def model_class(resource_type: str) -> type[_ResourceModel] | None:
    """The R4B model of a concrete resource type, or None when it is not one."""
    if resource_type in _ABSTRACT or not _TYPE_NAME.match(resource_type):
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, ImportError):
        return None
    if isinstance(cls, type) and issubclass(cls, _ResourceModel) and cls.get_resource_type() == resource_type:
        return cls
    return None


def is_resource_type(name: str) -> bool:
    """True when ``name`` is a concrete R4B resource type."""
    return model_class(name) is not None


@lru_cache(maxsize=1)
def resource_types() -> tuple[str, ...]:
    """All concrete R4B resource types, sorted."""
    names = (n[:-4] for n in dir(fhirtypes) if n.endswith("Type") and n[:1].isupper())
    return tuple(sorted(n for n in names if is_resource_type(n)))


def check_id(value: Any, expression: str = "id") -> str:
    """Return ``value`` when it is a valid FHIR id, else raise a 400."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise FhirError(400, [Issue("error", "value", f"Invalid resource id {value!r}: "
                                    "ids are 1-64 characters of A-Z a-z 0-9 - .", (expression,))])
    return value


def validate(resource: Any, expected_type: str | None = None) -> dict[str, Any]:
    """Validate one resource against its R4B model; raise a FhirError naming every bad element.

    The resource is returned unchanged: the stored JSON is what the client sent (plus the
    server's ``meta``), not the model's re-serialisation, which would rewrite date-times.
    """
    if not isinstance(resource, dict):
        raise FhirError(400, [Issue("error", "structure", "The body must be a JSON object (a FHIR resource)")])
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise FhirError(400, [Issue("error", "required", "The resource has no resourceType", ("resourceType",))])
    if expected_type is not None and rtype != expected_type:
        raise FhirError(400, [Issue("error", "invalid",
                                    f"resourceType {rtype!r} does not match the URL's type {expected_type!r}",
                                    ("resourceType",))])
    cls = model_class(rtype)
    if cls is None:
        raise FhirError(400, [Issue("error", "not-supported", f"Unknown resource type {rtype!r}",
                                    ("resourceType",))])
    if "id" in resource:
        check_id(resource["id"], f"{rtype}.id")
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        raise FhirError(400, _listed(rtype, _issues(rtype, exc.errors(include_url=False)),  # type: ignore[arg-type]
                                     exc.error_count())) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise FhirError(400, [Issue("error", "structure", f"Invalid {rtype}: {exc}", (rtype,))]) from None
    bad_codes = [Issue("error", "code-invalid", f"{path}: {code!r} is not one of {', '.join(sorted(allowed))}",
                       (path,)) for path, code, allowed in bindings.violations(resource, rtype)]
    if bad_codes:
        raise FhirError(400, _listed(rtype, bad_codes, len(bad_codes)))
    return resource


#: Problems listed in one OperationOutcome. A body of a million wrong values (a 10 MB array of
#: numbers) was answered with one issue per value: a 300 MB OperationOutcome, built in 30 s.
MAX_ISSUES = 100


def _listed(rtype: str, issues: Iterable[Issue], total: int) -> list[Issue]:
    """The first :data:`MAX_ISSUES` of ``total`` problems, and one more issue saying how many
    are not listed."""
    listed = list(islice(issues, MAX_ISSUES))
    if total > len(listed):
        listed.append(Issue("error", "invalid", f"{total - len(listed)} more problems are not listed (at most "
                            f"{MAX_ISSUES} are)", (rtype,)))
    return listed


def _issues(rtype: str, errors: Iterable[dict[str, Any]]) -> Iterable[Issue]:
    for err in errors:
        path = fhirpath_of(rtype, err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            msg = f"Unknown element '{path.rsplit('.', 1)[-1]}'"
            code = "structure"
        elif kind == "missing":
            msg = "Missing required element"
            code = "required"
        else:
            msg = str(err.get("msg", "Invalid value"))
            code = "value"
        yield Issue("error", code, f"{path}: {msg}", (path,))


def fhirpath_of(rtype: str, loc: Iterable[Any]) -> str:
    """Turn a pydantic error location into a FHIRPath expression: ``Patient.name[0].given``."""
    path = rtype
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("__") and part not in {"function-after", "function-before"}:
            path += f".{part}"
    return path
