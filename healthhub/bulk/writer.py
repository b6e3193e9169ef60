"""Run one export job: each type's resources streamed from the database, a page at a time, into
NDJSON files of at most ``HEALTHHUB_EXPORT_FILE_MAX`` bytes — memory holds one page, whatever
the size of the export.

What a job exports: the current version of every resource of its types that the token's scopes
let it read (a ``patient/`` token: its patient's compartment), changed before the kick-off
(``transactionTime``; a resource changed since is left out, not exported in its old version) and
after ``_since``, matching one of the type's ``_typeFilter`` searches; at the Patient level, the
resources in some patient's compartment; at the Group level, in the compartments of the Group's
members and of the records the MPI links to them (``Group.member.entity``, as indexed).

Lines are the stored JSON text as the database hands it out (``content`` cast to text: JSONB's
text form on PostgreSQL, the stored compact text on SQLite), never parsed into Python and
written again: parsing with exact decimals was half of an export's time (bench/RESULTS.md,
seventh session). JSONB's text form escapes every control character, so a line holds no newline.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import ColumnElement, Text, cast, delete, or_, select, union, update

from ..auth.access import Access
from ..auth.scopes import Grant
from ..clock import utcnow
from ..db import Database
from ..metrics import EXPORT_RESOURCES
from ..mpi.models import MpiPerson
from ..search.compartment import patient_compartment, stored_params
from ..search.compiler import Compiler
from ..search.parser import parse
from ..search.registry import Registry
from ..storage import models
from . import jobs
from .models import ExportFile, ExportJob

log = logging.getLogger("healthhub.bulk")
R = models.Resource
REF = models.SearchReference
PAGE = 1000


class Lost(Exception):
    """The job is no longer this worker's (cancelled, or taken up by another)."""


def run(db: Database, registry: Registry, job_id: str, worker: str, export_dir: Path, file_max: int,
        retention: timedelta, clock: Callable[[], datetime] = utcnow) -> str:
    """Export the job's data; its final status: ``completed``, ``failed``, ``cancelled``, or
    ``lost`` (taken over by another worker, which presumed this one dead)."""
    with db.transaction() as session:
        job = session.get(ExportJob, job_id)
        assert job is not None
        session.expunge(job)
        # A job taken up again after a crash starts over: nothing of a half-written try is kept.
        session.execute(delete(ExportFile).where(ExportFile.job_id == job_id))
    jobs.remove_files(export_dir, job_id)
    folder = jobs.job_folder(export_dir, job_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files = _Files(db, job, worker, folder, file_max, clock)
        for rtype in job.types:
            _export_type(db, registry, job, rtype, files, clock)
        files.close()
    except Lost:
        log.info("export %s: stopped (cancelled or taken over)", job_id)
        with db.transaction() as session:
            current = session.get(ExportJob, job_id)
            cancelled = current is None or current.status == "cancelled"  # (and perhaps forgotten since)
        if cancelled:
            jobs.remove_files(export_dir, job_id)
        return "cancelled" if cancelled else "lost"
    except Exception as exc:  # the job fails, the worker goes on; the status answers 500
        log.exception("export %s failed", job_id)
        with db.transaction() as session:
            session.execute(update(ExportJob).where(ExportJob.id == job_id, ExportJob.worker == worker).values(
                status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=clock(),
                expires_at=clock() + retention, progress="failed"))
        jobs.remove_files(export_dir, job_id)
        return "failed"
    with db.transaction() as session:
        now = clock()
        done = session.execute(update(ExportJob).where(
            ExportJob.id == job_id, ExportJob.worker == worker, ExportJob.status == "in-progress").values(
            status="completed", finished_at=now, expires_at=now + retention,
            progress=f"completed: {files.total:,} resources in {files.seq} files")).rowcount  # type: ignore[attr-defined]
    return "completed" if done else "lost"


class _Files:
    """The job's NDJSON files: one type at a time, a new file past ``file_max`` bytes; each file is
    recorded (``export_files``) once it is closed, so the manifest lists only whole files."""

    def __init__(self, db: Database, job: ExportJob, worker: str, folder: Path, file_max: int,
                 clock: Callable[[], datetime]) -> None:
        self.db, self.job, self.worker, self.folder = db, job, worker, folder
        self.file_max = max(1, file_max)
        self.clock = clock
        self.seq = 0
        self.total = 0
        self._fh: Any = None
        self._type = ""
        self._name = ""
        self._count = 0
        self._size = 0
        self._part: dict[str, int] = {}

    def write(self, rtype: str, line: bytes) -> None:
        if self._fh is not None and (rtype != self._type or self._size + len(line) > self.file_max):
            self.close()
        if self._fh is None:
            self._part[rtype] = self._part.get(rtype, 0) + 1
            self.seq += 1
            self._type, self._name, self._count, self._size = rtype, f"{rtype}-{self._part[rtype]}.ndjson", 0, 0
            self._fh = (self.folder / self._name).open("wb")
        self._fh.write(line)
        self._count += 1
        self._size += len(line)
        self.total += 1

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        with self.db.transaction() as session:
            session.add(ExportFile(job_id=self.job.id, name=self._name, seq=self.seq, resource_type=self._type,
                                   count=self._count, size=self._size))

    def beat(self, progress: str) -> None:
        with self.db.transaction() as session:
            if not jobs.beat(session, self.job.id, self.worker, self.clock(), progress):
                if self._fh is not None:
                    self._fh.close()
                    self._fh = None
                raise Lost()


def _export_type(db: Database, registry: Registry, job: ExportJob, rtype: str, files: _Files,
                 clock: Callable[[], datetime]) -> None:
    # Built once per type (filters parsed, scopes turned into SQL), run once per page.
    conds = _conditions(db.engine.dialect.name, registry, job, rtype, clock)
    after = ""
    written = 0
    while True:
        files.beat(f"{rtype}: {written:,} exported ({files.total:,} in all)")
        with db.transaction() as session:
            rows = session.execute(select(R.id, cast(R.content, Text)).where(*conds, R.id > after)
                                   .order_by(R.id).limit(PAGE)).all()
        for _, content in rows:
            files.write(rtype, content.encode() + b"\n")
        written += len(rows)
        EXPORT_RESOURCES.inc(len(rows))
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def _conditions(dialect: str, registry: Registry, job: ExportJob, rtype: str,
                clock: Callable[[], datetime]) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [R.resource_type == rtype, R.deleted.is_(False),
                                        R.last_updated <= job.transaction_time]
    if job.since is not None:
        conds.append(R.last_updated > job.since)
    if job.level != "system":
        conds.append(_in_compartments(rtype, _patients(job)))
    queries = (job.type_filters or {}).get(rtype) or []
    if queries:
        compiler = Compiler(registry, clock(), dialect)
        alternatives = []
        for query in queries:
            req = parse(rtype, parse_qsl(query, keep_blank_values=True), registry, strict=True)
            alternatives.append(R.id.in_(compiler.ids(rtype, req.clauses, req.ids, req.last_updated)))
        conds.append(or_(*alternatives))
    access = Access(Grant.parse(job.scope, job.patient), registry, clock())
    visible = access.restriction(rtype, "r")
    if visible is not None:
        conds.append(R.id.in_(visible))
    return conds


def _patients(job: ExportJob) -> Any:
    """SELECT of the Patient ids whose compartments the job exports; None: every patient."""
    if job.level == "patient":
        return None
    members = select(REF.c.target_id).where(REF.c.resource_type == "Group", REF.c.resource_id == job.group_id,
                                            REF.c.param == "member", REF.c.target_type == "Patient")
    P = MpiPerson.__table__.c
    linked = select(P.patient_id).where(P.person_id.in_(select(P.person_id).where(P.patient_id.in_(members))))
    return union(members, linked)


def _in_compartments(rtype: str, patients: Any) -> ColumnElement[bool]:
    """``resources`` rows of ``rtype`` in the compartment of one of ``patients`` (None: of any patient)."""
    if rtype == "Patient":
        return R.id.in_(patients) if patients is not None else R.id.is_not(None)
    params = stored_params(rtype, patient_compartment().get(rtype, ()))
    refs = select(REF.c.resource_id).where(REF.c.resource_type == rtype, REF.c.param.in_(params),
                                           REF.c.target_type == "Patient")
    if patients is not None:
        refs = refs.where(REF.c.target_id.in_(patients))
    return R.id.in_(refs)
