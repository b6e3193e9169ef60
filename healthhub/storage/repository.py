"""The repository: the only writer of resource, version and index rows.

Every write validates the resource, assigns ``meta.versionId``/``meta.lastUpdated``, writes the
current row, appends an immutable version row and refreshes the index rows — all inside the
caller's transaction (the repository flushes, never commits).
https://hl7.org/fhir/R4B/http.html
"""
from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch
from sqlalchemy import Select, and_, bindparam, func, insert, literal, null, select, text, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import resources
from ..clock import aware, instant, utcnow
from ..context import PERMISSION_NAMES, RequestContext
from ..mpi import links as mpi_links
from ..outcome import (
    FhirError,
    Issue,
    conflict,
    forbidden,
    gone,
    invalid,
    not_found,
    precondition_failed,
)
from ..search import store
from . import bulk
from .models import Resource, ResourceVersion

_RESOURCES = Resource.__table__


@dataclass(frozen=True)
class Stored:
    """One stored version of a resource (``content`` is None for a tombstone)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: dict[str, Any] | None
    method: str = "GET"
    pk: int | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


@dataclass(frozen=True)
class WriteResult:
    """What a write did: ``created`` (201), ``updated``, ``unchanged``, ``existing``, ``deleted``."""

    stored: Stored
    outcome: str

    @property
    def status(self) -> int:
        return 201 if self.outcome == "created" else 200


@dataclass(frozen=True)
class HistoryPage:
    """One page of history, newest first; ``next_before`` is the keyset cursor of the next page."""

    items: list[Stored]
    total: int
    next_before: int | None


class Repository:
    """Create, read, vread, update, patch, delete and history over one SQLAlchemy session."""

    def __init__(self, session: Session, ctx: RequestContext,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.session = session
        self.ctx = ctx
        self.clock = clock
        self._pending: _Pending | None = None
        self._pending_ids: dict[str, list[str]] = {}
        #: ``Type/id`` of every resource read or written (the audit record's entities).
        self.touched: list[str] = []
        #: Whether anything was written (a change, whose audit record must be durable with it).
        self.wrote = False
        #: Ids of the Patients created, updated or deleted, for the master patient index
        #: (``healthhub.mpi.index.update``, called once per unit of work).
        self.written_patients: list[str] = []
        #: Patients the MPI gave a new version (``Patient.link``) after this unit of work wrote
        #: them, by id: the version an answer about them must name (set by the caller of the MPI).
        self.relinked: dict[str, Stored] = {}
        #: ``Type/id/_history/vid`` of every version written (created, updated or deleted).
        self.written: list[str] = []

    # -- reads ---------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> Stored:
        """Current version; 404 when unknown (or not visible to the caller), 410 when deleted."""
        current = self._current(resource_type, resource_id)
        self._check_visible(resource_type, resource_id, current, "r")
        found = self.existing(resource_type, resource_id, current)
        self.touched.append(f"{resource_type}/{resource_id}")
        return found

    def existing(self, resource_type: str, resource_id: str, current: Stored | None = None) -> Stored:
        """The current version without a permission check (the caller made it: a conditional
        create answering with the resource its criteria found among the visible ones)."""
        if current is None:
            current = self._current(resource_type, resource_id)
        if current is None:
            raise not_found(f"Resource {resource_type}/{resource_id} is not known")
        if current.deleted:
            err = gone(f"Resource {resource_type}/{resource_id} was deleted (version {current.version_id})")
            err.headers["ETag"] = current.etag
            raise err
        return current

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> Stored:
        """One version; 404 when that version does not exist, 410 when it is a tombstone."""
        if self.ctx.access is not None:  # confined by the current version's index rows
            self._check_visible(resource_type, resource_id, self._current(resource_type, resource_id), "r")
        if not version_id.isdigit() or len(version_id) > 9:
            raise not_found(f"Version {version_id!r} of {resource_type}/{resource_id} is not known")
        found = self.session.execute(
            _versions().where(
                ResourceVersion.resource_type == resource_type,
                ResourceVersion.id == resource_id,
                ResourceVersion.version_id == int(version_id),
            )
        ).one_or_none()
        if found is None:
            raise not_found(f"Version {version_id} of {resource_type}/{resource_id} is not known")
        stored = _from_version(*found)
        if stored.deleted:
            raise gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        self.touched.append(f"{resource_type}/{resource_id}/_history/{version_id}")
        return stored

    def match(self, resource_type: str, query: str, limit: int | None = None, permission: str = "s") -> list[str]:
        """Ids of the current resources matching conditional criteria (any search, strictly parsed:
        an unknown parameter is an error here, since ignoring it would write the wrong resource),
        among those the caller may ``permission``: a conditional write never sees, so never
        reveals or touches, a resource outside the token's scopes."""
        stmt = self._confine(self._criteria(resource_type, query), resource_type, permission)
        return list(self.session.scalars(stmt.limit(limit) if limit is not None else stmt))

    def match_many(self, resource_type: str, queries: Iterable[str], limit: int = 2, permission: str = "s"
                   ) -> dict[str, list[str] | FhirError]:
        """:meth:`match` for many criteria in few statements; criteria that do not parse get
        their error. A bulk load's conditional creates are almost all ``identifier=system|value``:
        those are looked up together, one statement per 500 (as HAPI FHIR prefetches
        identifier-only match URLs of a transaction); other criteria go as a UNION ALL of up to
        ``_MATCH_CHUNK`` searches. Either way a round trip per chunk, not per entry."""
        out: dict[str, list[str] | FhirError] = {}
        by_token: dict[str, list[tuple[str, Any]]] = {}
        statements: list[tuple[str, Select[Any]]] = []
        for query in dict.fromkeys(queries):
            try:
                req = self._parse_criteria(resource_type, query)
                token = _one_token(req)
                if token is not None:
                    by_token.setdefault(token[0], []).append((query, token[1]))
                else:
                    statements.append((query, self._confine(self._statement(resource_type, req), resource_type,
                                                            permission).limit(limit)))
            except FhirError as err:
                out[query] = err
        for param, items in by_token.items():
            for start in range(0, len(items), 500):
                out.update(self._match_tokens(resource_type, param, items[start:start + 500], permission))
        for start in range(0, len(statements), _MATCH_CHUNK):
            chunk = statements[start:start + _MATCH_CHUNK]
            parts = []
            for n, (query, stmt) in enumerate(chunk):
                out[query] = []
                sub = stmt.subquery()
                parts.append(select(literal(n).label("n"), list(sub.c)[0]))
            for n, rid in self.session.execute(union_all(*parts) if len(parts) > 1 else parts[0]):
                found = out[chunk[n][0]]
                assert isinstance(found, list)
                found.append(rid)
        return out

    def _match_tokens(self, resource_type: str, param: str, items: list[tuple[str, Any]],
                      permission: str) -> dict[str, list[str]]:
        """``param=[system|]code`` criteria in one statement: the index rows of their codes,
        then :func:`~healthhub.search.compiler.token_matches` (the SQL condition, in Python)."""
        from ..search.compiler import param_rows, token_matches
        from ..search.values import MAX_CODE, clip
        from .models import SearchToken as T

        rows: dict[str, list[tuple[str | None, str]]] = {}
        stmt: Select[Any] = self._confine(select(T.c.code, T.c.system, T.c.resource_id).where(
            param_rows(T, resource_type, param), T.c.code.in_({clip(v.code, MAX_CODE) for _, v in items})),
            resource_type, permission, T.c.resource_id)
        for code, system, rid in self.session.execute(stmt):
            rows.setdefault(code, []).append((system, rid))
        return {query: list(dict.fromkeys(rid for system, rid in rows.get(clip(value.code, MAX_CODE) or "", ())
                                          if token_matches(system, value.code, value)))
                for query, value in items}

    def _confine(self, stmt: Select[Any], resource_type: str, permission: str, col: Any = None) -> Select[Any]:
        """``stmt`` (selecting resource ids first) limited to what the caller may ``permission``."""
        access = self.ctx.access
        visible = access.restriction(resource_type, permission) if access is not None else None
        if visible is None:
            return stmt
        return stmt.where((col if col is not None else stmt.selected_columns[0]).in_(visible))

    def _criteria(self, resource_type: str, query: str) -> Select[Any]:
        return self._statement(resource_type, self._parse_criteria(resource_type, query))

    def _parse_criteria(self, resource_type: str, query: str) -> Any:
        from ..search.parser import parse
        from ..search.registry import default_registry

        if query.startswith(f"{resource_type}?"):
            query = query[len(resource_type) + 1:]  # tolerated, as HAPI does: "Patient?identifier=…"
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                 if k not in _RESULT_PARAMS]
        if not pairs:
            raise invalid(f"Conditional criteria for {resource_type} are empty")
        req = parse(resource_type, pairs, default_registry(), strict=True)
        if not (req.clauses or req.ids or req.last_updated):
            # Criteria of nothing but parameters that select nothing (``_format:x=json``; ``_type``
            # used to be one) matched every resource of the type: a conditional delete removed the
            # only Organization (tests/system/test_hostile_input.py).
            raise invalid(f"Conditional criteria for {resource_type} select nothing: give a search parameter")
        return req

    def _statement(self, resource_type: str, req: Any) -> Select[Any]:
        from ..search.compiler import Compiler
        from ..search.registry import default_registry

        compiler = Compiler(default_registry(), self.clock(), self.session.get_bind().dialect.name)
        sets = compiler.index_sets(resource_type, req.clauses) if not req.ids and not req.last_updated else None
        if sets is not None:
            # From the index tables alone (they hold rows of live current resources only): a
            # smaller statement to plan, which is most of the cost of a conditional create.
            return compiler.matching(sets).distinct()
        # No ORDER BY: callers only tell none, one and several apart, and an order let
        # PostgreSQL walk an index in id order (before the first ANALYZE of a new hub, it read
        # every identifier of the type per conditional create).
        return compiler.ids(resource_type, req.clauses, req.ids, req.last_updated)

    def current_many(self, resource_type: str, ids: Iterable[str]) -> dict[str, Stored]:
        """The current rows of several resources of one type (one statement per 500 ids)."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, Stored] = {}
        for start in range(0, len(wanted), 500):
            stmt = select(Resource).where(Resource.resource_type == resource_type,
                                          Resource.id.in_(wanted[start:start + 500]))
            for row in self.session.scalars(stmt.execution_options(populate_existing=True)):
                out[row.id] = _stored(row)
        return out

    def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                since: datetime | None = None, count: int = 20, before: int | None = None) -> HistoryPage:
        """Versions newest first, at system, type or instance level (keyset-paged on ``pk``)."""
        where = []
        if resource_type is not None:
            where.append(ResourceVersion.resource_type == resource_type)
        if resource_id is not None:
            where.append(ResourceVersion.id == resource_id)
            current = self._current(resource_type or "", resource_id)
            self._check_visible(resource_type or "", resource_id, current, "r")
            if current is None:
                raise not_found(f"Resource {resource_type}/{resource_id} is not known")
        elif self.ctx.access is not None and not self.ctx.access.unrestricted(resource_type or "*", "r"):
            # Versions of resources that left the token's set (or were deleted) cannot be confined.
            raise forbidden(f"History of {'every type' if resource_type is None else resource_type} needs a scope "
                            "that allows reading every resource of it (system/ or user/, no query)")
        if since is not None:
            where.append(ResourceVersion.last_updated >= since)
        total = self.session.scalar(select(func.count()).select_from(ResourceVersion).where(*where)) or 0
        stmt = _versions().where(*where)
        if before is not None:
            stmt = stmt.where(ResourceVersion.pk < before)
        rows = self.session.execute(stmt.order_by(ResourceVersion.pk.desc()).limit(count + 1)).all()
        items = [_from_version(*r) for r in rows[:count]]
        next_before = items[-1].pk if len(rows) > count and items else None
        return HistoryPage(items, total, next_before)

    # -- writes --------------------------------------------------------------------------

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None,
               resource_id: str | None = None, resource_type: str | None = None, method: str = "POST") -> WriteResult:
        """Create with a server-assigned id (the body's ``id`` is ignored, as the spec says).

        With ``if_none_exist`` the create happens only when nothing matches; one match is
        returned as ``existing``; several matches are a 412.
        https://hl7.org/fhir/R4B/http.html#ccreate
        """
        resources.validate(resource, resource_type)
        rtype = resource["resourceType"]
        if if_none_exist:
            self.lock_criteria(rtype, if_none_exist)
            ids = self.match(rtype, if_none_exist, limit=2, permission="c")
            if len(ids) > 1:
                raise precondition_failed(
                    f"If-None-Exist {if_none_exist!r} matches more than one {rtype}")
            if ids:
                self.touched.append(f"{rtype}/{ids[0]}")
                return WriteResult(self.existing(rtype, ids[0]), "existing")
        new_id = resource_id or str(uuid.uuid4())
        return WriteResult(self._write(rtype, new_id, resource, 1, method, previous=None), "created")

    def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
               if_match: str | None = None, method: str = "PUT", mpi: bool = False) -> WriteResult:
        """Update (or create with the client's id); an unchanged body makes no new version.

        A Patient keeps the links the master patient index made (``Patient.link`` with its
        extension) when the new body lacks them: a hospital re-sending its record does not know
        them (:func:`healthhub.mpi.links.carry_over`). ``mpi``: the MPI itself is writing them.
        """
        resources.check_id(resource_id)
        resources.validate(resource, resource_type)
        body_id = resource.get("id")
        if body_id is None:
            raise invalid("The resource in an update must carry an id", (f"{resource_type}.id",))
        if body_id != resource_id:
            raise invalid(f"The body's id {body_id!r} does not match the URL's id {resource_id!r}",
                          (f"{resource_type}.id",))
        current = self._current(resource_type, resource_id, for_update=True)
        self._check_writable(resource_type, resource_id, current, "u")
        _check_if_match(current, if_match, resource_type, resource_id)
        if current is None:
            return WriteResult(self._write(resource_type, resource_id, resource, 1, method, None), "created")
        if resource_type == "Patient" and not mpi and not current.deleted:
            resource = mpi_links.carry_over(current.content, resource)
        if not current.deleted and _same_content(current.content, resource, self.ctx):
            return WriteResult(current, "unchanged")
        outcome = "created" if current.deleted else "updated"
        stored = self._write(resource_type, resource_id, resource, current.version_id + 1, method, current)
        return WriteResult(stored, outcome)

    def conditional_update(self, resource_type: str, query: str, resource: dict[str, Any], *,
                           if_match: str | None = None) -> WriteResult:
        """``PUT Type?criteria``: create when none match, update the one match, 412 for several."""
        if not isinstance(resource, dict):
            resources.validate(resource, resource_type)  # raises: the body is not a resource
        self.lock_criteria(resource_type, query)
        ids = self.match(resource_type, query, limit=2, permission="u")
        if len(ids) > 1:
            raise precondition_failed(f"Criteria {query!r} match more than one {resource_type}")
        if not ids:
            body_id = resource.get("id")
            if body_id is not None:
                resources.check_id(body_id, f"{resource_type}.id")
                return self.update(resource_type, body_id, resource, if_match=if_match)
            return self.create(resource, resource_type=resource_type)
        if resource.get("id") not in (None, ids[0]):
            raise invalid(f"The body's id {resource.get('id')!r} differs from the matched "
                          f"resource {resource_type}/{ids[0]}", (f"{resource_type}.id",))
        return self.update(resource_type, ids[0], {**resource, "id": ids[0]}, if_match=if_match)

    def patch(self, resource_type: str, resource_id: str, operations: Any, *,
              if_match: str | None = None) -> WriteResult:
        """Apply a JSON Patch (RFC 6902) to the current version. https://hl7.org/fhir/R4B/http.html#patch"""
        found = self._current(resource_type, resource_id)
        self._check_writable(resource_type, resource_id, found, "u")
        current = self.existing(resource_type, resource_id, found)
        _check_if_match(current, if_match, resource_type, resource_id)
        if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
            raise invalid("A JSON Patch document must be a JSON array of operation objects")
        try:
            patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(current.content))
        except jsonpatch.JsonPatchTestFailed as exc:
            raise FhirError(422, [Issue("error", "processing", f"JSON Patch test failed: {exc}")]) from None
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError,
                IndexError, ValueError) as exc:
            raise FhirError(422, [Issue("error", "processing", f"JSON Patch could not be applied: {exc}")]) from None
        if not isinstance(patched, dict) or patched.get("resourceType") != resource_type \
                or patched.get("id") != resource_id:
            raise FhirError(422, [Issue("error", "processing",
                                        "A patch must not change resourceType or id")])
        return self.update(resource_type, resource_id, patched, if_match=current.etag, method="PATCH")

    def delete(self, resource_type: str, resource_id: str, *, if_match: str | None = None) -> WriteResult | None:
        """Write a tombstone version; None when there was nothing (left) to delete."""
        resources.check_id(resource_id)
        current = self._current(resource_type, resource_id, for_update=True)
        self._check_writable(resource_type, resource_id, current, "d")
        _check_if_match(current, if_match, resource_type, resource_id)
        if current is None or current.deleted:
            return None
        stored = self._write(resource_type, resource_id, None, current.version_id + 1, "DELETE", current)
        return WriteResult(stored, "deleted")

    def conditional_delete(self, resource_type: str, query: str) -> WriteResult | None:
        """``DELETE Type?criteria``: delete the one match; 412 when several match (HAPI's default)."""
        ids = self.match(resource_type, query, limit=2, permission="d")
        if len(ids) > 1:
            raise precondition_failed(f"Criteria {query!r} match more than one {resource_type}")
        return self.delete(resource_type, ids[0]) if ids else None

    # -- permissions (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html) ---

    def _check_visible(self, resource_type: str, resource_id: str, current: Stored | None, permission: str) -> None:
        """404 for a resource the caller may not ``permission`` (403 when no scope allows the
        interaction on the type at all). A deleted resource has no index rows left to confine
        it by, so only an unrestricted caller learns that it was deleted."""
        access = self.ctx.access
        if access is None:
            return
        if access.outside(self.session, resource_type, [resource_id] if current is not None else [], permission):
            raise not_found(f"Resource {resource_type}/{resource_id} is not known")

    def _check_writable(self, resource_type: str, resource_id: str, current: Stored | None, permission: str) -> None:
        """403 for a write to an existing resource outside what the caller may ``permission``."""
        access = self.ctx.access
        if access is None:
            return
        existing = [resource_id] if current is not None and not current.deleted else []
        if access.outside(self.session, resource_type, existing, permission):
            raise forbidden(f"{resource_type}/{resource_id} lies outside what the access token may "
                            f"{PERMISSION_NAMES[permission]}")

    def _check_written(self, resource_type: str, ids: Iterable[str], permission: str) -> None:
        """After a write, in its transaction: every written resource must lie inside what the
        caller may ``permission`` (a patient app cannot file a record in another patient's
        compartment); 403 otherwise, and the caller's transaction rolls the write back."""
        access = self.ctx.access
        outside = access.outside(self.session, resource_type, ids, permission) if access is not None else set()
        if outside:
            raise forbidden(f"{resource_type}/{sorted(outside)[0]} would lie outside what the access token may "
                            f"{PERMISSION_NAMES[permission]} (for a patient/ scope: the patient's compartment)")

    # -- internals -----------------------------------------------------------------------

    def _current(self, resource_type: str, resource_id: str, for_update: bool = False) -> Stored | None:
        row = self.session.execute(_current_statement(for_update), {"rtype": resource_type, "rid": resource_id}).first()
        return None if row is None else _stored(row)

    def lock_criteria(self, resource_type: str, *queries: str) -> None:
        """Serialise conditional writes whose criteria are the same search, however spelled
        (parameter order, a leading ``Type?``): the key is the sorted parameter list."""
        self.lock_criteria_of((resource_type, q) for q in queries)

    def lock_criteria_of(self, criteria: Iterable[tuple[str, str]]) -> None:
        """:meth:`lock_criteria` for (resource type, query) pairs of several types, in one
        statement: locks taken type by type, in the order a Bundle lists its entries, could
        deadlock with another Bundle listing the same types the other way round."""
        self.lock(*(_criteria_key(rtype, q) for rtype, q in criteria))

    def lock(self, *keys: str) -> None:
        """Serialise conditional writes on the same criteria (no duplicate from two racing
        conditional creates), with transaction-scoped advisory locks taken in one statement, in
        key order, so two Bundles that lock overlapping sets of criteria at once wait for each
        other instead of deadlocking. Advisory locks belong to the whole database, so each key is
        mixed with the hash of the schema: hubs in different schemas of one database (tests,
        benchmarks) do not wait for — or deadlock with — each other. SQLite transactions are
        already serial (BEGIN IMMEDIATE)."""
        if not keys or self.session.get_bind().dialect.name != "postgresql":
            return
        digests = sorted({int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big", signed=True)
                          for k in keys})
        self.session.execute(text("SELECT count(pg_advisory_xact_lock(k # (hashtext(current_schema())::bigint << 32))) "
                                  "FROM (SELECT k FROM unnest(CAST(:ks AS bigint[])) AS u(k) ORDER BY k) AS s"),
                             {"ks": digests})

    def _write(self, resource_type: str, resource_id: str, resource: dict[str, Any] | None,
               version_id: int, method: str, previous: Stored | None) -> Stored:
        if resource_type == "AuditEvent":
            # The audit trail is the hub's own hash-chained log (healthhub/audit), read at
            # /fhir/AuditEvent; an AuditEvent stored as a resource would never show there.
            raise FhirError(405, [Issue("error", "not-supported", "AuditEvent resources are written by the hub "
                                        "only (its audit trail); they cannot be created, updated or deleted")])
        now = self.clock()
        if previous is not None and now <= previous.last_updated:
            # Keep lastUpdated strictly increasing along one resource's history.
            now = previous.last_updated + timedelta(milliseconds=1)
        content = None
        if resource is not None:
            content = dict(resource)
            content["id"] = resource_id
            meta = dict(content.get("meta") or {})
            meta["versionId"] = str(version_id)
            meta["lastUpdated"] = instant(now)
            if self.ctx.organization:
                meta["source"] = self.ctx.organization  # a hospital system cannot write as another
            elif self.ctx.source and "source" not in meta:
                meta["source"] = self.ctx.source
            content["meta"] = meta
        deleted = resource is None
        self.touched.append(f"{resource_type}/{resource_id}")
        self.written.append(f"{resource_type}/{resource_id}/_history/{version_id}")
        self.wrote = True
        if resource_type == "Patient":
            self.written_patients.append(resource_id)
        values = dict(version_id=version_id, last_updated=now, deleted=deleted, content=content)
        if previous is None and self._pending is not None:
            self._pending.add(resource_type, resource_id, method, values, content)
            self._pending_ids.setdefault(resource_type, []).append(resource_id)
            return Stored(resource_type, resource_id, version_id, now, deleted, content, method, None)
        try:
            if previous is None:
                self.session.execute(insert(Resource).values(resource_type=resource_type, id=resource_id, **values))
            else:
                self._keep_previous(resource_type, resource_id, previous)
                result = self.session.execute(
                    update(Resource)
                    .where(Resource.resource_type == resource_type, Resource.id == resource_id,
                           Resource.version_id == previous.version_id)
                    .values(**values))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise conflict(f"{resource_type}/{resource_id} was changed by another request; retry")
            pk = self.session.execute(
                insert(ResourceVersion).values(resource_type=resource_type, id=resource_id, method=method,
                                               **{**values, "content": null()})
                .returning(ResourceVersion.pk)).scalar_one()
        except IntegrityError:
            raise conflict(f"{resource_type}/{resource_id} was written by another request at the same "
                           "time; retry") from None
        store.write_index(self.session, resource_type, resource_id, content, replace=previous is not None)
        if content is not None:
            self._check_written(resource_type, [resource_id], "c" if previous is None or previous.deleted else "u")
        return Stored(resource_type, resource_id, version_id, now, deleted, content, method, pk)

    def _keep_previous(self, resource_type: str, resource_id: str, previous: Stored) -> None:
        """Before the current row is overwritten, its content moves into its version row: the
        content of a live resource's current version is stored once, in ``resources`` (its
        version row holds NULL; reads take it from there, :func:`_versions`). A create then
        writes the JSON once, not twice (bench/RESULTS.md, fourth session); HAPI FHIR likewise
        keeps resource text in one table only."""
        if previous.deleted:
            return  # a tombstone's version row has no content to keep
        current = select(Resource.content).where(Resource.resource_type == resource_type,
                                                 Resource.id == resource_id).scalar_subquery()
        self.session.execute(
            update(ResourceVersion)
            .where(ResourceVersion.resource_type == resource_type, ResourceVersion.id == resource_id,
                   ResourceVersion.version_id == previous.version_id, ResourceVersion.content.is_(None))
            .values(content=current))

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Buffer the rows of new resources and write them when the block ends: resources and
        index rows by COPY (or one multi-row INSERT) per table, versions copied from the new
        ``resources`` rows by the database (:meth:`_Pending.send`). Only for runs of creates
        with known ids and no reads in between (the POST phase of a transaction): a read inside
        the block would not see them. A write that fails (a resource written by a concurrent
        request) is a 409.

        Streaming chunks through a psycopg pipeline while the next entries are validated was
        tried and measured slower (bench/RESULTS.md): multi-row INSERTs cost the server more
        than COPY, and on a busy 2-core machine there is no idle core to overlap with."""
        try:
            self._pending = _Pending(self.session)
            self._pending_ids = {}
            yield
            self._pending.send()
            for rtype, ids in self._pending_ids.items():
                self._check_written(rtype, ids, "c")
        except IntegrityError:
            raise conflict("A resource of this request was written by another request at the same time; "
                           "retry") from None
        finally:
            self._pending = None


class _Pending:
    """Rows of new resources waiting for one COPY or multi-row INSERT per table."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.resources: list[dict[str, Any]] = []
        self.methods: list[str] = []  # per resource, in order
        self.index: dict[Any, list[dict[str, Any]]] = {}

    def add(self, resource_type: str, resource_id: str, method: str, values: dict[str, Any],
            content: dict[str, Any] | None) -> None:
        self.resources.append({"resource_type": resource_type, "id": resource_id, **values})
        self.methods.append(method)
        if content is not None:
            for table, rows in store.index_rows(resource_type, resource_id, content).items():
                self.index.setdefault(table, []).extend(rows)

    def send(self) -> None:
        """Write the buffered rows: the resources, their version rows (without content: the
        current version's content is the ``resources`` row's, see :meth:`Repository._keep_previous`)
        and their index rows, in as few round trips as :func:`bulk.append` can."""
        if not self.resources:
            return
        versions = [{"resource_type": r["resource_type"], "id": r["id"], "version_id": r["version_id"],
                     "last_updated": r["last_updated"], "deleted": r["deleted"], "method": method}
                    for r, method in zip(self.resources, self.methods, strict=True)]
        tables: dict[Any, list[dict[str, Any]]] = {Resource.__table__: self.resources,
                                                   ResourceVersion.__table__: versions, **self.index}
        bulk.append(self.session, tables)
        self.resources, self.methods, self.index = [], [], {}


#: Conditional criteria searched per statement by :meth:`Repository.match_many`.
_MATCH_CHUNK = 100

#: Result-shaping parameters that do not change which resources match.
_RESULT_PARAMS = frozenset({"_format", "_pretty", "_count", "_summary", "_elements", "_total", "_sort",
                            "_include", "_revinclude", "_cursor"})


def _check_if_match(current: Stored | None, if_match: str | None, resource_type: str, resource_id: str) -> None:
    """``If-Match: W/"n"`` must name the current version. https://hl7.org/fhir/R4B/http.html#concurrency"""
    if if_match is None:
        return
    wanted = parse_etag(if_match)
    if current is None or current.deleted or wanted != str(current.version_id):
        have = "none" if current is None or current.deleted else current.version_id
        raise precondition_failed(
            f"If-Match {if_match} does not match the current version ({have}) of {resource_type}/{resource_id}")


def parse_etag(value: str) -> str:
    """``W/"3"`` → ``3`` (also accepts ``"3"`` and ``3``)."""
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _same_content(stored: dict[str, Any] | None, incoming: dict[str, Any], ctx: RequestContext) -> bool:
    """True when an update would change nothing but the server-assigned meta (HAPI skips those)."""
    if stored is None:
        return False

    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        out = dict(doc)
        meta = {k: v for k, v in (out.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        if ctx.organization or ctx.source:  # the writer stamps its own source: not a change by itself
            meta.pop("source", None)
        out.pop("meta", None)
        if meta:
            out["meta"] = meta
        return out

    return strip(stored) == strip(incoming)


def _one_token(req: Any) -> tuple[str, Any] | None:
    """(param, value) when the criteria are one plain token value with a code, as in
    ``identifier=system|value``; else None."""
    from ..search.request import TokenValue

    if req.ids or req.last_updated or len(req.clauses) != 1:
        return None
    clause = req.clauses[0]
    if (clause.chain or clause.modifier is not None or clause.param.type != "token" or len(clause.values) != 1
            or clause.param.code.startswith("_")):
        return None
    value = clause.values[0]
    return (clause.param.code, value) if isinstance(value, TokenValue) and value.code is not None else None


def _criteria_key(resource_type: str, query: str) -> str:
    if query.startswith(f"{resource_type}?"):
        query = query[len(resource_type) + 1:]
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return f"conditional:{resource_type}?" + "&".join(f"{k}={v}" for k, v in pairs)


@lru_cache(maxsize=2)
def _current_statement(for_update: bool) -> Select[Any]:
    """The current row of ``:rtype/:rid``, built once: Core rows, not ORM entities (nothing is
    changed through the identity map), and a prebuilt statement — building the select and its
    cache key per call was ~200 µs of a read by id's ~500 µs in the database layer."""
    table = _RESOURCES
    stmt = select(table.c.resource_type, table.c.id, table.c.version_id, table.c.last_updated, table.c.deleted,
                  table.c.content).where(table.c.resource_type == bindparam("rtype"), table.c.id == bindparam("rid"))
    return stmt.with_for_update() if for_update else stmt


def _stored(row: Any) -> Stored:
    return Stored(row.resource_type, row.id, row.version_id, aware(row.last_updated), row.deleted,
                  ordered(row.content), "GET")


def _versions() -> Select[Any]:
    """Version rows with their content: a live resource's current version keeps its content in
    ``resources`` only (:meth:`Repository._keep_previous`), so it is joined in. One statement
    sees one snapshot: an update moves the content and replaces the current row in one transaction."""
    current = Resource.__table__.alias("current_row")
    return select(ResourceVersion, current.c.content).outerjoin(current, and_(
        current.c.resource_type == ResourceVersion.resource_type, current.c.id == ResourceVersion.id,
        current.c.version_id == ResourceVersion.version_id, ResourceVersion.content.is_(None)))


def _from_version(row: ResourceVersion, current_content: dict[str, Any] | None = None) -> Stored:
    content = row.content if row.content is not None or row.deleted else current_content
    return Stored(row.resource_type, row.id, row.version_id, aware(row.last_updated), row.deleted,
                  ordered(content), row.method, row.pk)


_FIRST = ("resourceType", "id", "meta")


def ordered(content: dict[str, Any] | None) -> dict[str, Any] | None:
    """``resourceType``, ``id``, ``meta`` first, as FHIR JSON is usually written (PostgreSQL's
    JSONB keeps keys in its own order)."""
    if content is None:
        return None
    out = {k: content[k] for k in _FIRST if k in content}
    out.update((k, v) for k, v in content.items() if k not in out)
    return out
