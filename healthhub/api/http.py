"""FHIR JSON over HTTP: body parsing, content negotiation, response building.

https://hl7.org/fhir/R4B/http.html#mime-type
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import jsonio
from ..clock import http_date, instant
from ..jsonio import parse_json
from ..outcome import FhirError, Issue
from ..storage.repository import Stored

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
JSON_PATCH = "application/json-patch+json"
_XML_FORMATS = frozenset({"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"})


def read_json(allowed: frozenset[str] = JSON_TYPES) -> Any:
    """Parse the request body as JSON after checking its media type and charset."""
    mimetype = request.mimetype
    if not mimetype:
        raise FhirError(415, [Issue("error", "not-supported",
                                    f"A Content-Type is required; send one of: {', '.join(sorted(allowed))}")])
    if mimetype not in allowed:
        raise FhirError(415, [Issue("error", "not-supported",
                                    f"Content-Type {mimetype!r} is not supported here; send one of: "
                                    f"{', '.join(sorted(allowed))}")])
    charset = request.mimetype_params.get("charset")
    if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise FhirError(415, [Issue("error", "not-supported", f"charset {charset!r} is not supported; use UTF-8")])
    return parse_json(read_body())


def read_body() -> bytes:
    """The raw body, refused with 413 past ``MAX_CONTENT_LENGTH`` — also when it comes chunked,
    where Werkzeug's limited stream would silently cut it short instead."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):
        data = request.environ["wsgi.input"].read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge()
    else:
        data = request.get_data(cache=False)
    g.inbound_body = data  # for the archive (api/archive_hooks.py)
    return data


def negotiate() -> str:
    """Pick the response media type from ``_format`` and ``Accept``; 406 for XML-only clients."""
    fmt = request.args.get("_format")
    if fmt:
        fmt = fmt.split(";")[0].strip().lower()
        if fmt in _XML_FORMATS:
            raise FhirError(406, [Issue("error", "not-supported", "This server speaks FHIR JSON only")])
        return "application/json" if fmt == "application/json" else FHIR_JSON
    accept = request.accept_mimetypes
    if not accept or accept.provided:
        best = accept.best_match([FHIR_JSON, "application/json"])
        if best is None and not any(m in ("*/*", "application/*") for m, _ in accept):
            if any(m in _XML_FORMATS for m, _ in accept):
                raise FhirError(406, [Issue("error", "not-supported", "This server speaks FHIR JSON only")])
            return FHIR_JSON
        if best == "application/json" and accept["application/json"] > accept[FHIR_JSON]:
            return "application/json"
    return FHIR_JSON


def dumps(body: Any) -> bytes:
    return jsonio.dumps(body, pretty=request.args.get("_pretty") == "true")


def fhir_response(body: Any | None, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A FHIR JSON response (an empty body when ``body`` is None)."""
    mimetype = negotiate()
    payload = b"" if body is None else dumps(body)
    resp = Response(payload, status=status, content_type=f"{mimetype}; charset=utf-8")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def version_headers(stored: Stored, base: str, location: bool = False) -> dict[str, str]:
    """``ETag``, ``Last-Modified`` and (after a write) ``Location`` with ``_history/vid``."""
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
    if location:
        headers["Location"] = f"{base}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
    return headers


def prefer_handling() -> str:
    """``Prefer: handling=strict|lenient`` (default lenient) — https://hl7.org/fhir/R4B/search.html#errors"""
    return _prefer("handling", ("strict", "lenient"), "lenient")


def prefer_return() -> str:
    """``Prefer: return=minimal|representation|OperationOutcome`` (default representation)."""
    return _prefer("return", ("minimal", "representation", "OperationOutcome"), "representation")


def _prefer(name: str, allowed: tuple[str, ...], default: str) -> str:
    for part in request.headers.get("Prefer", "").split(","):
        for token in part.split(";"):
            key, _, value = token.strip().partition("=")
            if key.strip().lower() == name:
                value = value.strip().strip('"')
                if value in allowed:
                    return value
    return default


def history_entry(stored: Stored, base: str) -> dict[str, Any]:
    """One ``Bundle.entry`` of a history Bundle (https://hl7.org/fhir/R4B/http.html#history)."""
    url = f"{stored.resource_type}/{stored.id}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if stored.content is not None:
        entry["resource"] = stored.content
    method = stored.method if stored.method != "GET" else "PUT"
    entry["request"] = {"method": method, "url": stored.resource_type if method == "POST" else url}
    status = "410 Gone" if stored.deleted else ("201 Created" if stored.version_id == 1 or method == "POST"
                                               else "200 OK")
    entry["response"] = {"status": status, "etag": stored.etag, "lastModified": instant(stored.last_updated)}
    return entry
