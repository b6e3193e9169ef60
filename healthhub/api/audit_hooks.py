"""Recording each FHIR interaction in the audit trail (CONTRACT §9).

A request that succeeds is recorded inside its own database transaction, just before commit
(:func:`record_success`, called by ``unit_of_work``): no change without its record. A request
that fails — refused token, missing scope, bad input, conflict — changed nothing, and is recorded
afterwards in a transaction of its own (:func:`record_failure`, an ``after_request`` hook).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlencode

from flask import Response, current_app, g, request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..audit.events import Happening, record
from ..auth.tokens import AccessToken
from ..clock import utcnow
from ..config import Config
from ..db import Database, unreachable
from ..errors import outcome_response
from ..outcome import Issue
from ..storage.repository import Repository

log = logging.getLogger("healthhub")

#: (endpoint, method) → (restful-interaction code, AuditEvent.action)
_BY_METHOD = {
    "fhir.type_level": {"GET": ("search-type", "E"), "HEAD": ("search-type", "E"), "POST": ("create", "C"),
                        "PUT": ("update", "U"), "DELETE": ("delete", "D")},
    "fhir.instance": {"GET": ("read", "R"), "HEAD": ("read", "R"), "PUT": ("update", "U"), "PATCH": ("patch", "U"),
                      "DELETE": ("delete", "D")},
}
_BY_ENDPOINT = {
    "fhir.system_search": ("search-system", "E"), "fhir.system_history": ("history-system", "R"),
    "fhir.type_search": ("search-type", "E"), "fhir.type_history": ("history-type", "R"),
    "fhir.vread": ("vread", "R"), "fhir.bundle": ("batch", "E"),
    "stats.counts": ("search-type", "E"),  # an aggregate search: its query is what is recorded
    "bulk.status": ("operation", "E"), "bulk.cancel": ("operation", "D"), "bulk.download": ("read", "R"),
}
_SEARCHES = frozenset({"search-type", "search-system", "history-type", "history-system", "history-instance",
                       "operation"})


def enabled() -> bool:
    config: Config = current_app.config["HEALTHHUB"]
    return config.audit


def record_success(session: Session, repo: Repository) -> None:
    if not enabled() or g.get("audited"):
        return
    record(session, happening(200, repo.touched), utcnow(), durable=repo.wrote)
    g.audited = True


def record_failure(response: Response) -> Response:
    """``after_request`` of the FHIR blueprint: the requests not recorded by their transaction."""
    if g.get("audited") or not enabled() or request.endpoint in ("fhir.metadata", None):
        return response
    written = record_alone(lambda: happening(response.status_code, [], g.get("audit_detail")), response.status_code)
    g.audited = True
    if not written and response.status_code < 400:
        # An error answer stands: it disclosed and changed nothing. A successful one (a search on
        # the read replica) is withheld: no access without its record.
        return outcome_response(503, [Issue("error", "transient", "The database is unavailable; retry later")],
                                {"Retry-After": "5"})
    return response


def record_alone(happened: Callable[[], Happening], status: int) -> bool:
    """Write the request's audit record in a transaction of its own; False, with a warning in the
    log, when the database cannot be reached. A request answered 503 found it unreachable already:
    trying again would hold the worker for another connect timeout. Raising here turned every
    answer during an outage into a 500 (tests/system/test_outage.py)."""
    if status != 503:
        db: Database = current_app.extensions["healthhub.db"]
        try:
            with db.transaction() as session:
                record(session, happened(), utcnow())
            return True
        except DBAPIError as exc:
            if not unreachable(exc):
                raise
    log.warning("audit record not written, the database is unavailable: %s %s -> %s",
                request.method, route(), status)
    return False


def route() -> str:
    """The request's URL rule, for logs: never the path, whose ids and query are patient data."""
    return request.url_rule.rule if request.url_rule is not None else "(unmatched)"


def happening(status: int, touched: list[str], detail: str | None = None) -> Happening:
    subtype, action = interaction()
    token: AccessToken | None = g.get("access_token")
    query = request.query_string.decode("utf-8", "replace")
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        query = "&".join(filter(None, [query, urlencode(list(request.form.items(multi=True)))[:4000]]))
    return Happening(
        subtype=g.get("audit_subtype", subtype), action=action, status=status,
        description=f"{request.method} {request.path}" + (f"?{query}" if query else ""),
        client_id=token.client_id if token else None,
        username=token.subject if token and token.subject != token.client_id else None,
        fhir_user=token.fhir_user if token else None, patient=token.patient if token else None,
        address=request.remote_addr, entities=touched or _path_entity(),
        query=query if subtype in _SEARCHES and query else None, detail=detail)


def interaction() -> tuple[str, str]:
    endpoint = request.endpoint or ""
    path = request.path
    if "/$" in path:
        return "operation", "E"
    if endpoint == "fhir.instance_sub":
        return ("history-instance", "R") if path.endswith("/_history") else ("search-type", "E")
    if endpoint in _BY_METHOD:
        return _BY_METHOD[endpoint].get(request.method, ("read", "R"))
    return _BY_ENDPOINT.get(endpoint, ("read", "R"))


def _path_entity() -> list[str]:
    args = request.view_args or {}
    if "rtype" in args and "rid" in args and not str(args["rid"]).startswith("$"):
        return [f"{args['rtype']}/{args['rid']}"[:160]]
    return []
