"""Load FHIR JSON files (resources and Bundles) and NDJSON files into the store.

A ``.json`` file is one unit of work: a transaction Bundle is all or nothing, a batch Bundle
entry by entry, a resource or another kind of Bundle (collection, searchset) resource by
resource. A resource that carries an ``id`` is written with update semantics (``PUT``), so
loading the same file twice writes nothing new; one without an id is created.
An ``.ndjson`` file is read line by line (never whole into memory), committing every
``batch_size`` lines, with each line in its own savepoint so a bad line fails alone.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ..audit.events import Happening, record
from ..clock import utcnow
from ..context import RequestContext
from ..db import Database
from ..jsonio import parse_json
from ..mpi import index as mpi_index
from ..outcome import FhirError
from ..storage.bundle import BundleProcessor
from ..storage.repository import Repository
from . import archive

FHIR_SUFFIXES = (".json", ".ndjson")


@dataclass
class Summary:
    """What an ingest run did."""

    files: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{n} {k}" for k, n in sorted(self.outcomes.items())]
        return (f"{self.files} file(s): " + (", ".join(parts) or "no resources")
                + f"; {len(self.errors)} error(s)" + (f"; {len(self.skipped)} skipped" if self.skipped else ""))


def discover(paths: Iterable[str | Path], suffixes: Iterable[str] = FHIR_SUFFIXES) -> tuple[list[Path], list[str]]:
    """Expand folders (recursively, sorted) into the files with one of ``suffixes``; return
    (files, names not understood). FileNotFoundError for a path that does not exist."""
    wanted = tuple(suffixes)
    files: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            children = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            children = [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
        for child in children:
            (files if child.suffix.lower() in wanted else skipped).append(child)
    return files, [str(s) for s in skipped]


def ingest_file(db: Database, path: Path, ctx: RequestContext, summary: Summary,
                progress: Callable[[int], None] = lambda n: None, batch_size: int = 500) -> None:
    """Load one file, adding its outcomes and errors to ``summary``."""
    summary.files += 1
    if path.suffix.lower() == ".ndjson":
        _ingest_ndjson(db, path, ctx, summary, progress, batch_size)
        return
    data = path.read_bytes()
    arrival = archive.Arrival("cli", "fhir", data, "application/fhir+json", peer=str(path)[:512],
                              message_type=path.name[:64])
    try:
        doc = parse_json(data)
        with db.transaction() as session:
            repo = Repository(session, ctx)
            errors: list[str] = []
            counts = apply_document(repo, doc, db.config.fhir_base, errors, str(path))
            summary.outcomes.update(counts)
            summary.errors.extend(errors)
            _match_patients(repo)
            archive.add(session, arrival, "partial" if errors else "stored", utcnow(), {
                "outcomes": dict(counts), **({"errors": errors[:50]} if errors else {})})
            _audit(db, session, ctx, f"ingest {path}", repo.touched)
    except FhirError as err:
        summary.outcomes["failed"] += 1
        summary.errors.append(f"{path}: {_describe(err)}")
        with db.transaction() as session:
            archive.add(session, arrival, "rejected", utcnow(), {"status": err.status, "error": _describe(err)[:500]})
            _audit(db, session, ctx, f"ingest {path}", [], err.status, _describe(err))
    progress(len(data))


def _match_patients(repo: Repository) -> None:
    """Link the Patients just stored to the other records of their person (healthhub/mpi)."""
    if repo.written_patients:
        repo.touched.extend(mpi_index.update(repo.session, repo.written_patients, now=utcnow()).touched)


def _audit(db: Database, session: Session, ctx: RequestContext, what: str, touched: list[str], status: int = 200,
           detail: str | None = None) -> None:
    """The ingest's audit record, in the transaction of what it stored (CONTRACT §9)."""
    if db.config.audit:
        record(session, Happening(subtype="ingest", action="C", status=status, description=what[:1000],
                                  username=ctx.actor, entities=touched, detail=detail), utcnow())


def apply_document(repo: Repository, doc: Any, base_url: str, errors: list[str], where: str) -> Counter[str]:
    """Store one parsed JSON document; return outcome counts."""
    counts: Counter[str] = Counter()
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" and doc.get("type") in ("transaction", "batch"):
        response = BundleProcessor(repo, base_url).process(doc)
        for i, entry in enumerate(response["entry"]):
            status = entry["response"]["status"]
            if status.startswith("201"):
                counts["created"] += 1
            elif status.startswith(("200", "204")):
                counts["updated" if "location" in entry["response"] else "ok"] += 1
            else:
                counts["failed"] += 1
                diag = "; ".join(i.get("diagnostics", "") for i in entry["response"].get("outcome", {}).get("issue", []))
                errors.append(f"{where}: entry {i}: {status}: {diag}")
        return counts
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" and doc.get("type") not in ("transaction", "batch"):
        for entry in doc.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                counts[store_resource(repo, entry["resource"])] += 1
        return counts
    counts[store_resource(repo, doc)] += 1
    return counts


def store_resource(repo: Repository, resource: Any) -> str:
    """Update when the resource has an id (idempotent re-loads), else create; return the outcome."""
    if isinstance(resource, dict) and isinstance(resource.get("id"), str) and isinstance(resource.get("resourceType"), str):
        return repo.update(resource["resourceType"], resource["id"], resource).outcome
    return repo.create(resource).outcome


def _ingest_ndjson(db: Database, path: Path, ctx: RequestContext, summary: Summary,
                   progress: Callable[[int], None], batch_size: int) -> None:
    """Batches of lines, each in a transaction that also archives those lines' bytes (the file
    is archived in pieces as it is read: never whole in memory)."""
    message_id = archive.add_alone(db, archive.Arrival("cli", "fhir", None, "application/fhir+ndjson",
                                                       peer=str(path)[:512], message_type=path.name[:64]),
                                   "received", utcnow())
    digest, seq, failed_before = archive.Digest(), 0, summary.outcomes["failed"]
    with path.open("rb") as fh:
        lines = enumerate(fh, start=1)
        while True:
            chunk = list(_take(lines, batch_size))
            if not chunk:
                break
            with db.transaction() as session:
                piece = b"".join(raw for _, raw in chunk)
                digest.update(piece)
                archive.add_chunk(session, message_id, seq, piece)
                seq += 1
                repo = Repository(session, ctx)
                for number, raw in chunk:
                    progress(len(raw))
                    if not raw.strip():
                        continue
                    try:
                        with session.begin_nested():
                            summary.outcomes[store_resource(repo, parse_json(raw))] += 1
                    except FhirError as err:
                        summary.outcomes["failed"] += 1
                        summary.errors.append(f"{path}:{number}: {_describe(err)}")
                _match_patients(repo)
                _audit(db, session, ctx, f"ingest {path} lines {chunk[0][0]}-{chunk[-1][0]}", repo.touched)
    failed = summary.outcomes["failed"] - failed_before
    with db.transaction() as session:
        archive.finish(session, message_id, "partial" if failed else "stored", utcnow(),
                       {"failed_lines": failed}, digest=digest.value())


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def _describe(err: FhirError) -> str:
    return f"{err.status}: " + "; ".join(i.diagnostics for i in err.issues)
