"""Archiving each FHIR write's body (CONTRACT §6: every inbound payload is kept raw).

A write that succeeds archives its body in its own transaction, with outcome ``stored``
(:func:`record_success`, called by ``unit_of_work``): the archive row and the change commit
together. A write that fails archives its body afterwards in a transaction of its own, with the
status and the first diagnostic (:func:`record_failure`, an ``after_request`` hook), so it can be
looked at and replayed (``healthhub ingest list --failed``). Reads, searches, operations and
DELETE (no body) are not archived; nor is anything when the database itself failed.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, g, request
from sqlalchemy.orm import Session

from ..auth.tokens import AccessToken
from ..clock import utcnow
from ..db import Database
from ..ingest import archive

log = logging.getLogger("healthhub.ingest")
_WRITES = frozenset({"POST", "PUT", "PATCH"})


def _arrival() -> archive.Arrival | None:
    body: bytes | None = g.get("inbound_body")
    if body is None or request.method not in _WRITES or "/$" in request.path or request.path.endswith("/_search"):
        return None
    token: AccessToken | None = g.get("access_token")
    kind = g.get("audit_subtype") or (request.view_args or {}).get("rtype") or "Bundle"
    return archive.Arrival("http-fhir", "fhir", body, request.mimetype or None,
                           client_id=token.client_id if token else None, peer=request.remote_addr,
                           message_type=f"{request.method} {kind}"[:64])


def _detail(status: int, diagnostics: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"method": request.method, "path": request.full_path.rstrip("?"), "status": status}
    for header in ("If-Match", "If-None-Exist", "If-None-Match", "Prefer"):
        if request.headers.get(header):
            detail[header] = request.headers[header]
    if diagnostics:
        detail["error"] = diagnostics[:500]
    return detail


def record_success(session: Session) -> None:
    arrival = _arrival()
    if arrival is not None:
        archive.add(session, arrival, "stored", utcnow(), _detail(200))
        g.archived = True


def record_failure(response: Response) -> Response:
    """``after_request`` of the FHIR blueprint: a refused or failed write's body, kept."""
    if g.get("archived") or response.status_code < 400 or response.status_code == 503:
        return response
    arrival = _arrival()
    if arrival is None:
        return response
    db: Database = current_app.extensions["healthhub.db"]
    outcome = "failed" if response.status_code >= 500 else "rejected"
    try:
        archive.add_alone(db, arrival, outcome, utcnow(), _detail(response.status_code, g.get("audit_detail")))
    except Exception:  # the answer stands; the log says the body could not be kept
        log.exception("could not archive a refused FHIR write")
    g.archived = True
    return response
