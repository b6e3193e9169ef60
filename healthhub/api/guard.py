"""Checks every request passes before any view or token check: what no part of the hub can take.

A NUL character (``%00``) in the path, a query parameter or a form field: no FHIR id, search
value or OAuth parameter may hold one, and PostgreSQL cannot compare text with it (the search
answered 500, "text fields cannot contain NUL bytes"). Refused with a 400 OperationOutcome.

A header field longer than gunicorn's own limit (``limit_request_field_size``, 8190 bytes):
gunicorn refuses it before the app, the Werkzeug server (``healthhub serve`` on Windows, tests)
did not. 431 with an OperationOutcome (RFC 6585 §5), so every server answers alike.
"""
from __future__ import annotations

from flask import Flask, request

from ..outcome import FhirError, Issue

FORM = "application/x-www-form-urlencoded"
MAX_HEADER = 8190


def init_app(app: Flask) -> None:
    app.before_request(refuse_oversized_headers)
    app.before_request(refuse_nul)


def refuse_oversized_headers() -> None:
    name = next((k for k, v in request.headers.items() if len(k) + len(v) + 2 > MAX_HEADER), None)
    if name is not None:
        raise FhirError(431, [Issue("error", "too-costly", f"The header {name[:40]!r} is longer than "
                                    f"{MAX_HEADER} bytes")])


def refuse_nul() -> None:
    pairs = list(request.args.items(multi=True))
    if request.mimetype == FORM:
        pairs += list(request.form.items(multi=True))
    where = "the path" if "\x00" in request.path else next(
        (f"parameter {name[:40]!r}" for name, value in pairs if "\x00" in name or "\x00" in value), None)
    if where is not None:
        raise FhirError(400, [Issue("error", "invalid", f"{where} holds a NUL character (%00), which no "
                                    "identifier or search value may contain")])
