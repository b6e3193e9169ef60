"""Checks every request passes before any view or token check: what no part of the hub can take.

A NUL character (``%00``) in the path, a query parameter or a form field: no FHIR id, search
value or OAuth parameter may hold one, and PostgreSQL cannot compare text with it (the search
answered 500, "text fields cannot contain NUL bytes"). Refused with a 400 OperationOutcome.
"""
from __future__ import annotations

from flask import Flask, request

from ..outcome import FhirError, Issue

FORM = "application/x-www-form-urlencoded"


def init_app(app: Flask) -> None:
    app.before_request(refuse_nul)


def refuse_nul() -> None:
    pairs = list(request.args.items(multi=True))
    if request.mimetype == FORM:
        pairs += list(request.form.items(multi=True))
    where = "the path" if "\x00" in request.path else next(
        (f"parameter {name[:40]!r}" for name, value in pairs if "\x00" in name or "\x00" in value), None)
    if where is not None:
        raise FhirError(400, [Issue("error", "invalid", f"{where} holds a NUL character (%00), which no "
                                    "identifier or search value may contain")])
