"""Render every error as an OperationOutcome (https://hl7.org/fhir/R4B/operationoutcome.html).

Never a stack trace to the client: unexpected exceptions are logged and answered with a
generic 500 OperationOutcome; a database that cannot be reached gives 503.
"""
from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, g
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from .outcome import FhirError, Issue, aborted_for_concurrency, concurrency_conflict, operation_outcome

log = logging.getLogger("healthhub")

_HTTP_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 409: "conflict", 410: "deleted", 411: "invalid", 412: "conflict",
               413: "too-costly", 414: "too-costly", 415: "not-supported", 429: "throttled",
               431: "too-costly"}


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    resp = Response(orjson.dumps(operation_outcome(issues)), status=status,
                    content_type="application/fhir+json; charset=utf-8")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def init_app(app: Flask) -> None:
    """Register the handlers."""

    @app.errorhandler(FhirError)
    def _fhir_error(exc: FhirError) -> Response:
        if exc.issues:
            g.audit_detail = exc.issues[0].diagnostics  # for the audit record of the failure
        return outcome_response(exc.status, exc.issues, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            text = f"The request body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        elif status == 404:
            text = "No such endpoint (the FHIR API is under /fhir)"
        else:
            text = exc.description or exc.name
        resp = outcome_response(status, [Issue("error", _HTTP_CODES.get(status, "exception"), text)])
        for k, v in exc.get_headers():
            if k.lower() == "allow":
                resp.headers[k] = v
        return resp

    @app.errorhandler(OperationalError)
    def _db_unavailable(exc: OperationalError) -> Response:
        if aborted_for_concurrency(exc):
            # The database is up: it aborted this transaction for another one (a deadlock it
            # broke, a serialization failure): a conflict the client may retry.
            log.warning("transaction aborted by the database for a concurrent one: %s",
                        getattr(exc.orig, "sqlstate", ""))
            err = concurrency_conflict()
            return outcome_response(err.status, err.issues)
        log.error("database unavailable: %s", exc.__class__.__name__, exc_info=exc)
        return outcome_response(503, [Issue("error", "transient", "The database is unavailable; retry later")],
                                {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return _db_unavailable(exc)  # type: ignore[arg-type]
        log.exception("unhandled error")
        return outcome_response(500, [Issue("fatal", "exception", "Internal server error; it has been logged")])
