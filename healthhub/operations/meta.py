"""``$meta``: the profiles, tags and security labels of a resource.

https://hl7.org/fhir/R4B/resource-operation-meta.html (instance level).
"""
from __future__ import annotations

from typing import Any

from ..outcome import invalid
from . import OperationCall, operation

_KEEP = ("profile", "tag", "security")


@operation("meta", methods={"GET", "POST"})
def meta(call: OperationCall) -> tuple[int, dict[str, Any]]:
    if call.resource_type is None or call.resource_id is None:
        raise invalid("$meta is supported on an instance: [type]/[id]/$meta")
    stored = call.repo.read(call.resource_type, call.resource_id)
    current = (stored.content or {}).get("meta") or {}
    value = {k: current[k] for k in _KEEP if k in current}
    return 200, {"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": value}]}
