"""The ``/fhir`` REST interactions (https://hl7.org/fhir/R4B/http.html). Views stay thin:
parse the request, call the repository, serialise the answer."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import MethodNotAllowed

from .. import resources
from ..audit import search as audit_search
from ..auth.access import Access
from ..auth.tokens import AccessToken
from ..clock import aware, instant, utcnow
from ..config import Config
from ..context import RequestContext
from ..db import Database
from ..mpi import index as mpi_index
from ..operations import OperationCall
from ..operations import load as load_operations
from ..outcome import FhirError, Issue, forbidden, information, invalid, not_found, not_supported
from ..search.compartment import in_compartment
from ..search.engine import Engine
from ..search.parser import parse
from ..search.registry import default_registry
from ..search.searchset import searchset
from ..storage.bundle import BundleProcessor, check_entry_count
from ..storage.repository import Repository, Stored, WriteResult, parse_etag
from . import archive_hooks, audit_hooks, http, throttle
from .capability import capability_statement, supports

bp = Blueprint("fhir", __name__, url_prefix="/fhir")
PUBLIC_ENDPOINTS = throttle.PUBLIC_ENDPOINTS  # need no token (and are rate-limited by address)
DEFAULT_COUNT = 20
MAX_COUNT = 1000
_STARTED = instant(utcnow())


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _config() -> Config:
    return current_app.config["HEALTHHUB"]


@bp.before_request
def _authenticate() -> None:
    """Every FHIR path needs a valid access token, except the CapabilityStatement."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    throttle.authenticated()


def _request_context() -> RequestContext:
    token: AccessToken = g.access_token
    org = token.claims.get("organization")
    return RequestContext(
        actor=token.subject if token.subject == token.client_id else f"{token.subject} via {token.client_id}",
        organization=f"{_config().fhir_base}/{org}" if isinstance(org, str) and org else None,
        access=Access(token.grant, default_registry(), utcnow()))


@contextmanager
def unit_of_work(read_only: bool = False) -> Iterator[Repository]:
    """One repository in one database transaction for this request (commit on success).
    ``read_only``: a read by id or version, one statement, and its audit record, another:
    no transaction around them (``Database.statements``)."""
    db: Database = current_app.extensions["healthhub.db"]
    with (db.statements() if read_only else db.transaction()) as session:
        repo = Repository(session, _request_context())
        yield repo
        if repo.written_patients:  # match and link them, in the same transaction (healthhub/mpi)
            changes = mpi_index.update(session, repo.written_patients, now=utcnow())
            repo.touched.extend(changes.touched)
            repo.relinked = changes.relinked
        archive_hooks.record_success(session)  # the body, kept raw, with the change
        audit_hooks.record_success(session, repo)  # in the same transaction as the change


bp.after_request(audit_hooks.record_failure)
bp.after_request(archive_hooks.record_failure)


def _type(name: str) -> str:
    if not resources.is_resource_type(name):
        raise FhirError(404, [Issue("error", "not-supported", f"Unknown resource type {name!r}")])
    return name


# -- system level ----------------------------------------------------------------------------

@bp.get("/metadata")
def metadata() -> Response:
    return http.fhir_response(capability_statement(_config().fhir_base, _STARTED))


@bp.get("/")
def system_search() -> Response:
    raise not_supported("Search across all types (GET [base]?_type=…) is not supported yet; "
                        "search one type: GET [base]/[type]?…")


@bp.post("/")
@supports("transaction", "batch")
def bundle() -> Response:
    body = http.read_json()
    if isinstance(body, dict) and body.get("type") in ("transaction", "batch"):
        g.audit_subtype = body["type"]
    check_entry_count(body, _config().max_bundle_entries)  # before any entry is read or written
    with unit_of_work() as repo:
        processor = BundleProcessor(repo, _config().fhir_base, http.prefer_return() == "representation")
        result = processor.process(body)
    return http.fhir_response(_relinked_entries(result, repo.relinked))


@bp.get("/_history")
@supports("history-system")
def system_history() -> Response:
    return _history(None, None)


# -- type level ------------------------------------------------------------------------------

@bp.route("/<rtype>", methods=["GET", "POST", "PUT", "DELETE"])
@supports("create", "search-type")
def type_level(rtype: str) -> Response:
    if rtype.startswith("$"):
        return _operation(rtype[1:], "system", None, None)
    if rtype in ("metadata", "_history"):  # system endpoints that only answer GET
        raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
    rtype = _type(rtype)
    if rtype == "AuditEvent":
        return _audit_events(None)
    if request.method in ("GET", "HEAD"):
        return _search(rtype, list(request.args.items(multi=True)))
    if request.method == "POST":
        return _create(rtype)
    query = request.query_string.decode("utf-8", "replace")
    if not query:
        raise FhirError(405, [Issue("error", "not-supported",
                                    f"{request.method} on a type needs search criteria (conditional "
                                    f"{'update' if request.method == 'PUT' else 'delete'})")])
    if request.method == "PUT":
        body = http.read_json()
        with unit_of_work() as repo:
            result = repo.conditional_update(rtype, query, body, if_match=request.headers.get("If-Match"))
        return _written(result, repo.relinked)
    if request.method != "DELETE":
        raise MethodNotAllowed(valid_methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
    with unit_of_work() as repo:
        deleted = repo.conditional_delete(rtype, query)
    return _deleted(deleted)


@bp.post("/<rtype>/_search")
def type_search(rtype: str) -> Response:
    rtype = _type(rtype)
    if request.mimetype != "application/x-www-form-urlencoded":
        raise FhirError(415, [Issue("error", "not-supported",
                                    "POST _search takes application/x-www-form-urlencoded parameters")])
    return _search(rtype, [*request.args.items(multi=True), *request.form.items(multi=True)])


@bp.get("/<rtype>/_history")
@supports("history-type")
def type_history(rtype: str) -> Response:
    return _history(_type(rtype), None)


# -- instance level --------------------------------------------------------------------------

@bp.route("/<rtype>/<rid>", methods=["GET", "PUT", "PATCH", "DELETE", "POST"])
@supports("read", "update", "patch", "delete")
def instance(rtype: str, rid: str) -> Response:
    rtype = _type(rtype)
    if rid.startswith("$"):
        return _operation(rid[1:], "type", rtype, None)
    if rtype == "AuditEvent":
        return _audit_events(rid)
    if request.method == "POST":
        raise FhirError(405, [Issue("error", "not-supported", "POST to an instance is not an interaction; "
                                    "use PUT to update or POST to the type to create")])
    resources.check_id(rid)
    if_match = request.headers.get("If-Match")
    if request.method in ("GET", "HEAD"):
        with unit_of_work(read_only=True) as repo:
            stored = repo.read(rtype, rid)
        return _read_response(stored)
    if request.method == "PUT":
        body = http.read_json()
        with unit_of_work() as repo:
            if request.headers.get("If-None-Match", "").strip() == "*" and _exists(repo, rtype, rid):
                raise FhirError(412, [Issue("error", "duplicate", f"{rtype}/{rid} already exists "
                                            "(If-None-Match: *)")])
            result = repo.update(rtype, rid, body, if_match=if_match)
        return _written(result, repo.relinked)
    if request.method == "PATCH":
        operations = http.read_json(frozenset({http.JSON_PATCH}))
        with unit_of_work() as repo:
            result = repo.patch(rtype, rid, operations, if_match=if_match)
        return _written(result, repo.relinked)
    if request.method != "DELETE":
        raise MethodNotAllowed(valid_methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"])
    with unit_of_work() as repo:
        deleted = repo.delete(rtype, rid, if_match=if_match)
    return _deleted(deleted)


@bp.route("/<rtype>/<rid>/<sub>", methods=["GET", "POST"])
@supports("history-instance")
def instance_sub(rtype: str, rid: str, sub: str) -> Response:
    rtype = _type(rtype)
    resources.check_id(rid)
    if sub.startswith("$"):
        return _operation(sub[1:], "instance", rtype, rid)
    if sub == "_history" and request.method in ("GET", "HEAD"):
        return _history(rtype, rid)
    if rtype == "Patient" and resources.is_resource_type(sub) and request.method in ("GET", "HEAD"):
        return _compartment_search(rid, sub)
    raise not_found(f"No such endpoint: {rtype}/{rid}/{sub}")


@bp.get("/<rtype>/<rid>/_history/<vid>")
@supports("vread")
def vread(rtype: str, rid: str, vid: str) -> Response:
    rtype = _type(rtype)
    resources.check_id(rid)
    with unit_of_work(read_only=True) as repo:
        stored = repo.vread(rtype, rid, vid)
    return _read_response(stored)


# -- helpers ---------------------------------------------------------------------------------

def _create(rtype: str) -> Response:
    body = http.read_json()
    with unit_of_work() as repo:  # the repository validates (once), against the URL's type
        result = repo.create(body, if_none_exist=request.headers.get("If-None-Exist") or None, resource_type=rtype)
    return _written(result, repo.relinked)


def _exists(repo: Repository, rtype: str, rid: str) -> bool:
    try:
        repo.read(rtype, rid)
    except FhirError:
        return False
    return True


def _read_response(stored: Stored) -> Response:
    """200 with the resource, or 304 under a matching If-None-Match / If-Modified-Since."""
    headers = http.version_headers(stored, _config().fhir_base)
    inm = request.headers.get("If-None-Match")
    if inm and any(parse_etag(t) in (str(stored.version_id), "*") for t in inm.split(",")):
        return Response(status=304, headers=headers)
    ims = request.headers.get("If-Modified-Since")
    if ims and not inm:
        since = _http_date(ims)
        if since is not None and stored.last_updated.replace(microsecond=0) <= since:
            return Response(status=304, headers=headers)
    return http.fhir_response(stored.content, 200, headers)


def _written(result: WriteResult, relinked: dict[str, Stored]) -> Response:
    """Answer a create/update/patch as ``Prefer: return`` asks, naming the version current at
    commit: the one written, or the one the MPI wrote after it (its ``Patient.link``) — an
    ``If-Match`` with the answer's ETag must then succeed."""
    stored = _current(result.stored, relinked)
    headers = http.version_headers(stored, _config().fhir_base, location=True)
    prefer = http.prefer_return()
    if prefer == "minimal":
        return http.fhir_response(None, result.status, headers)
    if prefer == "OperationOutcome":
        texts = {"created": "Created", "updated": "Updated", "unchanged": "No change: the resource was "
                 "identical, so no new version was written", "existing": "A matching resource exists; "
                 "nothing was created"}
        return http.fhir_response(information(f"{texts[result.outcome]} {stored.resource_type}/{stored.id} "
                                              f"(version {stored.version_id})"), result.status, headers)
    return http.fhir_response(stored.content, result.status, headers)


def _current(stored: Stored, relinked: dict[str, Stored]) -> Stored:
    if stored.resource_type == "Patient" and stored.id in relinked:
        return relinked[stored.id]
    return stored


def _relinked_entries(bundle: dict[str, Any], relinked: dict[str, Stored]) -> dict[str, Any]:
    """A transaction/batch response naming, for each Patient it wrote that the MPI then relinked,
    the version current at commit (as :func:`_written` does for a single write)."""
    if not relinked:
        return bundle
    for entry in bundle.get("entry", ()):
        response = entry.get("response", {})
        location = response.get("location", "")
        parts = location.split("/")
        if len(parts) == 4 and parts[0] == "Patient" and parts[1] in relinked:
            stored = relinked[parts[1]]
            response.update(location=f"Patient/{stored.id}/_history/{stored.version_id}", etag=stored.etag,
                            lastModified=instant(stored.last_updated))
            if "resource" in entry:
                entry["resource"] = stored.content
    return bundle


def _deleted(result: WriteResult | None) -> Response:
    if result is None:
        return http.fhir_response(information("Nothing to delete: no current resource matched"), 200)
    s = result.stored
    return http.fhir_response(information(f"Deleted {s.resource_type}/{s.id} (version {s.version_id})"),
                              200, {"ETag": s.etag})


def _history(rtype: str | None, rid: str | None) -> Response:
    """History Bundle (https://hl7.org/fhir/R4B/http.html#history), keyset-paged."""
    args = request.args
    count = _count(args.get("_count"))
    since = _instant_param(args.get("_since"), "_since")
    before = args.get("_before_pk")
    if before is not None and not (before.isdigit() and len(before) <= 18):
        raise invalid("_before_pk must be a page cursor from a history Bundle's next link")
    with unit_of_work() as repo:
        page = repo.history(rtype, rid, since=since, count=count,
                            before=int(before) if before else None)
    base = _config().fhir_base
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    keep = {k: v for k, v in (("_count", str(count)), ("_since", args.get("_since"))) if v}
    here = {**keep, "_before_pk": before} if before else keep
    links = [{"relation": "self", "url": f"{base}/{path}?{urlencode(here)}"}]
    if page.next_before is not None:
        links.append({"relation": "next",
                      "url": f"{base}/{path}?{urlencode({**keep, '_before_pk': page.next_before})}"})
    return http.fhir_response({
        "resourceType": "Bundle", "type": "history", "total": page.total, "link": links,
        "entry": [http.history_entry(s, base) for s in page.items],
    })


def _search(rtype: str, pairs: list[tuple[str, str]]) -> Response:
    """A searchset Bundle (https://hl7.org/fhir/R4B/search.html), compiled to SQL."""
    registry = default_registry()
    base = _config().fhir_base
    req = parse(rtype, pairs, registry, strict=http.prefer_handling() == "strict", base_url=base)
    db: Database = current_app.extensions["healthhub.db"]
    if db.has_replica:
        # On the read replica; the audit record is written on the primary after the answer
        # (audit_hooks.record_failure records every request its transaction did not).
        with db.read_transaction() as session:
            result = Engine(session, registry, utcnow(), _request_context().access).search(req)
    else:
        with unit_of_work() as repo:
            result = Engine(repo.session, registry, utcnow(), repo.ctx.access).search(req)
    return http.fhir_response(searchset(req, result, f"{base}/{rtype}", pairs, base))


def _audit_events(audit_id: str | None) -> Response:
    """The audit trail, read-only, for tokens with a scope that names AuditEvent itself (an
    administrator's ``user/AuditEvent.rs``, or a registered ``system/AuditEvent.rs`` backend);
    ``*`` scopes do not reach it."""
    if request.method not in ("GET", "HEAD"):
        raise FhirError(405, [Issue("error", "not-supported", "The audit trail is written by the hub only")])
    token: AccessToken = g.access_token
    permission = "r" if audit_id is not None else "s"
    if not any(s.resource_type == "AuditEvent" and permission in s.permissions and s.context != "patient"
               for s in token.grant.resource_scopes):
        raise forbidden("Reading the audit trail needs a scope naming AuditEvent (user/AuditEvent.rs, "
                        "given to administrators)")
    base = _config().fhir_base
    with unit_of_work() as repo:
        if audit_id is not None:
            return http.fhir_response(audit_search.read(repo.session, audit_id))
        return http.fhir_response(audit_search.search(repo.session, list(request.args.items(multi=True)),
                                                      f"{base}/AuditEvent"))


def _compartment_search(patient_id: str, rtype: str) -> Response:
    """``Patient/{id}/{type}?…``: a search confined to the patient's compartment
    (https://hl7.org/fhir/R4B/search.html#compartments)."""
    cond = in_compartment(rtype, patient_id)
    if cond is None:
        raise invalid(f"{rtype} resources are never in a Patient compartment")
    registry = default_registry()
    base = _config().fhir_base
    pairs = list(request.args.items(multi=True))
    req = parse(rtype, pairs, registry, strict=http.prefer_handling() == "strict", base_url=base)
    with unit_of_work() as repo:
        repo.read("Patient", patient_id)
        result = Engine(repo.session, registry, utcnow(), repo.ctx.access).search(req, extra=[cond])
    return http.fhir_response(searchset(req, result, f"{base}/Patient/{patient_id}/{rtype}", pairs, base))


def _operation(name: str, level: str, rtype: str | None, rid: str | None) -> Response:
    op = load_operations().get(name)
    if op is None or not op.applies_to(level, rtype):
        where = f"on {rtype}" if rtype and op is not None and level in op.levels else f"at the {level} level"
        raise not_found(f"Operation ${name} is not supported {where}")
    if request.method not in op.methods:
        raise FhirError(405, [Issue("error", "not-supported", f"${name} takes {', '.join(sorted(op.methods))}")])
    body: Any = http.read_json() if request.method == "POST" else None
    token: AccessToken = g.access_token
    with unit_of_work() as repo:
        answer = op.handler(OperationCall(repo, _config().fhir_base, level, request.method, rtype, rid,
                                          body, request.args.to_dict(flat=False), dict(request.headers),
                                          _config().base_url + request.full_path.rstrip("?"), token.client_id))
    return http.fhir_response(answer[1], answer[0], answer[2] if len(answer) > 2 else None)


def _count(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_COUNT
    if not raw.isdigit():
        raise invalid(f"_count must be a non-negative integer, not {raw!r}")
    return min(int(raw), MAX_COUNT)


def _instant_param(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"{name} must be a FHIR instant such as 2024-01-31T12:00:00Z, not {raw!r}") from None
    return aware(value)


def _http_date(raw: str) -> datetime | None:
    try:
        return aware(parsedate_to_datetime(raw))
    except (TypeError, ValueError, IndexError):
        return None
