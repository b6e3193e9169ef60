"""``transaction`` and ``batch`` Bundles on top of the repository.

https://hl7.org/fhir/R4B/http.html#transaction — a transaction is all or nothing, processed in
the order DELETE, POST, PUT/PATCH, GET, with ``urn:uuid:`` (and other ``fullUrl``) references
and conditional references (``Patient?identifier=…``) resolved to the ids the server assigns.
A batch processes each entry on its own, so one bad entry fails alone.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.exc import OperationalError

from .. import resources
from ..clock import instant
from ..jsonio import parse_json
from ..outcome import (
    FhirError,
    Issue,
    aborted_for_concurrency,
    concurrency_conflict,
    invalid,
    not_supported,
    precondition_failed,
)
from .repository import Repository, Stored, WriteResult

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASON = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 410: "Gone", 412: "Precondition Failed", 415: "Unsupported Media Type",
           422: "Unprocessable Entity", 500: "Internal Server Error"}


@dataclass
class Entry:
    """One parsed ``Bundle.entry``."""

    index: int
    method: str
    url: str  # relative to the FHIR base, without a leading slash
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None = None
    if_match: str | None = None
    target_id: str | None = None  # id assigned (POST) or resolved (conditional PUT) before writing
    existing: Stored | None = None  # conditional create that matched
    #: A conditional PUT whose criteria match nothing: a create under a new id, written with the POSTs.
    creates: bool = False
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.url.split("?", 1)[0].strip("/")

    @property
    def query(self) -> str:
        return self.url.split("?", 1)[1] if "?" in self.url else ""

    @property
    def label(self) -> str:
        return f"Bundle.entry[{self.index}]"


class BundleProcessor:
    """Process a transaction or batch Bundle with one repository (one database transaction)."""

    def __init__(self, repo: Repository, base_url: str, return_representation: bool = False) -> None:
        self.repo = repo
        self.base_url = base_url.rstrip("/")
        self.return_representation = return_representation
        #: ``ifNoneExist`` answers found ahead (:meth:`_prefetch_conditions`), by (type, criteria).
        self._conditions: dict[tuple[str, str], list[Stored] | FhirError] = {}
        #: The same for the criteria of conditional PUT entries (searched among what the caller may update).
        self._put_conditions: dict[tuple[str, str], list[Stored] | FhirError] = {}

    def process(self, bundle: Any) -> dict[str, Any]:
        """Return the ``transaction-response`` or ``batch-response`` Bundle."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise invalid("POST to the FHIR base takes a Bundle", ("Bundle",))
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise invalid(f"Bundle.type must be 'transaction' or 'batch', not {kind!r}", ("Bundle.type",))
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise invalid("Bundle.entry must be an array", ("Bundle.entry",))
        if kind == "transaction":
            entries = [self._parse_entry(i, e) for i, e in enumerate(raw_entries)]
            self._transaction(entries)
        else:
            entries = self._batch(raw_entries)
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": f"{kind}-response",
            "entry": [self._response_entry(e) for e in entries],
        }

    # -- transaction ---------------------------------------------------------------------

    def _transaction(self, entries: list[Entry]) -> None:
        full_urls = [e.full_url for e in entries if e.full_url]
        if len(full_urls) != len(set(full_urls)):
            raise invalid("Two entries of the transaction share a fullUrl", ("Bundle.entry.fullUrl",))
        mapping: dict[str, str] = {}
        self._prefetch_conditions(entries)
        for e in entries:
            with _located(e):
                self._assign_target(e, mapping)
        self._refuse_duplicates(entries, mapping)
        for e in entries:
            if e.resource is not None and e.method in ("POST", "PUT"):
                with _located(e):
                    e.resource = self._rewrite(e.resource, mapping)
        ordered_entries = sorted(entries, key=lambda x: (_ORDER[x.method], x.index))
        # New resources with pre-assigned ids (the POSTs, and the conditional PUTs whose criteria
        # match nothing: creates under a new id) are written together, by COPY per table: no entry
        # of that phase reads what another writes, and every criteria was searched (and locked)
        # before anything was written, as the spec's order (POST before PUT) would have it.
        creates = [e for e in ordered_entries if e.method == "POST" or e.creates]
        for e in (x for x in ordered_entries if x.method == "DELETE"):
            with _located(e):
                e.response = self._execute(e)
        with self.repo.batched():
            for e in creates:
                with _located(e):
                    e.response = self._execute(e)
        for e in (x for x in ordered_entries if x.method not in ("DELETE", "POST") and not x.creates):
            with _located(e):
                e.response = self._execute(e)

    def _refuse_duplicates(self, entries: list[Entry], mapping: dict[str, str]) -> None:
        """One resource may be written only once per transaction (as HAPI enforces: the result
        of two writes to it would depend on processing order)."""
        seen: dict[str, int] = {}
        for e in entries:
            if e.method == "GET" or (e.method == "POST" and e.existing is not None):
                continue
            if e.method == "POST":
                key = f"{e.path}/{e.target_id}"
            elif e.full_url in mapping:
                key = mapping[e.full_url]
            else:
                key = e.url
            if key in seen:
                raise invalid(f"Bundle.entry[{e.index}] writes {key}, which Bundle.entry[{seen[key]}] "
                              "already writes; a transaction may write a resource only once",
                              (f"Bundle.entry[{e.index}]",))
            seen[key] = e.index

    def _assign_target(self, e: Entry, mapping: dict[str, str]) -> None:
        """Decide the id each POST/PUT will get, so references can point at it up front."""
        if e.method == "POST":
            rtype = self._type_of(e)
            if e.if_none_exist:
                found = self._conditions.pop((rtype, e.if_none_exist), None)
                if found is None:
                    self.repo.lock_criteria(rtype, e.if_none_exist)
                    found = [self.repo.existing(rtype, i)
                             for i in self.repo.match(rtype, e.if_none_exist, limit=2, permission="c")]
                if isinstance(found, FhirError):
                    raise found
                if len(found) > 1:
                    raise precondition_failed(f"ifNoneExist {e.if_none_exist!r} matches more than one {rtype}")
                if found:
                    e.existing = found[0]
            e.target_id = e.existing.id if e.existing else str(uuid.uuid4())
            if e.full_url:
                mapping[e.full_url] = f"{rtype}/{e.target_id}"
        elif e.method == "PUT":
            rtype, rid = self._split_instance(e, allow_conditional=True)
            if rid is None:
                found = self._put_conditions.pop((rtype, e.query), None)
                if found is None:
                    self.repo.lock_criteria(rtype, e.query)
                    found = [self.repo.existing(rtype, i) for i in self.repo.match(rtype, e.query, limit=2,
                                                                                   permission="u")]
                if isinstance(found, FhirError):
                    raise found
                if len(found) > 1:
                    raise precondition_failed(f"Criteria {e.query!r} match more than one {rtype}")
                body_id = (e.resource or {}).get("id")
                rid = found[0].id if found else body_id or str(uuid.uuid4())
                e.target_id = rid
                e.creates = not found and body_id is None
            if e.full_url:
                mapping[e.full_url] = f"{rtype}/{rid}"

    def _rewrite(self, node: Any, mapping: dict[str, str]) -> Any:
        """Replace ``Reference.reference`` values that name a bundle entry or a search, in place
        (the entries are this request's own parsed JSON)."""
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "reference" and isinstance(v, str):
                    node[k] = self._resolve_reference(v, mapping)
                elif isinstance(v, (dict, list)):
                    self._rewrite(v, mapping)
        elif isinstance(node, list):
            for v in node:
                if isinstance(v, (dict, list)):
                    self._rewrite(v, mapping)
        return node

    def _resolve_reference(self, ref: str, mapping: dict[str, str]) -> str:
        if ref in mapping:
            return mapping[ref]
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            raise invalid(f"Reference {ref!r} names no entry of this transaction")
        head, sep, query = ref.partition("?")
        if sep and "/" not in head and resources.is_resource_type(head):
            # Conditional reference: https://hl7.org/fhir/R4B/http.html#trules
            ids = self.repo.match(head, query, limit=2)
            if len(ids) != 1:
                raise precondition_failed(
                    f"Conditional reference {ref!r} matches {'no' if not ids else 'more than one'} {head}")
            # References are all resolved before anything is written, so one search per distinct
            # criteria is enough (Synthea bundles repeat a few criteria thousands of times).
            mapping[ref] = f"{head}/{ids[0]}"
            return mapping[ref]
        return ref

    # -- batch ---------------------------------------------------------------------------

    def _batch(self, raw_entries: list[Any]) -> list[Entry]:
        """Entries in order, each failing alone. Runs of consecutive POSTs (a bulk load: Synthea's
        practitioner and hospital Bundles are thousands of conditional creates) are written
        together (:meth:`_batch_posts`); any other entry runs alone under a SAVEPOINT.

        The spec lets a batch's entries be processed in any order and forbids them to depend on
        each other (https://hl7.org/fhir/R4B/http.html#brules), so a conditional create in a run
        need not see the creates before it in that run. A repeated ``ifNoneExist`` would, so it
        starts a new run: the same criteria twice in one batch still create one resource.

        The criteria of all its conditional writes are locked first, in one statement: entries
        run one after the other in one database transaction, and locking each as it came made
        two batches listing the same criteria in other orders deadlock (the whole batch 503)."""
        self.repo.lock_criteria_of(conditional_criteria(raw_entries))
        entries: list[Entry] = []
        run: list[tuple[int, Any]] = []
        criteria: set[tuple[str, str]] = set()
        for i, raw in enumerate(raw_entries):
            request = raw.get("request") if isinstance(raw, dict) else None
            if not isinstance(request, dict) or request.get("method") != "POST":
                entries.extend(self._batch_posts(run))
                run, criteria = [], set()
                entries.append(self._batch_entry(i, raw))
                continue
            key = _criteria_of(request)
            if key[1] and key in criteria:
                entries.extend(self._batch_posts(run))
                run, criteria = [], set()
            criteria.add(key)
            run.append((i, raw))
        entries.extend(self._batch_posts(run))
        return entries

    def _batch_posts(self, run: list[tuple[int, Any]]) -> list[Entry]:
        """A run of POST entries: each is checked on its own (validation, ``ifNoneExist``
        search: reads only, so a failing entry leaves nothing behind), then the new resources
        are written together (one COPY per table). Should that write fail (a resource created
        by a concurrent request), the run is redone one entry per SAVEPOINT."""
        if len(run) < 2:
            return [self._batch_entry(i, raw) for i, raw in run]
        try:
            with self.repo.session.begin_nested():
                entries = [self._batch_entry(i, raw, savepoint=False, execute=False) for i, raw in run]
                self._prefetch_conditions([e for e in entries if not e.response])
                with self.repo.batched():
                    return [e if e.response else self._guarded(e.index, partial(self._batch_execute, e))
                            for e in entries]
        except FhirError:
            self._conditions.clear()
            self._put_conditions.clear()
            return [self._batch_entry(i, raw) for i, raw in run]

    def _batch_entry(self, index: int, raw: Any, savepoint: bool = True, execute: bool = True) -> Entry:
        """Parse (and unless ``execute`` is false, process) one entry; an error is its response."""
        def step() -> Entry:
            e = self._parse_entry(index, raw)
            if e.resource is not None and e.method in ("POST", "PUT"):
                e.resource = self._rewrite(e.resource, {})
            return self._batch_execute(e) if execute else e

        return self._guarded(index, step, savepoint)

    def _batch_execute(self, e: Entry) -> Entry:
        if e.method == "POST" and e.if_none_exist:
            self._assign_target(e, {})
        e.response = self._execute(e)
        return e

    def _guarded(self, index: int, step: Callable[[], Entry], savepoint: bool = False) -> Entry:
        """Run one batch entry's step; its error becomes the entry's response. Under a
        savepoint, so does a statement the database aborted for a concurrent transaction (409):
        rolled back to the savepoint, the batch goes on with its other entries."""
        try:
            try:
                with self.repo.session.begin_nested() if savepoint else nullcontext():
                    return step()
            except OperationalError as exc:
                if savepoint and aborted_for_concurrency(exc):
                    raise concurrency_conflict() from None
                raise
        except FhirError as err:
            failed = Entry(index, "GET", "", None, None)
            failed.response = {"status": _status_line(err.status), "outcome": _prefix(err, index).outcome()}
            return failed

    def _prefetch_conditions(self, entries: list[Entry]) -> None:
        """Lock and search the ``ifNoneExist`` criteria of the POST entries, and the criteria of the
        conditional PUT entries, together: the locks in one statement, the searches in a few per type
        (:meth:`Repository.match_many`); :meth:`_assign_target` then reads the answers from
        ``_conditions`` and ``_put_conditions``. The locks keep two requests with the same criteria
        from both creating (HAPI #3141)."""
        posts: dict[str, list[str]] = {}
        puts: dict[str, list[str]] = {}
        for e in entries:
            if e.method == "POST" and e.if_none_exist and resources.is_resource_type(e.path):
                posts.setdefault(e.path, []).append(e.if_none_exist)
            elif e.method == "PUT" and e.query and "/" not in e.path and resources.is_resource_type(e.path):
                puts.setdefault(e.path, []).append(e.query)
        self.repo.lock_criteria_of((rtype, q) for kind in (posts, puts) for rtype, qs in kind.items() for q in qs)
        for kinds, answers, permission in ((posts, self._conditions, "c"), (puts, self._put_conditions, "u")):
            for rtype, queries in kinds.items():
                found = self.repo.match_many(rtype, queries, permission=permission)
                single = [ids[0] for ids in found.values() if isinstance(ids, list) and len(ids) == 1]
                current = self.repo.current_many(rtype, single)
                for query, ids in found.items():
                    answers[(rtype, query)] = ids if isinstance(ids, FhirError) \
                        else [current.get(i) or self.repo.existing(rtype, i) for i in ids]

    # -- entries -------------------------------------------------------------------------

    def _parse_entry(self, index: int, raw: Any) -> Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict):
            raise invalid(f"{where} must be an object", (where,))
        request = raw.get("request")
        if not isinstance(request, dict):
            raise invalid(f"{where}.request is required in a transaction or batch", (f"{where}.request",))
        method = request.get("method")
        if method not in _ORDER:
            raise invalid(f"{where}.request.method {method!r} is not one of GET HEAD POST PUT PATCH DELETE",
                          (f"{where}.request.method",))
        url = request.get("url")
        if not isinstance(url, str) or not url.strip():
            raise invalid(f"{where}.request.url is required", (f"{where}.request.url",))
        resource = raw.get("resource")
        if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
            raise invalid(f"{where}.resource is required for {method}", (f"{where}.resource",))
        full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
        return Entry(index, method, self._relative(url.strip()), resource if isinstance(resource, dict) else None,
                     full_url, _str(request.get("ifNoneExist")), _str(request.get("ifMatch")))

    def _relative(self, url: str) -> str:
        if url.startswith(self.base_url + "/"):
            return url[len(self.base_url) + 1:]
        if urlsplit(url).scheme:
            raise invalid(f"request.url {url!r} is not on this server")
        return url.lstrip("/")

    def _execute(self, e: Entry) -> dict[str, Any]:
        repo = self.repo
        if e.method == "GET":
            return self._get(e)
        if e.method == "DELETE":
            rtype, rid = self._split_instance(e, allow_conditional=True)
            result = repo.conditional_delete(rtype, e.query) if rid is None \
                else repo.delete(rtype, rid, if_match=e.if_match)
            out: dict[str, Any] = {"status": "204 No Content"}
            if result is not None:
                out["etag"] = result.stored.etag
            return out
        body = e.resource
        assert body is not None  # _parse_entry requires a resource for POST, PUT and PATCH
        if e.method == "POST":
            rtype = self._type_of(e)
            if e.existing is not None:
                return self._written(WriteResult(e.existing, "existing"))
            if body.get("resourceType") != rtype:
                raise invalid(f"resourceType {body.get('resourceType')!r} does not match request.url {e.url!r}",
                              ("resourceType",))
            return self._written(repo.create(body, resource_id=e.target_id))
        if e.method == "PATCH":
            rtype, patch_id = self._split_instance(e)
            assert patch_id is not None
            return self._written(repo.patch(rtype, patch_id, _json_patch_of(body), if_match=e.if_match))
        rtype, rid = self._split_instance(e, allow_conditional=True)  # PUT
        if e.creates:
            if body.get("resourceType") != rtype:
                raise invalid(f"resourceType {body.get('resourceType')!r} does not match request.url {e.url!r}",
                              ("resourceType",))
            return self._written(repo.create(body, resource_id=e.target_id, method="PUT"))
        if rid is None and e.target_id is None:
            return self._written(repo.conditional_update(rtype, e.query, body, if_match=e.if_match))
        target = rid or e.target_id
        assert target is not None
        return self._written(repo.update(rtype, target, body if body.get("id") else {**body, "id": target},
                                         if_match=e.if_match))

    def _get(self, e: Entry) -> dict[str, Any]:
        parts = e.path.split("/")
        if parts[0] == "AuditEvent":
            raise not_supported("Read the audit trail with GET /fhir/AuditEvent, not in a Bundle")
        if len(parts) == 1:
            return self._search(self._check_type(parts[0]), e.query)
        if e.query or len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
            raise not_supported(f"GET {e.url!r} in a Bundle: read, vread and type searches are supported")
        rtype = self._check_type(parts[0])
        stored = self.repo.read(rtype, parts[1]) if len(parts) == 2 else self.repo.vread(rtype, parts[1], parts[3])
        return {"status": "200 OK", "etag": stored.etag, "lastModified": instant(stored.last_updated),
                "resource": stored.content}

    def _search(self, rtype: str, query: str) -> dict[str, Any]:
        """A search entry: its searchset Bundle is the entry's resource."""
        from ..search.engine import Engine
        from ..search.parser import parse
        from ..search.registry import default_registry
        from ..search.searchset import searchset

        registry = default_registry()
        pairs = parse_qsl(query, keep_blank_values=True)
        req = parse(rtype, pairs, registry, base_url=self.base_url)
        result = Engine(self.repo.session, registry, self.repo.clock(), self.repo.ctx.access).search(req)
        bundle = searchset(req, result, f"{self.base_url}/{rtype}", pairs, self.base_url)
        return {"status": "200 OK", "resource": bundle}

    def _written(self, result: WriteResult) -> dict[str, Any]:
        s = result.stored
        out: dict[str, Any] = {
            "status": _status_line(result.status),
            "location": f"{s.resource_type}/{s.id}/_history/{s.version_id}",
            "etag": s.etag,
            "lastModified": instant(s.last_updated),
        }
        if self.return_representation:
            out["resource"] = s.content
        return out

    def _response_entry(self, e: Entry) -> dict[str, Any]:
        response = dict(e.response)
        resource = response.pop("resource", None)
        entry: dict[str, Any] = {}
        if resource is not None:
            if "id" in resource:
                entry["fullUrl"] = f"{self.base_url}/{resource['resourceType']}/{resource['id']}"
            entry["resource"] = resource
        entry["response"] = response
        return entry

    def _type_of(self, e: Entry) -> str:
        if "/" in e.path:
            raise invalid(f"POST request.url must be a resource type, not {e.url!r}")
        return self._check_type(e.path)

    def _split_instance(self, e: Entry, allow_conditional: bool = False) -> tuple[str, str | None]:
        parts = e.path.split("/")
        if len(parts) == 2 and not e.query:
            return self._check_type(parts[0]), resources.check_id(parts[1])
        if len(parts) == 1 and e.query and allow_conditional:
            return self._check_type(parts[0]), None
        raise invalid(f"request.url {e.url!r} must be Type/id" + (" or Type?criteria" if allow_conditional else ""))

    @staticmethod
    def _check_type(name: str) -> str:
        if not resources.is_resource_type(name):
            raise FhirError(404, [Issue("error", "not-supported", f"Unknown resource type {name!r}")])
        return name


def check_entry_count(bundle: Any, limit: int) -> None:
    """Refuse a Bundle of more than ``limit`` entries (0: any number) before any entry is looked
    at: 413, as for a body past ``HEALTHHUB_MAX_BODY``. The request is well-formed, only larger
    than the server takes at once (RFC 9110 §15.5.14); a client may split it and send the parts,
    which a 400 ("fix the request") would not tell it."""
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if limit and isinstance(entries, list) and len(entries) > limit:
        raise FhirError(413, [Issue("error", "too-costly", f"The Bundle holds {len(entries):,} entries; this server "
                                    f"processes at most {limit:,} in one transaction or batch: send them in "
                                    "several Bundles", ("Bundle.entry",))])


def conditional_criteria(raw_entries: list[Any]) -> Iterator[tuple[str, str]]:
    """(type, criteria) of the conditional creates and conditional updates among raw entries."""
    for raw in raw_entries:
        request = raw.get("request") if isinstance(raw, dict) else None
        if not isinstance(request, dict):
            continue
        url = str(request.get("url") or "")
        if request.get("method") == "POST" and request.get("ifNoneExist"):
            rtype, criteria = _criteria_of(request)
        elif request.get("method") == "PUT" and "?" in url:
            path, criteria = url.split("?", 1)
            rtype = path.strip().rstrip("/").rsplit("/", 1)[-1]
        else:
            continue
        if resources.is_resource_type(rtype):
            yield rtype, criteria


def _criteria_of(request: dict[str, Any]) -> tuple[str, str]:
    """(type, ifNoneExist) of a POST, however spelled (``[base/]Type``, ``Type?criteria``)."""
    rtype = str(request.get("url") or "").split("?", 1)[0].strip().rstrip("/").rsplit("/", 1)[-1]
    criteria = str(request.get("ifNoneExist") or "")
    if criteria.startswith(f"{rtype}?"):
        criteria = criteria[len(rtype) + 1:]
    return rtype, criteria


def _json_patch_of(resource: dict[str, Any]) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (https://hl7.org/fhir/R4B/http.html#patch)."""
    if resource.get("resourceType") != "Binary" or "json-patch" not in str(resource.get("contentType", "")):
        raise not_supported("PATCH entries must carry a Binary with contentType application/json-patch+json")
    try:
        raw = base64.b64decode(resource.get("data", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"The Binary's data is not base64: {exc}") from None
    return parse_json(raw)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _status_line(status: int) -> str:
    return f"{status} {_REASON.get(status, '')}".strip()


def _prefix(err: FhirError, index: int) -> FhirError:
    """Locate an entry's errors inside the Bundle (``Bundle.entry[3].resource.name[0]``)."""
    where = f"Bundle.entry[{index}]"
    issues = []
    for issue in err.issues:
        expr = tuple(_relocate(x, where) for x in issue.expression) or (where,)
        diag = issue.diagnostics if issue.diagnostics.startswith(where) else f"{where}: {issue.diagnostics}"
        issues.append(Issue(issue.severity, issue.code, diag, expr))
    return FhirError(err.status, issues, err.headers)


def _relocate(expression: str, where: str) -> str:
    if expression.startswith("Bundle.entry["):
        return expression
    head, dot, rest = expression.partition(".")
    if resources.is_resource_type(head):
        return f"{where}.resource{dot}{rest}"
    return f"{where}.{expression}"


@contextmanager
def _located(entry: Entry) -> Iterator[None]:
    """Prefix an entry's errors with its location in the Bundle."""
    try:
        yield
    except FhirError as err:
        raise _prefix(err, entry.index) from None
