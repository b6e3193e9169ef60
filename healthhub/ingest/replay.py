"""Replay archived payloads that were rejected, failed or interrupted (``healthhub ingest replay``).

A replay sends the archived bytes through the pipeline again, as the hub (no client token: the
operator's CLI), and archives them again with ``replay_of`` pointing at the original. When the
replay is processed (whatever its outcome), the original row becomes ``replayed`` and names its
replay, so ``--failed`` does not pick it up twice. Replaying a CSV upload replays the whole file:
the rows stored the first time are idempotent (conditional writes on the case identifiers), the
rows a profile or sender fix now accepts are stored. FHIR payloads are re-applied like the CLI
loads a file; their original request URL is not repeated.
"""
from __future__ import annotations

import io
from typing import Any

from sqlalchemy import select

from ..db import Database
from . import archive
from .csv_profile import ProfileError, UnknownProfileError, load_profile
from .csv_reports import HeaderError
from .models import InboundMessage
from .pipeline import Caller, Pipeline


class ReplayError(Exception):
    """A payload that cannot be replayed (unknown id, already stored, unknown profile)."""


def failed_ids(db: Database) -> list[int]:
    """Ids of the payloads a replay can take up, oldest first."""
    with db.transaction() as session:
        return list(session.scalars(select(InboundMessage.id).where(
            InboundMessage.outcome.in_(archive.REPLAYABLE)).order_by(InboundMessage.id)))


def replay(db: Database, pipeline: Pipeline, message_id: int) -> tuple[str, bool]:
    """Replay one payload: (a line saying what happened, whether it is now stored)."""
    with db.transaction() as session:
        row = archive.get(session, message_id)
        if row is None:
            raise ReplayError("no such archived payload")
        if row.outcome not in archive.REPLAYABLE:
            raise ReplayError(f"its outcome is {row.outcome!r}; only {', '.join(archive.REPLAYABLE)} payloads "
                              "are replayed")
        kind, message_type, detail = row.kind, row.message_type, row.detail
        payload = b"".join(archive.payload_chunks(session, row))
    caller = Caller("replay", peer=f"archive {message_id}")
    if kind == "hl7v2":
        ack = pipeline.receive_hl7v2(payload, caller, replay_of=message_id)
        code = _msa(ack)
        ok = code == "AA"
        text = f"HL7 {code}"
    elif kind == "csv":
        profile_name = message_type or (detail or {}).get("profile") or "case-report"
        try:
            profile = load_profile(profile_name)
        except (UnknownProfileError, ProfileError) as exc:
            raise ReplayError(str(exc)) from None
        try:
            report = pipeline.receive_csv(io.BytesIO(payload), profile, caller, replay_of=message_id)
        except HeaderError as exc:
            return f"{message_id}: CSV refused again: {exc.message}", False
        ok = report.rejected_total == 0
        text = f"CSV {report.accepted} rows stored, {report.rejected_total} rejected (archive {report.archive})"
    elif kind == "fhir":
        ok, text = _fhir(db, pipeline, payload, message_id)
    else:
        raise ReplayError(f"unknown payload kind {kind!r}")
    _mark_replayed(db, message_id, text)
    return f"{message_id}: {text}", ok


def _fhir(db: Database, pipeline: Pipeline, payload: bytes, message_id: int) -> tuple[bool, str]:
    """Re-apply a FHIR body as the CLI loads a file (a Bundle processed, a resource stored)."""
    from ..context import RequestContext
    from ..jsonio import parse_json
    from ..outcome import FhirError
    from ..storage.repository import Repository
    from .fhir_files import apply_document

    errors: list[str] = []
    try:
        with db.transaction() as session:
            repo = Repository(session, RequestContext(actor="replay",
                                                      source=f"{pipeline.base_url}/ingest/archive/{message_id}"))
            counts = apply_document(repo, parse_json(payload), f"{pipeline.base_url}/fhir", errors,
                                    f"archive {message_id}")
            if pipeline.after_write is not None:
                pipeline.after_write(session, repo, pipeline.clock())
    except FhirError as err:
        return False, f"FHIR refused again: {err.status}: " + "; ".join(i.diagnostics for i in err.issues)[:300]
    return not errors, "FHIR " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + (
        f"; {len(errors)} entries failed" if errors else "")


def _mark_replayed(db: Database, message_id: int, text: str) -> None:
    with db.transaction() as session:
        row = archive.get(session, message_id)
        if row is not None:
            detail: dict[str, Any] = dict(row.detail or {}) if isinstance(row.detail, dict) else {}
            detail["replay"] = text
            row.outcome = "replayed"
            row.detail = detail


def _msa(ack: bytes) -> str:
    for line in ack.decode("utf-8", "replace").split("\r"):
        if line.startswith("MSA") and len(line) > 4:
            return line.split(line[3])[1]
    return "??"
