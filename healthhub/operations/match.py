"""``Patient/$match``: the stored Patients that may be the person described by a given one.

https://hl7.org/fhir/R4B/patient-operation-match.html — ``POST [base]/Patient/$match`` with a
``Parameters`` body: ``resource`` (a Patient, not stored), ``onlyCertainMatches`` (boolean),
``count`` (integer). The answer is a ``searchset`` Bundle ordered from most to least likely,
each entry with ``search.score`` (0..1) and the match-grade extension
(https://hl7.org/fhir/R4B/extension-match-grade.html), as the MPI scores pairs when it links
records (:mod:`healthhub.ingest.matching`). Candidates are the stored Patients sharing a blocking
key with the given one, confined to those the caller's token may read; ``certainly-not`` ones
are left out. ``onlyCertainMatches`` keeps the ``certain`` ones only (the records the hub would
link on its own: one person). Without ``count`` the hub returns at most :data:`DEFAULT_COUNT`.
"""
from __future__ import annotations

from typing import Any

from .. import resources
from ..ingest.matching import MATCH_GRADE_URL
from ..mpi.index import candidates
from ..outcome import invalid
from . import OperationCall, operation

DEFAULT_COUNT, MAX_COUNT = 10, 100


@operation("match", methods={"POST"})
def match(call: OperationCall) -> tuple[int, dict[str, Any]]:
    patient, only_certain, count = _input(call)
    resources.validate(patient, "Patient")  # a valid instance, not necessarily a complete one (the spec)
    access = call.repo.ctx.access
    visible = access.restriction("Patient", "r") if access is not None else None
    found = [c for c in candidates(call.repo.session, patient, visible=visible)
             if c.match.grade != "certainly-not" and (not only_certain or c.match.grade == "certain")][:count]
    call.repo.touched.extend(f"Patient/{c.patient_id}" for c in found)
    return 200, {
        "resourceType": "Bundle", "type": "searchset", "total": len(found),
        "link": [{"relation": "self", "url": f"{call.base_url}/Patient/$match"}],
        "entry": [{"fullUrl": f"{call.base_url}/Patient/{c.patient_id}", "resource": c.content,
                   "search": {"extension": [{"url": MATCH_GRADE_URL, "valueCode": c.match.grade}],
                              "mode": "match", "score": c.match.score}} for c in found],
    }


def _input(call: OperationCall) -> tuple[dict[str, Any], bool, int]:
    """(resource, onlyCertainMatches, count) from the ``Parameters`` body; 400 when it is not one."""
    body = call.body
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise invalid("$match takes a Parameters resource with a 'resource' part holding a Patient")
    patient: Any = None
    only_certain: Any = False
    count: Any = DEFAULT_COUNT
    for part in body.get("parameter") or []:
        if not isinstance(part, dict):
            continue
        name = part.get("name")
        if name == "resource":
            patient = part.get("resource")
        elif name == "onlyCertainMatches":
            only_certain = part.get("valueBoolean")
            if not isinstance(only_certain, bool):
                raise invalid("onlyCertainMatches must be a valueBoolean", ("Parameters.parameter.valueBoolean",))
        elif name == "count":
            count = part.get("valueInteger")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise invalid("count must be a valueInteger of at least 1", ("Parameters.parameter.valueInteger",))
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise invalid("$match needs a 'resource' part holding a Patient resource", ("Parameters.parameter",))
    return patient, only_certain, min(count, MAX_COUNT)
