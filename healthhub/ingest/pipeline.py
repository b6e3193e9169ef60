"""From an inbound payload to stored, linked FHIR resources, in one unit of work.

archive → adapter (HL7 v2 or CSV, pure) → repository (a transaction Bundle per message or row)
→ Provenance → patient matching → archive outcome, all in one database transaction: the data,
its Provenance and its archive row commit together. When anything fails, the transaction rolls
back and the payload is archived alone with the reason (``ingest/archive.py``), so a refused or
failed payload is never lost and can be replayed.

Every resource made from a payload carries ``meta.source`` = the archive row's URL and is a
target of the payload's Provenance, whose agent is the sending Organization and whose entity is
the archived payload (https://hl7.org/fhir/R4B/provenance.html; activity ``transform`` of the
ISO 21089 record lifecycle, the event the HL7 v2-to-FHIR IG records for a converted message).
"""
from __future__ import annotations

import io
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, BinaryIO, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from ..audit.events import Happening, record
from ..clock import instant, utcnow
from ..context import AccessPolicy, RequestContext
from ..db import Database
from ..jsonio import storable
from ..outcome import FhirError
from ..storage.bundle import BundleProcessor, conditional_criteria
from ..storage.repository import Repository
from . import archive, csv_reports, hl7v2, senders
from .archive import Arrival
from .csv_profile import Profile
from .models import InboundKey, InboundRow, Sender
from .normalize import Note, SenderProfile

log = logging.getLogger("healthhub.ingest")

ARCHIVE_SYSTEM = "urn:healthhub:inbound"
_TRANSFORM = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "transform",
                          "display": "Transform/Translate Record Lifecycle Event"}]}
_AUTHOR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                       "code": "author", "display": "Author"}]}
_ASSEMBLER = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                          "code": "assembler", "display": "Assembler"}]}
#: Seconds a sender's registration is cached by a process (MLLP: one lookup per message otherwise).
SENDER_TTL = 10.0
#: CSV rows per database transaction (each row in a savepoint of its own).
CSV_BATCH = 200
#: Rejected rows listed in a CSV reply; all of them are kept in the archive.
CSV_REPLY_ROWS = 1000
_LOCATION = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+)")


@dataclass(frozen=True)
class Caller:
    """Who sends, as the edge authenticated it: an OAuth client over HTTP, or nobody over MLLP."""

    transport: str
    peer: str | None = None
    client_id: str | None = None
    access: AccessPolicy | None = None


@dataclass
class CsvReport:
    """The reply to a CSV upload (CONTRACT §6)."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_total: int = 0
    resources: Counter[str] = field(default_factory=Counter)
    notes: list[dict[str, str]] = field(default_factory=list)
    archive: int | None = None
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accepted": self.accepted, "rejected": self.rejected,
                               "resources": dict(sorted(self.resources.items()))}
        if self.rejected_total > len(self.rejected):
            out["rejected_total"] = self.rejected_total
        if self.notes:
            out["notes"] = self.notes
        if self.archive is not None:
            out["archive"] = self.archive
        if self.dry_run:
            out["dry_run"] = True
        return out

    def reject(self, row: int, errors: dict[str, list[str]]) -> None:
        self.rejected_total += 1
        if len(self.rejected) < CSV_REPLY_ROWS:
            self.rejected.append({"row": row, "errors": errors})


class Pipeline:
    """Ingest HL7 v2 messages and CSV uploads into one database."""

    def __init__(self, db: Database, base_url: str, clock: Callable[[], datetime] = utcnow,
                 after_write: Callable[[Session, Repository, datetime], None] | None = None) -> None:
        self.db = db
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        #: Run in each unit of work after its writes (patient matching).
        self.after_write = after_write
        self._sender_cache: dict[tuple[str | None, str], tuple[Sender, float]] = {}

    # -- HL7 v2 ----------------------------------------------------------------------------

    def receive_hl7v2(self, data: bytes, caller: Caller, *, truncated: bool = False, replay_of: int | None = None) -> bytes:
        """Store one HL7 v2 message; the ACK to send back (AA stored or duplicate, AE content
        errors, AR a message that cannot be processed). Never raises for bad input."""
        now = self.clock()
        arrival = Arrival(caller.transport, "hl7v2", data, "x-application/hl7-v2+er7", client_id=caller.client_id,
                          peer=caller.peer, replay_of=replay_of)
        header: hl7v2.MessageHeader | None = None
        try:
            if truncated:
                header = _header_or_none(data)
                raise hl7v2.Rejected("100", "The message is larger than this listener accepts; it was cut off and "
                                            "not processed", header)
            header = hl7v2.read_header(data)
            arrival = arrival.with_(message_type=header.message_type, control_id=header.control_id)
            sender = self._hl7_sender(header, caller)
            arrival = arrival.with_(sender=sender.code)
            mapped = hl7v2.to_fhir(hl7v2.parse(data), senders.profile(sender))
        except hl7v2.Rejected as exc:
            return self._refuse(arrival, now, exc.header or header, "AR", [exc.issue])
        except senders.SenderError as exc:
            issue = hl7v2.Located(severity="E", segment="MSH", sequence=1, field=4, code="204", text=str(exc))
            return self._refuse(arrival, now, header, "AR", [issue])
        except (OperationalError, DBAPIError) as exc:  # the sender lookup: the database is down
            return self._unavailable(arrival, header, now, exc)
        warnings = [*mapped.issues, *(_note_issue(n) for n in mapped.notes)]
        if mapped.errors:
            return self._refuse(arrival, now, mapped.header, "AE", warnings)
        try:
            with self.db.transaction() as session:
                message_id = archive.add(session, arrival, "stored", now)
                if not _claim(session, sender.code, header.control_id, message_id):
                    raise _Duplicate()
                repo = self._repository(session, caller, sender, message_id)
                written = self._store(repo, mapped.bundle, now)
                if mapped.merge is not None:
                    warnings.extend(self._merge(repo, mapped.merge, now))
                description = f"HL7 v2 {header.message_type} {header.control_id} from {sender.code}"
                provenance = self._provenance(repo, written, sender, message_id, description, now)
                self._after(session, repo, now)
                archive.finish(session, message_id, "stored", now, {
                    "ack": "AA", "issues": [_issue_json(i) for i in warnings],
                    "resources": written, "provenance": provenance})
                self._audit(session, caller, description, [*written, *([provenance] if provenance else [])], 200, now)
        except _Duplicate:
            return self._duplicate(arrival, header, now)
        except FhirError as err:
            issues = [hl7v2.Located(severity="E", segment="MSH", sequence=1, field=None, code="207",
                                    text=_first_line(i.diagnostics)) for i in err.issues[:20]]
            return self._refuse(arrival, now, header, "AE", issues, status=err.status)
        except (OperationalError, DBAPIError) as exc:
            return self._unavailable(arrival, header, now, exc)
        except Exception as exc:  # a bug: the sender gets AE (so it retries), the payload is kept
            log.exception("HL7 v2 message %s failed", header.control_id)
            issue = hl7v2.Located(severity="E", segment="MSH", sequence=1, field=None, code="207",
                                  text=f"Application internal error ({type(exc).__name__}); the message was kept "
                                       "for replay")
            self._archive_quietly(arrival, "failed", now, {"ack": "AE", "error": repr(exc)[:500]})
            return hl7v2.ack(header, "AE", [issue])
        return hl7v2.ack(mapped.header, "AA", warnings)

    def _refuse(self, arrival: Arrival, now: datetime, header: hl7v2.MessageHeader | None, code: str,
                issues: list[hl7v2.Located], status: int | None = None) -> bytes:
        """Archive (and audit) a refused message, then its ACK (AR or AE). When even that cannot be
        written, AE "unavailable": the sender keeps the message and sends it again, where an AR
        would have made it drop a message the hub never kept."""
        detail: dict[str, Any] = {"ack": code, "issues": [_issue_json(i) for i in issues]}
        if status is not None:
            detail["status"] = status
        try:
            self._archive_alone(arrival, "rejected", now, detail)
        except (OperationalError, DBAPIError) as exc:
            return self._unavailable(arrival, header, now, exc)
        return hl7v2.ack(header, code, issues)

    def _unavailable(self, arrival: Arrival, header: hl7v2.MessageHeader | None, now: datetime,
                     exc: DBAPIError) -> bytes:
        log.warning("HL7 v2 message %s not stored: database error %s", header.control_id if header else "?",
                    exc.__class__.__name__)
        self._archive_quietly(arrival, "failed", now, {"ack": "AE", "error": str(exc.orig or exc)[:500]})
        issue = hl7v2.Located(severity="E", segment="MSH", sequence=1, field=None, code="207",
                              text="The hub's database is unavailable; the message was not stored, send it again")
        return hl7v2.ack(header, "AE", [issue])

    def _hl7_sender(self, header: hl7v2.MessageHeader, caller: Caller) -> Sender:
        """The registered sender of a message (cached for ``SENDER_TTL`` seconds: a registration
        or a ``sender disable`` takes effect within that time)."""
        key = (caller.client_id, header.sending_facility_id)
        cached = self._sender_cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        sender = self._find_hl7_sender(header, caller)
        self._sender_cache[key] = (sender, time.monotonic() + SENDER_TTL)
        return sender

    def _find_hl7_sender(self, header: hl7v2.MessageHeader, caller: Caller) -> Sender:
        code = header.sending_facility_id
        with self.db.transaction() as session:
            bound = senders.for_client(session, caller.client_id) if caller.client_id is not None else None
            if bound is not None:  # a hospital's own client sends only as that hospital
                if code and code.lower() != bound.code.lower():
                    raise senders.SenderError(f"MSH-4 names {code!r}, but this client sends for {bound.code!r}")
                session.expunge(bound)
                return bound
            row = senders.find(session, code)
            if row is None:
                raise senders.SenderError(f"the sending facility {code!r} (MSH-4) is not a registered sender")
            session.expunge(row)
            return row

    def _duplicate(self, arrival: Arrival, header: hl7v2.MessageHeader, now: datetime) -> bytes:
        """A message whose sender and MSH-10 were stored before: acknowledged (AA), so the sender
        stops resending it, archived as a duplicate, not stored again."""
        with self.db.transaction() as session:
            first = session.get(InboundKey, (arrival.sender or "", "hl7", header.control_id[:200]))
            original = first.message_id if first else None
            archive.add(session, arrival, "duplicate", now, {"ack": "AA", "duplicate_of": original})
        return hl7v2.ack(header, "AA", text=f"Duplicate of a message already stored (archive {original}); "
                                            "not stored again")

    def _merge(self, repo: Repository, merge: hl7v2.Merge, now: datetime) -> list[hl7v2.Located]:
        """ADT^A40: link the retired record to the surviving one (``mpi.merge``)."""
        from ..mpi.linkage import merge as mpi_merge

        surviving = self._patient_by(repo, merge.surviving)
        retired = self._patient_by(repo, merge.retired)
        if retired is None or surviving is None or retired == surviving:
            which = "MRG-1" if retired is None else "PID-3"
            return [hl7v2.Located(severity="W", segment="MRG" if retired is None else "PID", sequence=1,
                                  field=1 if retired is None else 3, code="204",
                                  text=f"The patient named in {which} is not known to the hub; nothing was merged")]
        mpi_merge(repo.session, surviving, retired, now=now)
        return []

    @staticmethod
    def _patient_by(repo: Repository, identifiers: list[dict[str, Any]]) -> str | None:
        from urllib.parse import quote

        for ident in identifiers:
            value, system = ident.get("value"), ident.get("system")
            if not value:
                continue
            token = f"{_escape(system)}|{_escape(value)}" if system else _escape(value)
            ids = repo.match("Patient", f"identifier={quote(token, safe='|')}", limit=2)
            if len(ids) == 1:
                return ids[0]
        return None

    # -- CSV -------------------------------------------------------------------------------

    def receive_csv(self, stream: IO[bytes], profile: Profile, caller: Caller, *, dry_run: bool = False,
            replay_of: int | None = None, content_type: str = "text/csv") -> CsvReport:
        """Store the good rows of a CSV line list, report the bad ones (kept for replay).

        Streams: the upload is read a piece at a time, archived in chunks as it is read, and its
        rows are stored ``CSV_BATCH`` to a transaction; memory does not grow with the file.
        ``dry_run`` validates and reports without storing anything (nor archiving).
        Raises :class:`csv_reports.HeaderError` for a wrong header (archived as rejected)."""
        now = self.clock()
        report = CsvReport(dry_run=dry_run)
        lookup = self._csv_senders(caller)
        tee = _Tee(stream)
        reader = io.BufferedReader(tee, buffer_size=256 * 1024)
        arrival = Arrival(caller.transport, "csv", None, content_type, client_id=caller.client_id, peer=caller.peer,
                          message_type=profile.name, replay_of=replay_of)
        rows = csv_reports.read_rows(cast(BinaryIO, reader), profile, lookup)
        if dry_run:
            for result in rows:
                if result.errors:
                    report.reject(result.row, result.errors)
                else:
                    report.accepted += 1
                    _count_bundle(report.resources, result.bundle)
                report.notes.extend(_note_json(n, result.row) for n in result.notes[:5])
            return report
        message_id = archive.add_alone(self.db, arrival, "received", now, {"profile": profile.name})
        report.archive = message_id
        seq = 0
        try:
            batches = _batches(rows, CSV_BATCH)
            while True:
                # Rows are read outside the batch's transaction: reading looks senders up in
                # transactions of its own (on SQLite a second writer would wait for this one).
                batch = next(batches, None)
                with self.db.transaction() as session:
                    for chunk in tee.take():
                        archive.add_chunk(session, message_id, seq, chunk)
                        seq += 1
                    if batch is None:
                        break
                    self._csv_batch(session, batch, caller, message_id, report, now)
        except csv_reports.HeaderError as exc:
            self._finish_alone(message_id, tee, seq, "rejected", now, {"profile": profile.name, "error": exc.message})
            raise
        except UploadTooLarge as exc:
            # Refused, not failed: it was logged as a failure with a traceback, and reading the rest
            # for the archive hit the limit again, so the upload stayed "received" for ever.
            self._finish_alone(message_id, tee, seq, "rejected", now, {"profile": profile.name, "error": str(exc),
                                                                       **_report_detail(report)}, rest=False)
            raise
        except Exception as exc:
            log.exception("CSV upload %s failed", message_id)
            self._finish_alone(message_id, tee, seq, "failed", now, {"profile": profile.name, "error": repr(exc)[:500],
                                                                     **_report_detail(report)})
            raise
        outcome = "partial" if report.rejected_total else "stored"
        with self.db.transaction() as session:
            archive.finish(session, message_id, outcome, now, {"profile": profile.name, **_report_detail(report)},
                           digest=tee.digest.value())
            self._audit(session, caller, f"CSV line list ({profile.name}), archive {message_id}: "
                                         f"{report.accepted} rows stored, {report.rejected_total} rejected",
                        [], 200, now)
        return report

    def _csv_batch(self, session: Session, batch: list[csv_reports.RowResult], caller: Caller, message_id: int,
                   report: CsvReport, now: datetime) -> None:
        """One transaction: the rejected rows kept; the good rows' Bundles as ONE transaction
        Bundle (criteria searched together, new resources written together by COPY: a Bundle
        per row cost ~15 ms a row, bench/RESULTS.md, fourth session); should the store refuse
        it, each row again in a savepoint of its own, so a row the store refuses fails alone.
        One Provenance per hospital for the rows stored."""
        good: list[csv_reports.RowResult] = []
        for result in batch:
            if result.errors or result.bundle is None:
                self._reject_row(session, message_id, result, result.errors, report)
            else:
                good.append(result)
        if not good:
            return
        senders_seen = {code: senders.find(session, code) for code in {r.sender or "" for r in good}}
        repo = self._repository(session, caller, None, message_id)
        # All rows' criteria locked first, outside the savepoints (a lock taken in a savepoint
        # that rolls back is released): the per-row fallback below then cannot deadlock with
        # another upload locking the same patients in another order.
        repo.lock_criteria_of(conditional_criteria([e for r in good for e in (r.bundle or {}).get("entry", ())]))
        written_by_row: dict[int, list[str]] = {}
        try:
            with session.begin_nested():
                combined, owners = _combine([r.bundle for r in good if r.bundle is not None])
                start = len(repo.written)
                response = BundleProcessor(repo, f"{self.base_url}/fhir").process(combined)
                written = set(repo.written[start:])
                for owner, entry in zip(owners, response["entry"], strict=True):
                    location = (entry.get("response") or {}).get("location")
                    if location in written:
                        written_by_row.setdefault(owner, []).append(location)
        except FhirError:
            repo = self._repository(session, caller, None, message_id)
            written_by_row = {}
            for index, result in enumerate(good):
                assert result.bundle is not None
                try:
                    with session.begin_nested():
                        written_by_row[index] = self._store(repo, result.bundle, now)
                except FhirError as err:
                    self._reject_row(session, message_id, result,
                                     {"_row": [_first_line(i.diagnostics) for i in err.issues[:5]]}, report)
                    written_by_row[index] = []
                    good[index] = _REFUSED
        if self.after_write is not None:
            self.after_write(session, repo, now)
        by_sender: dict[str, list[str]] = {}
        for index, result in enumerate(good):
            if result is _REFUSED:
                continue
            report.accepted += 1
            rows_written = written_by_row.get(index, [])
            _count_written(report.resources, rows_written)
            by_sender.setdefault(result.sender or "", []).extend(rows_written)
            if len(report.notes) < 200:
                report.notes.extend(_note_json(n, result.row) for n in result.notes[:5])
        first, last = batch[0].row, batch[-1].row
        for code, written_refs in by_sender.items():
            self._provenance(self._repository(session, caller, senders_seen.get(code), message_id), written_refs,
                             senders_seen.get(code), message_id,
                             f"CSV line list rows {first}-{last} (archive {message_id})", now)

    @staticmethod
    def _reject_row(session: Session, message_id: int, result: csv_reports.RowResult,
                    errors: dict[str, list[str]], report: CsvReport) -> None:
        report.reject(result.row, errors)
        # storable: a row refused for a NUL is kept with U+FFFD in its place (the file's bytes are
        # archived as they came); PostgreSQL cannot hold U+0000 in jsonb or text.
        session.execute(insert(InboundRow).values(message_id=message_id, row=result.row,
                                                  case_id=storable((result.case_id or "")[:200]) or None,
                                                  raw=storable(result.raw), errors=errors, status="rejected"))

    def _csv_senders(self, caller: Caller) -> Callable[[str], SenderProfile]:
        """The rows' hospitals must be registered. A client registered as a hospital's sender
        sends only that hospital's rows; another client (a regional surveillance office) may send
        any registered hospital's, within what its scopes let it write."""
        bound: str | None = None
        if caller.client_id is not None:
            with self.db.transaction() as session:
                row = senders.for_client(session, caller.client_id)
                bound = row.code if row is not None else None

        def lookup(code: str) -> SenderProfile:
            with self.db.transaction() as session:
                row = senders.find(session, code)
                if row is None:
                    raise LookupError(f"hospital {code!r} is not a registered sender")
                if bound is not None and row.code != bound:
                    raise LookupError(f"this client sends for {bound!r}, not for hospital {code!r}")
                return senders.profile(row)
        return lookup

    def _finish_alone(self, message_id: int, tee: _Tee, seq: int, outcome: str, now: datetime,
                      detail: dict[str, Any], *, rest: bool = True) -> None:
        """Archive what is left of the upload (what was read; with ``rest``, also what was not)
        and its outcome after a failure."""
        try:
            with self.db.transaction() as session:
                for chunk in [*tee.take(), *(tee.rest() if rest else ())]:
                    archive.add_chunk(session, message_id, seq, chunk)
                    seq += 1
                archive.finish(session, message_id, outcome, now, detail, digest=tee.digest.value())
        except Exception:
            log.exception("could not record the outcome of CSV upload %s", message_id)

    # -- shared ----------------------------------------------------------------------------

    def _repository(self, session: Session, caller: Caller, sender: Sender | None, message_id: int) -> Repository:
        actor = f"sender:{sender.code}" if sender is not None else f"client:{caller.client_id}"
        ctx = RequestContext(actor=actor, source=f"{self.base_url}/ingest/archive/{message_id}", access=caller.access)
        return Repository(session, ctx, self.clock)

    def _store(self, repo: Repository, bundle: dict[str, Any], now: datetime) -> list[str]:
        """Process a transaction Bundle; the versioned references it created or changed."""
        start = len(repo.written)
        BundleProcessor(repo, f"{self.base_url}/fhir").process(bundle)
        return repo.written[start:]

    def _provenance(self, repo: Repository, written: list[str], sender: Sender | None, message_id: int,
                    description: str, now: datetime) -> str | None:
        """One Provenance for everything a payload wrote: target the versions, agent the sender,
        entity the archived payload. None when nothing was written (all unchanged)."""
        targets = [w for w in written if not w.startswith("Provenance/")]
        if not targets:
            return None
        author: dict[str, Any] = {"type": _AUTHOR, "who": (
            {"reference": sender.organization, "display": sender.name} if sender is not None and sender.organization
            else {"display": sender.name if sender is not None else "unregistered sender"})}
        provenance = {
            "resourceType": "Provenance",
            "target": [{"reference": t} for t in targets],
            "recorded": instant(now),
            "activity": {**_TRANSFORM, "text": description[:500]},
            "agent": [author, {"type": _ASSEMBLER, "who": {"display": "HealthHub"}}],
            "entity": [{"role": "source", "what": {
                "identifier": {"system": ARCHIVE_SYSTEM, "value": str(message_id)},
                "display": description[:500]}}],
        }
        with repo.batched():  # its rows in one round trip
            stored = repo.create(provenance).stored
        return f"Provenance/{stored.id}/_history/{stored.version_id}"

    def _after(self, session: Session, repo: Repository, now: datetime) -> None:
        if self.after_write is not None:
            self.after_write(session, repo, now)

    def _audit(self, session: Session, caller: Caller, description: str, entities: list[str], status: int,
               now: datetime) -> None:
        refs = [e.split("/_history/")[0] for e in entities]
        record(session, Happening(subtype="ingest", action="C", status=status, description=description,
                                  client_id=caller.client_id, address=caller.peer, entities=refs), now)

    def _archive_alone(self, arrival: Arrival, outcome: str, now: datetime, detail: dict[str, Any]) -> None:
        """A refused payload: archived (and audited) in a transaction of its own."""
        with self.db.transaction() as session:
            message_id = archive.add(session, arrival, outcome, now, detail)
            record(session, Happening(subtype="ingest", action="C", status=400, client_id=arrival.client_id,
                                      address=arrival.peer, description=f"{arrival.kind} payload refused "
                                      f"(archive {message_id}): {arrival.message_type or ''} {arrival.control_id or ''}"
                                      .strip()), now)

    def _archive_quietly(self, arrival: Arrival, outcome: str, now: datetime, detail: dict[str, Any]) -> None:
        """Archive after a failure, if the database lets us (it may be the cause)."""
        try:
            archive.add_alone(self.db, arrival, outcome, now, detail)
        except Exception:
            log.exception("could not archive a %s payload after a failure", arrival.kind)


class UploadTooLarge(Exception):
    """The upload's stream stopped at the transport's size limit (a chunked HTTP upload past
    HEALTHHUB_MAX_BODY): the client's error, refused; the stream cannot be read any further."""


class _Duplicate(Exception):
    """The message's sender and MSH-10 were stored by a concurrent transaction."""


class _Tee(io.RawIOBase):
    """A binary stream that keeps what was read (for the archive) and its digest."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self._stream = stream
        self._pending: list[bytes] = []
        self.digest = archive.Digest()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        if not data:
            return 0
        self.digest.update(data)
        self._pending.append(data)
        buffer[:len(data)] = data
        return len(data)

    def take(self) -> list[bytes]:
        """What was read since the last call, in pieces of at most CHUNK_SIZE."""
        data = b"".join(self._pending)
        self._pending = []
        return [data[i:i + archive.CHUNK_SIZE] for i in range(0, len(data), archive.CHUNK_SIZE)]

    def rest(self) -> Iterator[bytes]:
        """The part of the stream not read yet (after a failure: the archive keeps it all)."""
        buffer = bytearray(archive.CHUNK_SIZE)
        while self.readinto(buffer):
            yield from self.take()


#: A row the store refused in the one-row-at-a-time retry of a batch.
_REFUSED = csv_reports.RowResult(row=0, case_id=None, raw={})


def _combine(bundles: list[dict[str, Any]]) -> tuple[dict[str, Any], list[int]]:
    """The transaction Bundles of several rows as one, and for each entry the index of its row.

    Rows about one patient each carry the same conditional create of the Patient: kept once (a
    transaction's creates do not see each other, so two would make two Patients), the later
    rows' references to theirs pointed at the first."""
    entries: list[dict[str, Any]] = []
    owners: list[int] = []
    first_of: dict[tuple[str, str], str] = {}
    for index, bundle in enumerate(bundles):
        alias: dict[str, str] = {}
        for entry in bundle.get("entry") or []:
            request = entry.get("request") or {}
            criteria = request.get("ifNoneExist")
            if request.get("method") == "POST" and criteria:
                key = (str(request.get("url")), str(criteria))
                if key in first_of:
                    alias[str(entry.get("fullUrl"))] = first_of[key]
                    continue
                first_of[key] = str(entry.get("fullUrl"))
            entries.append(_pointed(entry, alias) if alias else entry)
            owners.append(index)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, owners


def _pointed(node: Any, alias: dict[str, str]) -> Any:
    """``node`` with references to an ``alias`` key pointed at its value (a new structure)."""
    if isinstance(node, dict):
        return {k: (alias.get(v, v) if k == "reference" and isinstance(v, str) else _pointed(v, alias))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_pointed(v, alias) for v in node]
    return node


def _batches(rows: Iterable[csv_reports.RowResult], size: int) -> Iterator[list[csv_reports.RowResult]]:
    batch: list[csv_reports.RowResult] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _claim(session: Session, sender: str, control_id: str, message_id: int) -> bool:
    """Record that the sender's message ``control_id`` (MSH-10) is stored by ``message_id``; False
    when it was stored before. ``ON CONFLICT DO NOTHING``: one statement, where an INSERT that
    fails inside a savepoint took three round trips. A copy racing in another transaction waits
    for it here, then finds the key (it committed) or takes it (it rolled back)."""
    table: Table = InboundKey.__table__  # type: ignore[assignment]
    make = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = make(table).values(sender=sender, kind="hl7", key=control_id[:200], message_id=message_id)
    claimed = session.execute(stmt.on_conflict_do_nothing(index_elements=["sender", "kind", "key"])
                              .returning(table.c.message_id)).first()
    return claimed is not None


def _header_or_none(data: bytes) -> hl7v2.MessageHeader | None:
    try:
        return hl7v2.read_header(data[:65536])
    except hl7v2.Rejected as exc:
        return exc.header
    except Exception:
        return None


def _issue_json(issue: hl7v2.Located) -> dict[str, Any]:
    return {"severity": issue.severity, "location": issue.location, "code": issue.code, "text": issue.text}


def _note_issue(note: Note) -> hl7v2.Located:
    """A normalization note as a warning of the ACK (an unmapped code: HL7 error 103)."""
    found = _LOCATION.match(note.location or "")
    segment, sequence, fld = (found.group(1), int(found.group(2) or 1), int(found.group(3))) if found \
        else ("MSH", 1, None)
    code = "103" if note.kind == "unmapped-code" else "102"
    return hl7v2.Located(severity="W", segment=segment, sequence=sequence, field=fld, code=code, text=note.message)


def _note_json(note: Note, row: int) -> dict[str, str]:
    return {"row": str(row), "kind": note.kind, "column": note.location, "message": note.message}


def _count_bundle(counts: Counter[str], bundle: dict[str, Any] | None) -> None:
    for entry in (bundle or {}).get("entry") or []:
        rtype = (entry.get("resource") or {}).get("resourceType")
        if rtype:
            counts[rtype] += 1


def _count_written(counts: Counter[str], written: list[str]) -> None:
    for ref in written:
        counts[ref.split("/", 1)[0]] += 1


def _report_detail(report: CsvReport) -> dict[str, Any]:
    return {"accepted": report.accepted, "rejected": report.rejected_total,
            "resources": dict(sorted(report.resources.items()))}


def _escape(value: str) -> str:
    """A token search value: ``\\``, ``|``, ``,`` and ``$`` escaped (https://hl7.org/fhir/R4B/search.html#escaping)."""
    return value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def _first_line(text: str) -> str:
    return text.splitlines()[0][:300] if text else ""


def stored_senders(session: Session) -> list[str]:
    """Hospital codes of the registered senders (for messages and tests)."""
    return list(session.scalars(select(Sender.code).order_by(Sender.code)))
