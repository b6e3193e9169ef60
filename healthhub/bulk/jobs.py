"""Export jobs: the kick-off request checked and recorded, its status, cancellation, and the
claim by which one worker (of any number, in any process) takes a job.

https://hl7.org/fhir/uv/bulkdata/export.html — kick-off, status request, deletion, file request.
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from .. import resources
from ..clock import aware, instant
from ..context import AccessPolicy
from ..outcome import FhirError, Issue, forbidden, invalid, not_found
from ..search.compartment import patient_compartment
from ..search.parser import parse
from ..search.registry import Registry
from .models import ExportFile, ExportJob

#: ``_outputFormat`` values meaning NDJSON (the Bulk Data spec's abbreviations included).
NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
KICKOFF_PARAMS = frozenset({"_outputFormat", "_since", "_type", "_typeFilter"})
#: A worker that has not reported for this long is taken for dead; its job is taken up again.
STALE_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class Kickoff:
    """A checked ``$export`` request."""

    level: str
    group_id: str | None
    types: list[str]
    type_filters: dict[str, list[str]]
    since: datetime | None


def check_kickoff(level: str, group_id: str | None, query: Mapping[str, Sequence[str]], headers: Mapping[str, str],
                  access: AccessPolicy | None, registry: Registry) -> Kickoff:
    """The request's parameters and headers checked (400/403 with the reason) and resolved:
    the types to export (those asked for, else every type the token may read)."""
    prefer = [p.strip().lower() for p in (headers.get("Prefer") or "").split(",")]
    if "respond-async" not in prefer:
        raise invalid("$export runs asynchronously: send the header 'Prefer: respond-async' "
                      "(https://hl7.org/fhir/uv/bulkdata/export.html#headers)")
    accept = (headers.get("Accept") or "").split(";")[0].strip().lower()
    if accept not in ("", "*/*", "application/fhir+json", "application/json"):
        raise FhirError(406, [Issue("error", "not-supported", f"Accept {accept!r}: the kick-off answers "
                                    "application/fhir+json")])
    unknown = sorted(set(query) - KICKOFF_PARAMS)
    if unknown:
        raise invalid(f"$export does not support the parameter {unknown[0]!r}; it takes "
                      f"{', '.join(sorted(KICKOFF_PARAMS))}", (unknown[0],))
    formats = [f for v in query.get("_outputFormat", []) for f in [v.strip()] if f]
    if any(f not in NDJSON_FORMATS for f in formats):
        raise invalid(f"_outputFormat {formats[0]!r} is not supported; use application/fhir+ndjson", ("_outputFormat",))
    since = _since(query.get("_since", []))
    allowed = _level_types(level)
    asked = [t.strip() for v in query.get("_type", []) for t in v.split(",") if t.strip()]
    for t in asked:
        if not resources.is_resource_type(t):
            raise invalid(f"_type: {t[:64]!r} is not a FHIR R4B resource type", ("_type",))
        if t not in allowed:
            raise invalid(f"_type: {t} is in no patient's compartment, so a {level}-level export has none of it",
                          ("_type",))
    if access is not None:
        denied = [t for t in asked if not access.readable_types([t])]
        if denied:
            raise forbidden(f"The access token does not allow reading {', '.join(denied)}")
    types = list(dict.fromkeys(asked)) if asked else (access.readable_types(allowed) if access is not None
                                                      else list(allowed))
    if not types:
        raise forbidden("The access token allows reading no resource type this export could hold")
    filters = _type_filters(query.get("_typeFilter", []), types, registry)
    return Kickoff(level, group_id, types, filters, since)


def _level_types(level: str) -> list[str]:
    if level == "system":
        return list(resources.resource_types())
    return sorted({"Patient", *patient_compartment()})


def _since(values: Sequence[str]) -> datetime | None:
    if not values:
        return None
    raw = values[-1].strip()
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise invalid(f"_since must be a FHIR instant with a time zone (2026-01-31T12:00:00Z), not {raw[:64]!r}",
                      ("_since",))
    return value


def _type_filters(values: Sequence[str], types: list[str], registry: Registry) -> dict[str, list[str]]:
    """``Type?query`` filters by type (several for one type: OR), each parsed now, strictly, so a
    bad one is a 400 at kick-off rather than a failed job."""
    out: dict[str, list[str]] = {}
    for value in values:
        for item in _split_filters(value):
            rtype, sep, query = item.partition("?")
            if not sep or not resources.is_resource_type(rtype):
                raise invalid(f"_typeFilter {item[:80]!r} must be Type?search-parameters", ("_typeFilter",))
            if rtype not in types:
                raise invalid(f"_typeFilter {item[:80]!r}: {rtype} is not among the exported types", ("_typeFilter",))
            parse(rtype, _pairs(query), registry, strict=True)
            out.setdefault(rtype, []).append(query)
    return out


def _split_filters(value: str) -> list[str]:
    """Comma-separated ``Type?query`` items; a comma inside a query (an OR of values) stays with it."""
    items: list[str] = []
    for piece in value.split(","):
        head = piece.split("?", 1)[0]
        if items and not ("?" in piece and resources.is_resource_type(head)):
            items[-1] += "," + piece
        else:
            items.append(piece)
    return [i for i in items if i]


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)


def create(session: Session, kickoff: Kickoff, request_url: str, client_id: str, scope: str,
           patient: str | None, now: datetime) -> ExportJob:
    job = ExportJob(id=uuid.uuid4().hex, status="accepted", request=request_url, level=kickoff.level,
                    group_id=kickoff.group_id, types=kickoff.types, type_filters=kickoff.type_filters,
                    since=kickoff.since, transaction_time=now, client_id=client_id, scope=scope, patient=patient,
                    created_at=now, attempts=0, progress="queued")
    session.add(job)
    session.flush()
    return job


def owned(session: Session, job_id: str, client_id: str) -> ExportJob:
    """The job, if this client started it and it is not cancelled or expired; else 404 (a job of
    another client is not revealed)."""
    job = session.get(ExportJob, job_id) if len(job_id) <= 64 else None
    if job is None or job.client_id != client_id or job.status == "cancelled":
        raise not_found(f"No export job {job_id[:64]!r}")
    return job


def manifest(job: ExportJob, files: Sequence[ExportFile], base_url: str) -> dict[str, Any]:
    """The completion manifest (https://hl7.org/fhir/uv/bulkdata/export.html#response---complete-status)."""
    return {
        "transactionTime": instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": True,
        "output": [{"type": f.resource_type, "url": f"{base_url}/bulk/files/{job.id}/{f.name}", "count": f.count}
                   for f in sorted(files, key=lambda f: f.seq)],
        "error": [],
    }


def files_of(session: Session, job_id: str) -> list[ExportFile]:
    return list(session.scalars(select(ExportFile).where(ExportFile.job_id == job_id).order_by(ExportFile.seq)))


def cancel(session: Session, job: ExportJob, export_dir: Path) -> None:
    """Mark the job cancelled and remove its files (a worker running it stops at its next page)."""
    job.status = "cancelled"
    job.progress = "cancelled"
    # Forgotten at the worker's next clean-up (nothing is left to serve: its status answers 404).
    job.expires_at = job.created_at
    session.execute(delete(ExportFile).where(ExportFile.job_id == job.id))
    remove_files(export_dir, job.id)


def remove_files(export_dir: Path, job_id: str) -> None:
    folder = job_folder(export_dir, job_id)
    shutil.rmtree(folder, ignore_errors=True)


def job_folder(export_dir: Path, job_id: str) -> Path:
    """The job's folder; the id is a hex string the hub made, never a client's path."""
    if not job_id.isalnum():
        raise ValueError(job_id)
    return export_dir / job_id


def claim(session: Session, worker: str, now: datetime) -> str | None:
    """Take the oldest waiting job, or one whose worker stopped reporting; its id, or None.
    One UPDATE … WHERE status still says so: of two workers racing, one wins (PostgreSQL: the
    candidate is locked ``FOR UPDATE SKIP LOCKED``; SQLite: one writer at a time)."""
    stale = now - STALE_AFTER
    waiting = or_(ExportJob.status == "accepted",
                  (ExportJob.status == "in-progress") & (ExportJob.heartbeat_at < stale))
    candidate = select(ExportJob.id).where(waiting).order_by(ExportJob.created_at).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    job_id = session.scalar(candidate)
    if job_id is None:
        return None
    result = session.execute(update(ExportJob).where(ExportJob.id == job_id, waiting).values(
        status="in-progress", worker=worker[:128], heartbeat_at=now, started_at=now,
        attempts=ExportJob.attempts + 1, progress="starting"))
    return str(job_id) if result.rowcount == 1 else None  # type: ignore[attr-defined]


def beat(session: Session, job_id: str, worker: str, now: datetime, progress: str) -> bool:
    """Report progress; False when the job is no longer this worker's (cancelled, or taken up by
    another after this one was presumed dead): the worker must stop."""
    result = session.execute(update(ExportJob).where(
        ExportJob.id == job_id, ExportJob.worker == worker, ExportJob.status == "in-progress").values(
        heartbeat_at=now, progress=progress[:200]))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def expired(session: Session, now: datetime) -> list[str]:
    """Ids of finished jobs past their retention."""
    return list(session.scalars(select(ExportJob.id).where(ExportJob.expires_at.is_not(None),
                                                           ExportJob.expires_at < now)))


def forget(session: Session, job_id: str, export_dir: Path) -> None:
    session.execute(delete(ExportFile).where(ExportFile.job_id == job_id))
    session.execute(delete(ExportJob).where(ExportJob.id == job_id))
    remove_files(export_dir, job_id)


def retry_after(job: ExportJob) -> int:
    """Seconds a client should wait before polling again."""
    return 2 if job.status == "accepted" or job.started_at is None else 5


def expires(job: ExportJob) -> datetime | None:
    return aware(job.expires_at) if job.expires_at is not None else None
