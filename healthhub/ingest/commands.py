"""``healthhub sender …``, ``healthhub mllp`` and ``healthhub ingest …`` (CONTRACT §3).

``healthhub ingest PATH…`` loads files of every inbound kind — FHIR (``.json``, ``.ndjson``),
HL7 v2 (``.hl7``: one or more messages) and CSV line lists (``.csv``) — through the same
pipeline as HTTP and MLLP, archive included. ``ingest list``, ``ingest show`` and ``ingest
replay`` work on the archive.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .. import gctune
from ..clock import utcnow
from ..config import Config
from ..db import Database

HL7_SUFFIXES = (".hl7",)
CSV_SUFFIXES = (".csv",)


def _config() -> Config:
    try:
        return Config.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _database() -> Iterator[Database]:
    database = Database(_config())
    try:
        yield database
    finally:
        database.dispose()


def _pipeline(database: Database) -> Any:
    from .. import ingest_pipeline

    return ingest_pipeline(database, database.config)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, uri = value.partition("=")
        if not sep or not name.strip() or not uri.strip():
            raise click.ClickException(f"{option} takes NAME=URI, not {value!r}")
        out[name.strip()] = uri.strip()
    return out


# -- senders ----------------------------------------------------------------------------------

@click.group()
def sender() -> None:
    """Sending hospitals: how each one's HL7 v2 messages and CSV files are read."""


@sender.command("create")
@click.option("--code", required=True, help="Hospital code: HL7 MSH-4 (sending facility) and CSV hospital_code.")
@click.option("--name", required=True, help="The hospital's name.")
@click.option("--organization", help="Organization/<id> the hospital is (Provenance agent).")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone of timestamps sent without an offset.")
@click.option("--identifier-system", "identifier_systems", multiple=True, metavar="AUTHORITY=URI",
              help="Identifier system of an assigning authority (HL7 CX-4), repeatable.")
@click.option("--code-system", "code_systems", multiple=True, metavar="NAME=URI",
              help="System URI of a local coding system (HL7 CWE-3), repeatable.")
@click.option("--client", "client_id", help="OAuth client that may send for this hospital over HTTP.")
def sender_create(code: str, name: str, organization: str | None, timezone: str, identifier_systems: tuple[str, ...],
                  code_systems: tuple[str, ...], client_id: str | None) -> None:
    """Register a sending hospital."""
    from ..auth.models import OAuthClient
    from .senders import SenderError, create

    with _database() as database:
        try:
            with database.transaction() as session:
                if client_id is not None and session.get(OAuthClient, client_id) is None:
                    raise SenderError(f"no OAuth client {client_id!r} (healthhub client list)")
                create(session, code, name, utcnow(), organization=organization, timezone=timezone,
                       identifier_systems=_pairs(identifier_systems, "--identifier-system"),
                       code_systems=_pairs(code_systems, "--code-system"), client_id=client_id)
        except SenderError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"sender {code} registered")


@sender.command("list")
def sender_list() -> None:
    """The registered senders."""
    from .senders import all_senders

    with _database() as database, database.transaction() as session:
        for row in all_senders(session):
            flags = " (disabled)" if row.disabled else ""
            click.echo(f"{row.code}\t{row.name}\t{row.organization or '-'}\t{row.timezone}\t"
                       f"client={row.client_id or '-'}{flags}")


@sender.command("disable")
@click.argument("code")
def sender_disable(code: str) -> None:
    """Refuse a hospital's messages from now on (they are still archived)."""
    from .models import Sender

    with _database() as database, database.transaction() as session:
        row = session.get(Sender, code)
        if row is None:
            raise click.ClickException(f"no sender {code!r}")
        row.disabled = True
    click.echo(f"sender {code} disabled")


# -- MLLP -------------------------------------------------------------------------------------

@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2575, show_default=True, type=click.IntRange(1, 65535))
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Listener processes sharing the port (SO_REUSEPORT, Linux): one per core.")
@click.option("--idle-timeout", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a connection may stay silent (or take for one message).")
@click.option("--metrics-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics (payloads archived, by kind and outcome) on this port; 0: none.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address of the metrics port (it has no authentication: keep it on a management network).")
def mllp(host: str, port: int, processes: int, idle_timeout: float, metrics_port: int, metrics_host: str) -> None:
    """Listen for HL7 v2 messages over MLLP; store each and answer its ACK."""
    config = _config()
    click.echo(f"HL7 v2 MLLP listener on {host}:{port}, {processes} process(es) (Ctrl+C stops)", err=True)
    if metrics_port:
        _serve_metrics(metrics_host, metrics_port, processes)
    if processes == 1:
        _listen(config, host, port, idle_timeout, reuse_port=False)
        return
    _listen_in_processes(config, host, port, idle_timeout, processes)


def _serve_metrics(host: str, port: int, processes: int) -> None:
    import shutil
    import tempfile

    from .. import metrics

    if processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The listener processes are spawned (fresh interpreters): with this set before they start,
        # each writes its samples to files here, and this process adds them up (healthhub/metrics.py).
        folder = tempfile.mkdtemp(prefix="healthhub-mllp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        import atexit

        atexit.register(shutil.rmtree, folder, True)
    metrics.serve_separately(host, port)
    click.echo(f"Prometheus metrics on http://{host}:{port}/metrics", err=True)


def _listen(config: Config, host: str, port: int, idle_timeout: float, reuse_port: bool) -> None:
    """One listener process: its own database connections, the pipeline behind the server."""
    import logging

    from .. import logs
    from .mllp import Frame, MllpServer
    from .pipeline import Caller

    if not logging.getLogger().handlers:  # a listener process of --processes N: configure as `healthhub` does
        logs.configure(config.log_format)

    database = Database(config)
    pipeline = _pipeline(database)
    gctune.settle()

    def handle(frame: Frame) -> bytes:
        ack: bytes = pipeline.receive_hl7v2(frame.data, Caller("mllp", peer=frame.peer), truncated=frame.truncated)
        return ack

    server = MllpServer(handle, host, port, max_message=config.max_body, idle_timeout=idle_timeout,
                        reuse_port=reuse_port)
    try:
        server.run()
    finally:
        database.dispose()


def _listen_in_processes(config: Config, host: str, port: int, idle_timeout: float, processes: int) -> None:
    """Several listener processes on one port: one Python process is one core's worth of HL7
    mapping and validation, so a listener per core. SIGINT/SIGTERM reach all of them (each
    stops gracefully); the command ends when they have."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no connection shared across a fork
    children = [context.Process(target=_listen, args=(config, host, port, idle_timeout, True), daemon=False)
                for _ in range(processes)]
    for child in children:
        child.start()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = 0
    for child in children:
        child.join()
        failed += child.exitcode not in (0, None, -signal.SIGINT, -signal.SIGTERM)
    if failed:
        raise click.ClickException(f"{failed} listener process(es) failed; see the log above")


# -- ingest -----------------------------------------------------------------------------------

class IngestGroup(click.Group):
    """``ingest PATH…`` loads files (the ``files`` command); ``ingest list|show|replay`` read the archive."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["files", *args]
        return super().parse_args(ctx, args)


@click.group(cls=IngestGroup)
def ingest() -> None:
    """Load FHIR (.json, .ndjson), HL7 v2 (.hl7) and CSV (.csv) files; list, show and replay the archive."""


@ingest.command("files")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--profile", default="case-report", show_default=True, help="Mapping profile of the CSV files.")
@click.option("--dry-run", is_flag=True, help="CSV: validate and report, store nothing.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100000),
              help="NDJSON lines per transaction.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ingest_files(paths: tuple[Path, ...], profile: str, dry_run: bool, batch_size: int, quiet: bool) -> None:
    """Load files or folders of FHIR, HL7 v2 and CSV data (healthhub ingest PATH…)."""
    from tqdm import tqdm

    from ..context import RequestContext
    from .csv_profile import ProfileError, UnknownProfileError, load_profile
    from .fhir_files import FHIR_SUFFIXES, Summary, discover, ingest_file

    files, skipped = discover(paths, (*FHIR_SUFFIXES, *HL7_SUFFIXES, *CSV_SUFFIXES))
    for name in skipped:
        click.echo(f"skipped {name}: not a .json, .ndjson, .hl7 or .csv file", err=True)
    if not files:
        raise click.ClickException("nothing to ingest: no .json, .ndjson, .hl7 or .csv files in the given paths")
    csv_profile = None
    if any(f.suffix.lower() in CSV_SUFFIXES for f in files):
        try:
            csv_profile = load_profile(profile)
        except (UnknownProfileError, ProfileError) as exc:
            raise click.ClickException(str(exc)) from None
    summary = Summary(skipped=skipped)
    with _database() as database:
        pipeline = _pipeline(database)
        gctune.settle()
        ctx = RequestContext(actor="cli-ingest")
        with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, disable=quiet or None,
                  file=sys.stderr) as bar:
            for path in files:
                bar.set_postfix_str(path.name[-40:], refresh=False)
                suffix = path.suffix.lower()
                if suffix in HL7_SUFFIXES:
                    _ingest_hl7(pipeline, path, summary)
                    bar.update(path.stat().st_size)
                elif suffix in CSV_SUFFIXES:
                    assert csv_profile is not None
                    _ingest_csv(pipeline, path, csv_profile, dry_run, summary)
                    bar.update(path.stat().st_size)
                else:
                    ingest_file(database, path, ctx, summary, bar.update, batch_size)
    for err in summary.errors[:50]:
        click.echo(err, err=True)
    if len(summary.errors) > 50:
        click.echo(f"… and {len(summary.errors) - 50} more errors", err=True)
    click.echo(summary.line())
    if summary.errors:
        sys.exit(1)


def _ingest_hl7(pipeline: Any, path: Path, summary: Any) -> None:
    """Each message of an .hl7 file (one, or a batch) through the pipeline, as MLLP would send it."""
    from . import hl7v2
    from .pipeline import Caller

    summary.files += 1
    data = path.read_bytes()
    messages = hl7v2.split_messages(data) or [data]
    for number, message in enumerate(messages, 1):
        ack = pipeline.receive_hl7v2(message, Caller("cli", peer=str(path)))
        code, text = _ack_code(ack)
        summary.outcomes[f"HL7 {code}"] += 1
        if code != "AA":
            summary.errors.append(f"{path} message {number}: {code}: {text}")


def _ack_code(ack: bytes) -> tuple[str, str]:
    """MSA-1 and the ERR texts of an ACK (for the summary)."""
    lines = ack.decode("utf-8", "replace").split("\r")
    code, texts = "??", []
    for line in lines:
        if len(line) < 4:
            continue
        fs = line[3]
        fields = line.split(fs)
        if fields[0] == "MSA" and len(fields) > 1:
            code = fields[1]
        elif fields[0] == "ERR":
            texts.append(next((f for f in reversed(fields) if f), ""))
    return code, "; ".join(t for t in texts if t)[:500]


def _ingest_csv(pipeline: Any, path: Path, profile: Any, dry_run: bool, summary: Any) -> None:
    from .csv_reports import HeaderError
    from .pipeline import Caller

    summary.files += 1
    with path.open("rb") as fh:
        try:
            report = pipeline.receive_csv(fh, profile, Caller("cli", peer=str(path)), dry_run=dry_run)
        except HeaderError as exc:
            summary.outcomes["CSV file refused"] += 1
            summary.errors.append(f"{path}: {exc.message}")
            return
    summary.outcomes["CSV rows stored" if not dry_run else "CSV rows valid"] += report.accepted
    summary.outcomes["CSV rows rejected"] += report.rejected_total
    for rejected in report.rejected:
        errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in rejected["errors"].items())
        summary.errors.append(f"{path} row {rejected['row']}: {errors}")


@ingest.command("list")
@click.option("--failed", is_flag=True, help="Only payloads that were rejected, failed or interrupted.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
def ingest_list(failed: bool, limit: int) -> None:
    """Archived payloads, newest first."""
    from . import archive

    with _database() as database, database.transaction() as session:
        rows = archive.listing(session, archive.REPLAYABLE if failed else None, limit)
        for row in rows:
            click.echo(f"{row.id}\t{row.received_at.isoformat(timespec='seconds')}\t{row.transport}\t"
                       f"{row.sender or '-'}\t{row.message_type or '-'}\t{row.control_id or '-'}\t{row.outcome}\t"
                       f"{_reason(row.detail)}")
        counts = archive.counts(session)
    click.echo("; ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "the archive is empty", err=True)


def _reason(detail: Any) -> str:
    if not isinstance(detail, dict):
        return ""
    if detail.get("error"):
        return str(detail["error"])[:200]
    issues = [i for i in detail.get("issues") or [] if i.get("severity") in ("E", "F")]
    if issues:
        return "; ".join(f"{i.get('location')}: {i.get('text')}" for i in issues)[:200]
    if "rejected" in detail:
        return f"{detail.get('accepted', 0)} rows stored, {detail['rejected']} rejected"
    return ""


@ingest.command("show")
@click.argument("message_id", type=int)
@click.option("--payload", is_flag=True, help="Write the raw payload to standard output instead.")
def ingest_show(message_id: int, payload: bool) -> None:
    """One archived payload: where it came from and what became of it."""
    from .. import jsonio
    from . import archive

    with _database() as database, database.transaction() as session:
        row = archive.get(session, message_id)
        if row is None:
            raise click.ClickException(f"no archived payload {message_id}")
        if payload:
            for chunk in archive.payload_chunks(session, row):
                sys.stdout.buffer.write(chunk)
            return
        info = {"id": row.id, "received_at": row.received_at.isoformat(), "transport": row.transport,
                "kind": row.kind, "sender": row.sender, "client_id": row.client_id, "peer": row.peer,
                "content_type": row.content_type, "message_type": row.message_type, "control_id": row.control_id,
                "sha256": row.sha256, "size": row.size, "outcome": row.outcome, "replay_of": row.replay_of,
                "detail": row.detail}
        click.echo(jsonio.dumps(info, pretty=True).decode())


@ingest.command("replay")
@click.option("--id", "ids", multiple=True, type=int, help="Archive id to replay (repeatable).")
@click.option("--failed", is_flag=True, help="Every rejected, failed or interrupted payload, oldest first.")
def ingest_replay(ids: tuple[int, ...], failed: bool) -> None:
    """Process archived payloads again (after a mapping, profile or sender fix)."""
    from .replay import ReplayError, failed_ids, replay

    if not ids and not failed:
        raise click.ClickException("name payloads with --id N (repeatable) or use --failed")
    bad = 0
    with _database() as database:
        pipeline = _pipeline(database)
        todo = list(ids) if ids else failed_ids(database)
        if not todo:
            click.echo("nothing to replay")
            return
        for message_id in todo:
            try:
                line, ok = replay(database, pipeline, message_id)
            except ReplayError as exc:
                line, ok = f"{message_id}: {exc}", False
            click.echo(line)
            bad += not ok
    if bad:
        sys.exit(1)


def register(main: click.Group, remove: Callable[[str], object]) -> None:
    """Add the commands to the ``healthhub`` group."""
    for command in (sender, mllp, ingest):
        remove(command.name or "")
        main.add_command(command)
