"""The master patient index kept up as Patients are written: blocking keys, matching, linking.

:func:`update` is called once per unit of work, in its transaction, with the ids of the
Patients that the unit of work created, updated or deleted — by the FHIR API
(``api/fhir.py unit_of_work``), the CLI ingest (``ingest/fhir_files.py``), the demo loader and
the ingest pipeline::

    changes = index.update(session, repo.written_patients, now=utcnow())
    repo.touched.extend(changes.touched)   # the audit record names the records it relinked

For each record it stores the blocking keys of its current content (``mpi_keys``; a deleted
record loses them), scores every record sharing a key with it (:mod:`healthhub.ingest.matching`)
and acts on the grade (https://hl7.org/fhir/R4B/extension-match-grade.html): ``certain`` (the
same valid national id, or a score ≥ ``AUTO_LINK``) links the pair (:mod:`healthhub.mpi.linkage`);
``probable`` and ``possible`` (score ≥ ``REVIEW``) open a pending review unless the pair was
already decided; below that nothing happens. A pair a reviewer rejected (or unlinked) is never
linked nor proposed again. Links are never undone by matching: a record whose demographics
change stays linked until a reviewer unlinks it.

Statements are per unit of work, not per candidate: keys are replaced and candidates found
with one statement per 500 keys, the candidates' content and the pairs' earlier decisions are
read with one statement per 500 ids; each new link then costs a few statements and one new
version of each linked record. Each record is compared with at most :data:`MAX_CANDIDATES`
candidates (those sharing the most keys). On PostgreSQL the keys are locked (transaction-scoped
advisory locks) before candidates are read, so two concurrent requests writing two records of
one person see each other: the second waits for the first to commit.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, delete, insert, select
from sqlalchemy.orm import Session

from ..context import SYSTEM
from ..ingest.matching import REVIEW, Features, Match, blocking_keys, features, score
from ..storage.models import Resource
from ..storage.repository import Repository, Stored, ordered
from .linkage import Linker, ordered_pair
from .models import MpiKey, MpiReview

#: Most candidates scored per record (those sharing the most blocking keys with it).
MAX_CANDIDATES = 100
#: ``mpi_keys.key`` is at most this long (a longer e-mail key is cut: still a key, a little coarser).
KEY_LENGTH = 200
_CHUNK = 500
T = TypeVar("T")


@dataclass
class Changes:
    """What one :func:`update` did."""

    #: (a, b, kind, score) of each link made.
    linked: list[tuple[str, str, str, float]] = field(default_factory=list)
    #: (a, b, score, grade) of each review opened.
    reviews: list[tuple[str, str, float, str]] = field(default_factory=list)
    #: ``Patient/id`` of each record written anew (its ``Patient.link``).
    touched: list[str] = field(default_factory=list)
    #: The version written of each relinked record, by id (what the request's answer must name).
    relinked: dict[str, Stored] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """A stored Patient scored against a given one."""

    patient_id: str
    content: dict[str, Any]
    match: Match


def update(session: Session, patient_ids: Iterable[str], *, now: datetime) -> Changes:
    """Index, match and link the Patients written in this unit of work (ids may repeat; ones
    that no longer exist or were rolled back are ignored), in the caller's transaction."""
    ids = list(dict.fromkeys(patient_ids))
    changes = Changes()
    if not ids:
        return changes
    contents = _contents(session, ids)
    feats = {pid: features(content) for pid, content in contents.items()}
    keys = {pid: {k[:KEY_LENGTH] for k in blocking_keys(f)} for pid, f in feats.items()}
    every_key = sorted(set().union(*keys.values())) if keys else []
    # Serialise with concurrent writers of records sharing a key (PostgreSQL; SQLite is serial).
    Repository(session, SYSTEM).lock(*(f"mpi:{k}" for k in every_key))
    for chunk in _chunks(ids):
        session.execute(delete(MpiKey).where(MpiKey.patient_id.in_(chunk)))
    rows = [{"key": k, "patient_id": pid} for pid, ks in keys.items() for k in sorted(ks)]
    if rows:
        session.execute(insert(MpiKey), rows)

    sharing = _sharing(session, every_key)
    linker = Linker(session, now)
    wanted: dict[str, list[str]] = {}
    for pid, ks in keys.items():
        counts = Counter(other for k in ks for other in sharing.get(k, ()) if other != pid)
        wanted[pid] = [other for other, _ in counts.most_common(MAX_CANDIDATES)]
    linker.load_persons([*keys, *(c for cs in wanted.values() for c in cs)])
    pairs = {ordered_pair(pid, other) for pid, cs in wanted.items() for other in cs
             if not linker.same_person(pid, other)}
    if not pairs:
        return changes
    others = _contents(session, {p for pair in pairs for p in pair if p not in feats})
    feats.update((pid, features(content)) for pid, content in others.items())
    decided = _reviews(session, pairs)

    scored = [(a, b, score(feats[a], feats[b])) for a, b in pairs if a in feats and b in feats]
    scored.sort(key=lambda t: (-t[2].score, t[0], t[1]))
    for a, b, m in scored:
        review = decided.get((a, b))
        if review is not None and review.status == "rejected":
            continue
        if m.grade == "certain":
            if linker.same_person(a, b):
                continue  # linked through another record in this unit of work
            kind = "national-id" if "national-id:same" in m.reasons else "score"
            linker.link(a, b, kind=kind, score=m.score)
            if review is not None:
                review.status = "linked"
            changes.linked.append((a, b, kind, m.score))
        elif m.score >= REVIEW and not linker.same_person(a, b):
            if review is None:
                session.add(MpiReview(a=a, b=b, score=m.score, grade=m.grade, status="pending", created_at=now))
                changes.reviews.append((a, b, m.score, m.grade))
            elif review.status == "pending" and review.score != m.score:
                review.score, review.grade = m.score, m.grade  # the records changed since it was raised
    changes.touched = linker.flush()
    changes.relinked = linker.written
    return changes


def candidates(session: Session, patient: dict[str, Any], *, visible: Select[Any] | None = None,
               limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """The stored Patients that share a blocking key with ``patient`` (which is not stored),
    scored, best first; ``visible`` (a SELECT of Patient ids) confines them to what a caller may
    read. For ``Patient/$match``."""
    f: Features = features(patient)
    keys = sorted({k[:KEY_LENGTH] for k in blocking_keys(f)})
    counts: Counter[str] = Counter()
    for chunk in _chunks(keys):
        stmt = select(MpiKey.patient_id).where(MpiKey.key.in_(chunk))
        if visible is not None:
            stmt = stmt.where(MpiKey.patient_id.in_(visible))
        counts.update(session.scalars(stmt))
    top = [pid for pid, _ in counts.most_common(limit)]
    found = [Candidate(pid, content, score(f, features(content))) for pid, content in _contents(session, top).items()]
    return sorted(found, key=lambda c: (-c.match.score, c.patient_id))


def _contents(session: Session, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Current content of the live Patients among ``ids`` (one statement per 500)."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(list(ids)):
        stmt = select(Resource.id, Resource.content).where(
            Resource.resource_type == "Patient", Resource.id.in_(chunk), Resource.deleted.is_(False))
        for pid, content in session.execute(stmt):
            if content is not None:
                out[pid] = ordered(content) or {}
    return out


def _sharing(session: Session, keys: list[str]) -> dict[str, list[str]]:
    """key → the Patients holding it (one statement per 500 keys, from the primary key alone)."""
    out: dict[str, list[str]] = {}
    for chunk in _chunks(keys):
        for key, pid in session.execute(select(MpiKey.key, MpiKey.patient_id).where(MpiKey.key.in_(chunk))):
            out.setdefault(key, []).append(pid)
    return out


def _reviews(session: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], MpiReview]:
    """The reviews (pending or decided) of ``pairs``, read by their ``a`` (the primary key's first column)."""
    out: dict[tuple[str, str], MpiReview] = {}
    firsts = sorted({a for a, _ in pairs})
    for chunk in _chunks(firsts):
        cond: ColumnElement[bool] = MpiReview.a.in_(chunk)
        for row in session.scalars(select(MpiReview).where(cond)):
            if (row.a, row.b) in pairs:
                out[(row.a, row.b)] = row
    return out


def _chunks(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]
