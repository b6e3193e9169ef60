"""``$validate``: check a resource without storing it.

https://hl7.org/fhir/R4B/resource-operation-validate.html — the result is an OperationOutcome;
the HTTP status is 200 whether or not the resource is valid (as HAPI does).
"""
from __future__ import annotations

from typing import Any

from .. import resources
from ..outcome import FhirError, Issue, information, invalid, operation_outcome
from . import OperationCall, operation

_MODES = ("create", "update", "delete")


@operation("validate", methods={"POST"})
def validate(call: OperationCall) -> tuple[int, dict[str, Any]]:
    resource, mode = _input(call.body)
    if mode is not None and mode not in _MODES:
        raise invalid(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
    if mode == "delete":
        if call.resource_id is None:
            raise invalid("mode=delete needs an instance: POST [type]/[id]/$validate")
        call.repo.read(call.resource_type or "", call.resource_id)
        return 200, information("The resource may be deleted")
    if resource is None:
        raise invalid("$validate needs a resource: the body itself or a Parameters 'resource' part")
    try:
        resources.validate(resource, call.resource_type)
        if mode == "update" or call.resource_id is not None:
            if resource.get("id") is None:
                raise invalid("An update needs the resource's id", (f"{call.resource_type}.id",))
            if call.resource_id is not None and resource.get("id") != call.resource_id:
                raise invalid(f"The body's id {resource.get('id')!r} does not match the URL's id "
                              f"{call.resource_id!r}", (f"{call.resource_type}.id",))
    except FhirError as err:
        return 200, err.outcome()
    return 200, operation_outcome([Issue("information", "informational", "Validation successful: no issues")])


def _input(body: Any) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(body, dict):
        raise invalid("$validate takes a resource or a Parameters resource as its body")
    if body.get("resourceType") != "Parameters":
        return body, None
    resource, mode = None, None
    for part in body.get("parameter") or []:
        if not isinstance(part, dict):
            continue
        if part.get("name") == "resource" and isinstance(part.get("resource"), dict):
            resource = part["resource"]
        elif part.get("name") == "mode":
            mode = part.get("valueCode") or part.get("valueString")
    return resource, mode
