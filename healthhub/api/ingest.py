"""``/ingest``: HL7 v2 messages and CSV line lists over HTTP (CONTRACT §6). Views stay thin: the
work is the pipeline's (``ingest/pipeline.py``).

Both need a bearer token of a client registered as a hospital's sender (``healthhub sender
create --client …``); what the rows and messages write is confined by the token's scopes like
any FHIR write. An HL7 message always gets an HL7 ACK (HTTP 200; the ACK says AA, AE or AR), as
interface engines expect from HL7 over HTTP; only a missing or bad token, a wrong media type or
an oversized body get an HTTP error with an OperationOutcome.
"""
from __future__ import annotations

import io
from typing import IO, Any, cast

from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..audit.events import Happening
from ..auth.access import Access
from ..auth.tokens import AccessToken
from ..clock import utcnow
from ..config import Config
from ..ingest.csv_profile import ProfileError, UnknownProfileError, load_profile
from ..ingest.csv_reports import HeaderError
from ..ingest.pipeline import Caller, Pipeline, UploadTooLarge
from ..jsonio import dumps
from ..outcome import FhirError, Issue
from ..search.registry import default_registry
from . import http, throttle
from .audit_hooks import record_alone

bp = Blueprint("ingest", __name__, url_prefix="/ingest")
HL7_TYPES = frozenset({"x-application/hl7-v2+er7", "application/hl7-v2", "application/hl7-v2+er7"})
CSV_TYPES = frozenset({"text/csv", "application/csv"})


def init_app(app: Flask, pipeline: Pipeline) -> None:
    app.extensions["healthhub.ingest"] = pipeline
    app.register_blueprint(bp)


def _pipeline() -> Pipeline:
    pipeline: Pipeline = current_app.extensions["healthhub.ingest"]
    return pipeline


@bp.before_request
def _authenticate() -> None:
    throttle.authenticated()


def _caller(transport: str) -> Caller:
    token: AccessToken = g.access_token
    return Caller(transport, peer=request.remote_addr, client_id=token.client_id,
                  access=Access(token.grant, default_registry(), utcnow()))


def _media(allowed: frozenset[str]) -> None:
    if request.mimetype not in allowed:
        raise FhirError(415, [Issue("error", "not-supported", f"Content-Type {request.mimetype or 'none'!r} is not "
                                    f"accepted here; send one of: {', '.join(sorted(allowed))}")])


@bp.post("/hl7v2")
def hl7v2() -> Response:
    """One HL7 v2 message (ER7) in the body; its ACK in the reply."""
    _media(HL7_TYPES)
    ack = _pipeline().receive_hl7v2(http.read_body(), _caller("http-hl7v2"))
    g.audited = True  # the pipeline recorded it
    return Response(ack, 200, content_type="x-application/hl7-v2+er7; charset=utf-8")


@bp.post("/csv")
def csv() -> Response:
    """A CSV line list (``?profile=case-report``, ``&dry-run=true``): the JSON report of its rows."""
    _media(CSV_TYPES)
    name = request.args.get("profile") or "case-report"
    dry_run = (request.args.get("dry-run") or request.args.get("dry_run") or "").lower() in ("true", "1", "yes")
    try:
        profile = load_profile(name)
    except (UnknownProfileError, ProfileError) as exc:
        raise FhirError(400, [Issue("error", "not-supported", str(exc), ("profile",))]) from None
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    too_large = FhirError(413, [Issue("error", "too-costly", f"The upload is larger than the limit of {limit} bytes "
                                      "(HEALTHHUB_MAX_BODY); load large files with `healthhub ingest`")])
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        report = _pipeline().receive_csv(cast(IO[bytes], _SizeLimited(request.stream, limit)), profile,
                                         _caller("http-csv"), dry_run=dry_run, content_type=request.mimetype)
    except HeaderError as exc:
        raise FhirError(400, [Issue("error", "structure", exc.message)]) from None
    except UploadTooLarge:
        raise too_large from None
    g.audited = True
    return Response(dumps(report.as_json()), 200, content_type="application/json")


class _SizeLimited(io.RawIOBase):
    """``request.stream`` with its size limit (a chunked upload past HEALTHHUB_MAX_BODY: Werkzeug
    raises RequestEntityTooLarge mid-read) reported as the pipeline's :class:`UploadTooLarge`."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__()
        self._stream = stream
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except RequestEntityTooLarge:
            raise UploadTooLarge(f"the upload went past the limit of {self._limit} bytes") from None
        buffer[:len(data)] = data
        return len(data)


@bp.after_request
def _record_refusal(response: Response) -> Response:
    """Requests refused before the pipeline saw them (token, media type, size, header) are audited here."""
    config: Config = current_app.config["HEALTHHUB"]
    if g.get("audited") or response.status_code < 400 or not config.audit:
        return response
    token: AccessToken | None = g.get("access_token")
    record_alone(lambda: Happening(subtype="ingest", action="C", status=response.status_code,
                                   description=f"{request.method} {request.full_path.rstrip('?')}",
                                   client_id=token.client_id if token else None, address=request.remote_addr,
                                   detail=g.get("audit_detail")), response.status_code)
    return response
