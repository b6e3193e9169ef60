"""What happened, as a FHIR R4B ``AuditEvent`` (https://hl7.org/fhir/R4B/auditevent.html).

A search records the query (``entity.query``), not the rows it returned; a read or write records
the resources touched (``entity.what``, at most ``MAX_ENTITIES``); a token carrying a patient
context adds that patient, so a patient's audit trail can be found by ``entity``.
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ..clock import instant
from ..jsonio import cut as _cut
from ..jsonio import storable
from . import chain

MAX_ENTITIES = 1000
_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_AUTH = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"}
_INGEST = {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "receive",
           "display": "Receive/Retain Record Lifecycle Event"}
_SUBTYPE_SYSTEMS = {"token": "urn:healthhub:oauth", "introspect": "urn:healthhub:oauth", "revoke": "urn:healthhub:oauth",
                    "login": "urn:healthhub:oauth", "ingest": "urn:healthhub:ingest"}


@dataclass
class Happening:
    """One audited event, as the edge saw it."""

    subtype: str
    action: str
    status: int
    description: str
    client_id: str | None = None
    username: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    address: str | None = None
    entities: Sequence[str] = field(default_factory=list)
    query: str | None = None
    detail: str | None = None

    @property
    def outcome(self) -> str:
        """0 success, 4 minor failure (refused, invalid), 8 serious failure (server error)."""
        return "0" if self.status < 400 else "4" if self.status < 500 else "8"


def record(session: Session, happening: Happening, now: datetime, durable: bool = True) -> tuple[int, str]:
    """Append the record of ``happening`` (see :func:`chain.append` for ``durable``)."""
    # What a client sent (path, query, ids) is recorded as sent, except NUL, which no column holds.
    happening = Happening(**{f.name: storable(getattr(happening, f.name)) for f in fields(Happening)})
    columns = chain.Columns(recorded=now, subtype=happening.subtype[:32], action=happening.action,
                            outcome=happening.outcome, client_id=_cut(happening.client_id, 64),
                            username=_cut(happening.username, 128), address=_cut(happening.address, 64),
                            entities=tuple(happening.entities[:MAX_ENTITIES]),
                            patient=f"Patient/{happening.patient}"[:160] if happening.patient else None)
    return chain.append(session, columns, to_fhir(now, happening), durable)


def as_resource(seq: int, content: dict[str, Any]) -> dict[str, Any]:
    """The stored AuditEvent with its id (the record's ``seq``, part of its hash)."""
    return {"resourceType": "AuditEvent", "id": str(seq), **{k: v for k, v in content.items() if k != "resourceType"}}


def to_fhir(now: datetime, h: Happening) -> dict[str, Any]:
    kind = _REST if h.subtype not in _SUBTYPE_SYSTEMS else (_INGEST if h.subtype == "ingest" else _AUTH)
    system = _SUBTYPE_SYSTEMS.get(h.subtype, "http://hl7.org/fhir/restful-interaction")
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": kind, "subtype": [{"system": system, "code": h.subtype}],
        "action": h.action, "recorded": instant(now), "outcome": h.outcome,
        "outcomeDesc": f"HTTP {h.status}" + (f": {h.detail[:500]}" if h.detail else ""),
        "agent": _agents(h),
        "source": {"observer": {"display": "HealthHub"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
    }
    entities: list[dict[str, Any]] = [{"what": {"reference": ref}} for ref in h.entities[:MAX_ENTITIES]]
    if len(h.entities) > MAX_ENTITIES:
        entities.append({"description": f"and {len(h.entities) - MAX_ENTITIES} more resources"})
    if h.patient and f"Patient/{h.patient}" not in h.entities[:MAX_ENTITIES]:
        entities.append({"what": {"reference": f"Patient/{h.patient}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                                  "display": "Patient"}})
    entities.append({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
                              "display": "System Object"},
                     "description": h.description[:1000],
                     **({"query": base64.b64encode(h.query.encode()).decode()} if h.query else {})})
    event["entity"] = entities
    return event


def _agents(h: Happening) -> list[dict[str, Any]]:
    network = {"network": {"address": h.address, "type": "2"}} if h.address else {}
    agents: list[dict[str, Any]] = []
    if h.username:
        who: dict[str, Any] = {"identifier": {"system": "urn:healthhub:user", "value": h.username}}
        if h.fhir_user:
            who["reference"] = h.fhir_user
        agents.append({"who": who, "requestor": True, **network})
    if h.client_id:
        agents.append({"who": {"identifier": {"system": "urn:healthhub:client", "value": h.client_id}},
                       "requestor": not h.username, **({} if h.username else network)})
    if not agents:
        agents.append({"who": {"display": "anonymous"}, "requestor": True, **network})
    return agents


