"""The ``healthhub`` command (CONTRACT §3). Every command exits non-zero with a one-line error."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .config import Config


def _config() -> Config:
    try:
        return Config.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _database(cfg: Config) -> Any:
    from .db import Database

    return Database(cfg)


class _Group(click.Group):
    """Turn database and file errors into the one-line error the contract promises."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

        try:
            return super().invoke(ctx)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise click.ClickException(f"bad HEALTHHUB_DATABASE_URL: {_first_line(exc)}") from None
        except SQLAlchemyError as exc:
            text = _first_line(getattr(exc, "orig", None) or exc)
            if "no such table" in text or "does not exist" in text and "relation" in text:
                text += " (run `healthhub db upgrade` first)"
            raise click.ClickException(f"database error: {text}") from None
        except OSError as exc:
            raise click.ClickException(str(exc)) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="healthhub")
def main() -> None:
    """HealthHub — a FHIR R4B data hub."""
    from . import logs

    try:
        fmt = Config.from_env().log_format
    except ValueError:
        fmt = "text"  # the command itself reports the bad setting
    logs.configure(fmt)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Run the Alembic migrations (SQLite and PostgreSQL)."""
    from sqlalchemy.exc import SQLAlchemyError

    from . import migrate

    cfg = _config()
    database = _database(cfg)
    try:
        migrate.upgrade(database.engine, revision)
        click.echo(f"database at {database.engine.url.render_as_string(hide_password=True)} is at {revision}")
        from .search import store

        if store.reindex_required(database):
            # A migration changed the index tables: rebuild them now rather than serve wrong results.
            count = store.reindex(database)
            click.echo(f"search index rebuilt for {count} resource(s)")
    except (SQLAlchemyError, RuntimeError) as exc:
        raise click.ClickException(f"migration failed: {_first_line(getattr(exc, 'orig', None) or exc)}") from None
    finally:
        database.dispose()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Serve the hub (gunicorn where available, else the Werkzeug server)."""
    import atexit
    import os
    import shutil
    import tempfile

    # Prometheus samples of every worker, added up by /metrics (healthhub/metrics.py). Set before
    # anything imports prometheus_client: it picks its storage at import. Removed when the master
    # exits, unless the operator chose the folder.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        folder = tempfile.mkdtemp(prefix="healthhub-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        master = os.getpid()

        def remove_metrics() -> None:
            if os.getpid() == master:  # workers run atexit too: only the master removes it
                shutil.rmtree(folder, ignore_errors=True)

        atexit.register(remove_metrics)

    from . import create_app, logs, metrics, migrate

    cfg = _config()
    database = _database(cfg)
    try:
        if not migrate.is_current(database.engine):
            raise click.ClickException("the database schema is not up to date; run `healthhub db upgrade`")
    finally:
        database.dispose()
    click.echo(f"HealthHub serving FHIR R4B at http://{host}:{port}/fhir "
               f"(CapabilityStatement: http://{host}:{port}/fhir/metadata); "
               f"public-health dashboard: http://{host}:{port}/dashboard")
    def worker_started(_gunicorn_worker: Any = None) -> None:
        from . import gctune

        gctune.settle()  # the app is loaded: its start-up objects out of the collector's way
        # Bulk Data jobs are run by a thread in each web process unless HEALTHHUB_EXPORT_WORKER=off
        # (then by `healthhub worker` processes); jobs live in the database, so any may take one.
        if cfg.export_worker == "thread":
            from .bulk.worker import start_thread

            start_thread(cfg)

    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:  # e.g. Windows: gunicorn needs fork()
        app = create_app(cfg)
        worker_started()
        app.run(host=host, port=port, threaded=True)
        return

    formatter = {"()": logs.JsonFormatter} if cfg.log_format == "json" else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            # No gunicorn access log: its request line holds the query string (``?name=…``), which
            # is personal data; the hub logs each request by route instead (healthhub/api/edge.py).
            self.cfg.set("accesslog", None)
            self.cfg.set("logconfig_dict", {
                "version": 1, "disable_existing_loggers": False,
                "formatters": {"hub": formatter},
                "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "hub"}},
                "loggers": {"gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
                "root": {"handlers": ["stderr"], "level": "INFO"}})
            self.cfg.set("timeout", 120)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn ≥ 27's control socket lives at one path per user ($HOME/.gunicorn/):
                # two hubs (or a hub and a test) on one host would share it. The hub does not use it.
                self.cfg.set("control_socket_disable", True)
            self.cfg.set("post_worker_init", worker_started)  # after the fork and the app's loading
            self.cfg.set("child_exit", lambda _arbiter, worker: metrics.process_exited(worker.pid))

        def load(self) -> Any:
            return create_app(cfg)

    _Gunicorn().run()


@main.command()
@click.option("--once", is_flag=True, help="Run the waiting jobs, then exit (instead of polling for more).")
@click.option("--metrics-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics (export jobs by outcome, resources exported, jobs in progress, "
                   "last poll) on this port; 0: none.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address of the metrics port (it has no authentication: keep it on a management network).")
def worker(once: bool, metrics_port: int, metrics_host: str) -> None:
    """Run Bulk Data export jobs (any number of workers may run, on any host sharing the database
    and HEALTHHUB_EXPORT_DIR)."""
    import signal

    from .bulk.worker import Worker

    cfg = _config()
    if metrics_port:
        from . import metrics

        metrics.serve_separately(metrics_host, metrics_port)
        click.echo(f"Prometheus metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    database = _database(cfg)
    runner = Worker(database, cfg)
    try:
        if once:
            done = 0
            while runner.run_once() is not None:
                done += 1
            click.echo(f"{done} export job(s) run")
            return
        signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
        click.echo(f"export worker {runner.name}: waiting for jobs (Ctrl-C or SIGTERM stops it)")
        try:
            runner.run_forever()
        except KeyboardInterrupt:
            pass
    finally:
        database.dispose()


@main.group()
def search() -> None:
    """The search index."""


@search.command("reindex")
@click.argument("resource_type", required=False)
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100000))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def search_reindex(resource_type: str | None, batch_size: int, quiet: bool) -> None:
    """Rebuild the search index (of one resource type, or of all) from the stored resources."""
    from sqlalchemy import func, select
    from tqdm import tqdm

    from . import resources
    from .search import store
    from .storage.models import Resource

    if resource_type is not None and not resources.is_resource_type(resource_type):
        raise click.ClickException(f"unknown resource type {resource_type!r}")
    database = _database(_config())
    try:
        with database.transaction() as session:
            stmt = select(func.count()).select_from(Resource).where(Resource.deleted.is_(False))
            if resource_type is not None:
                stmt = stmt.where(Resource.resource_type == resource_type)
            total = session.scalar(stmt) or 0
        with tqdm(total=total, unit="res", disable=quiet or None, file=sys.stderr) as bar:
            count = store.reindex(database, resource_type, batch_size, bar.update)
    finally:
        database.dispose()
    click.echo(f"reindexed {count} {resource_type or 'resource'}(s)")


@main.command()
@click.option("--force", is_flag=True, help="Load again even when already loaded.")
def demo(force: bool) -> None:
    """Seed the demo data set, users and clients (idempotent)."""
    from . import demo as demo_data

    cfg = _config()
    database = _database(cfg)
    try:
        counts = demo_data.load(database, force=force)
        access = demo_data.seed_access(database)
        made = demo_data.seed_senders(database)
        from . import ingest_pipeline

        cases = demo_data.load_cases(database, ingest_pipeline(database, cfg))
    finally:
        database.dispose()
    if made:
        click.echo(f"demo sending hospitals registered: {', '.join(made)} (healthhub sender list)")
    if cases is not None:
        click.echo(f"demo case reports loaded: {cases} synthetic rows from H01-H03 (see /dashboard and /stats)")
    for line in access or ["demo users and clients exist already (their credentials were shown when they "
                           "were made; `healthhub client create` and `user create` make more)"]:
        click.echo(line)
    if counts is None:
        click.echo("demo data already loaded")
    else:
        click.echo("demo data loaded: " + ", ".join(f"{n} × {k}" for k, n in sorted(counts.items())))
    click.echo("demo patients (synthetic, Synthea):")
    for pid, name in demo_data.patients():
        click.echo(f"  {cfg.fhir_base}/Patient/{pid}  {name}")


@contextmanager
def _registry_session() -> Iterator[Any]:
    """A transaction that registers or disables clients and users; their refusals as one line."""
    from .auth.registry import RegistrationError

    database = _database(_config())
    try:
        with database.transaction() as session:
            yield session
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()


@main.group()
def client() -> None:
    """OAuth clients: apps and hospital systems."""


@client.command("create")
@click.option("--name", required=True, help="What the client is (shown on the consent page).")
@click.option("--grant", required=True, type=click.Choice(["client_credentials", "authorization_code"]),
              help="client_credentials: a backend (hospital system, registry); authorization_code: a SMART app.")
@click.option("--scope", required=True, help='The most the client may ask for, e.g. "system/*.cu" or '
              '"launch/patient openid fhirUser offline_access patient/*.rs".')
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JWK Set of the client's public keys (private_key_jwt, RS384/ES384); without it a backend "
                   "gets a secret and an app is public (PKCE).")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI of an app (repeatable).")
@click.option("--organization", help="Organization/<id> a hospital system writes for.")
def client_create(name: str, grant: str, scope: str, jwks_file: Path | None, redirect_uris: tuple[str, ...],
                  organization: str | None) -> None:
    """Register a client; prints {"client_id": …, "client_secret": …} (the secret only once)."""
    import orjson

    from .auth.registry import create_client
    from .clock import utcnow

    jwks = None
    if jwks_file is not None:
        try:
            jwks = orjson.loads(jwks_file.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"{jwks_file}: not JSON ({exc})") from None
    with _registry_session() as session:
        made = create_client(session, name=name, grant=grant, scope=scope, jwks=jwks,
                             redirect_uris=redirect_uris, organization=organization, now=utcnow())
    out: dict[str, str] = {"client_id": made.client_id}
    if made.client_secret:
        out["client_secret"] = made.client_secret
    click.echo(orjson.dumps(out).decode())


@client.command("list")
def client_list() -> None:
    """One JSON line per registered client (never a secret)."""
    import orjson
    from sqlalchemy import select

    from .auth.models import OAuthClient

    database = _database(_config())
    try:
        with database.sessionmaker() as session:
            for c in session.scalars(select(OAuthClient).order_by(OAuthClient.created_at)):
                click.echo(orjson.dumps({
                    "client_id": c.client_id, "name": c.name, "grant": c.grant_type, "auth_method": c.auth_method,
                    "scope": c.scope, "redirect_uris": c.redirect_uris, "organization": c.organization,
                    "created": c.created_at.isoformat(), "disabled": c.disabled}).decode())
    finally:
        database.dispose()


@client.command("disable")
@click.argument("client_id")
def client_disable(client_id: str) -> None:
    """Refuse a client from now on (its refresh tokens are revoked)."""
    from .auth.registry import disable_client

    with _registry_session() as session:
        disable_client(session, client_id)
    click.echo(f"client {client_id} disabled; access tokens it already holds run out within the hour")


@main.group()
def user() -> None:
    """People who log in: clinicians, public-health officials, administrators."""


@user.command("create")
@click.option("--username", required=True)
@click.option("--password", required=True, help="At least 10 characters; stored as a salted scrypt hash.")
@click.option("--role", required=True, type=click.Choice(["clinician", "public-health", "admin"]))
@click.option("--practitioner", help="Practitioner/<id>: the user's FHIR identity (the fhirUser claim).")
def user_create(username: str, password: str, role: str, practitioner: str | None) -> None:
    """Register a user; prints {"username": …, "role": …}."""
    import orjson

    from .auth.registry import create_user
    from .clock import utcnow

    with _registry_session() as session:
        made = create_user(session, username=username, password=password, role=role,
                           practitioner=practitioner, now=utcnow())
        out = {"username": made.username, "role": made.role, "fhirUser": made.fhir_user}
    click.echo(orjson.dumps({k: v for k, v in out.items() if v is not None}).decode())


@user.command("disable")
@click.argument("username")
def user_disable(username: str) -> None:
    """Refuse a user's sign-in from now on (their refresh tokens are revoked)."""
    from .auth.registry import disable_user

    with _registry_session() as session:
        disable_user(session, username)
    click.echo(f"user {username} disabled; access tokens they already hold run out within the hour")


@main.group()
def audit() -> None:
    """The hash-chained audit trail (CONTRACT §9)."""


@audit.command("verify")
def audit_verify() -> None:
    """Walk the audit chain; exit non-zero naming the first record that was edited, removed or moved."""
    from .audit.chain import verify

    database = _database(_config())
    try:
        with database.sessionmaker() as session:
            verdict = verify(session)
    finally:
        database.dispose()
    if verdict.broken_at is not None:
        raise click.ClickException(f"audit chain broken at AuditEvent/{verdict.broken_at}: {verdict.reason} "
                                   f"({verdict.records} records before it verify)")
    click.echo(f"audit chain intact: {verdict.records} records, head {verdict.head}")


@main.group()
def keys() -> None:
    """The key that signs access and ID tokens (HEALTHHUB_SIGNING_KEY)."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Sign new tokens with a new key; the old key keeps verifying until its tokens have expired."""
    from .auth.keys import RETIRED_FOR, KeyRing

    cfg = _config()
    ring = KeyRing(cfg.signing_key)
    old = ring.kid
    new = ring.rotate()
    click.echo(f"new signing key {new}; {old} retired (still verifies for {RETIRED_FOR // 3600} h). "
               "Running web processes sign with the new key within a minute.")


def _add_ingest_commands() -> None:
    """``sender``, ``mllp``, the ``ingest`` group (files, list, show, replay: healthhub/ingest/commands.py)
    and the ``mpi`` group (reviews, link, reject, unlink: healthhub/mpi/cli.py)."""
    from .ingest.commands import register
    from .mpi.cli import mpi

    register(main, lambda name: main.commands.pop(name, None))
    main.add_command(mpi)


_add_ingest_commands()
