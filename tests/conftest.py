"""Fixtures: an app on a temporary database — SQLite by default, PostgreSQL when
HEALTHHUB_TEST_DATABASE_URL is set (each run uses its own schema and drops it at the end)."""
from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from healthhub import create_app, migrate
from healthhub.config import Config
from healthhub.db import make_engine
from healthhub.storage.models import Base
from tests.redis_server import RedisServer, running_server

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FHIR_JSON = "application/fhir+json"


@contextmanager
def new_database(tmp_dir: Path) -> Iterator[Config]:
    """A Config for an empty database: a new SQLite file, or a new schema in the PostgreSQL
    database of HEALTHHUB_TEST_DATABASE_URL (dropped afterwards)."""
    url = os.environ.get("HEALTHHUB_TEST_DATABASE_URL")
    if not url:
        yield Config(database_url=f"sqlite:///{tmp_dir / 'healthhub.db'}", base_url="http://hub.test")
        return
    schema = f"hh_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(Config(database_url=url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # The schema goes into the URL (libpq "options"), so the CLI under test can use it too.
    schema_url = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield Config(database_url=schema_url.render_as_string(hide_password=False), base_url="http://hub.test")
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    from dataclasses import replace

    keys = tmp_path_factory.mktemp("keys")
    with new_database(tmp_path_factory.mktemp("db")) as cfg:
        engine = make_engine(cfg)
        migrate.upgrade(engine)
        engine.dispose()
        # No rate limit but where a test is about it (tests/api/test_rate_limit.py).
        yield replace(cfg, signing_key=str(keys / "signing-key.pem"), rate_limit=0)


def _clean(app: Any) -> None:
    engine = app.extensions["healthhub.db"].engine
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))
            # Statistics of an earlier test's data would steer the next test's plans.
            if conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")).first():
                conn.execute(text("DELETE FROM sqlite_stat1"))


@pytest.fixture
def make_app(base_config: Config) -> Iterator[Callable[..., Any]]:
    """Build an app on the test database with config overrides; tables are emptied afterwards."""
    apps: list[Any] = []

    def factory(**overrides: Any) -> Any:
        from dataclasses import replace
        app = create_app(replace(base_config, **overrides))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    if apps:
        _clean(apps[0])
    for app in apps:
        app.extensions["healthhub.db"].dispose()


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real ``redis-server`` for the session (tests/redis_server.py); skips where none is installed."""
    with running_server() as server:
        yield server


@dataclass
class RedisStore:
    """What a test sets ``HEALTHHUB_REDIS_URL`` to, and a client to look into that store."""

    kind: str  # "fakeredis" or "redis-server"
    url: str
    client: Any


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[RedisStore]:
    """The session's real redis-server, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushall()
    yield RedisStore("redis-server", redis_server.url, client)
    client.close()


@pytest.fixture(params=["fakeredis", "redis-server"])
def redis_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisStore]:
    """Each Redis test twice: on fakeredis (``redis.Redis.from_url`` answers with an in-memory
    server shared by every client of the test), then on a real redis-server."""
    if request.param == "redis-server":
        yield request.getfixturevalue("real_redis")
        return
    import fakeredis

    server = fakeredis.FakeServer()
    monkeypatch.setattr("redis.Redis.from_url", lambda *_a, **_k: fakeredis.FakeRedis(server=server))
    yield RedisStore("fakeredis", "redis://fakeredis", fakeredis.FakeRedis(server=server))


#: What the default test client may do: everything (a hospital system's widest registration).
FULL_ACCESS = "system/*.cruds"


def issue_token(app: Any, scope: str = FULL_ACCESS, *, patient: str | None = None, client_id: str = "test-client",
                subject: str | None = None, **claims: Any) -> str:
    """An access token signed by the app's key, as its token endpoint would issue it."""
    tokens = app.extensions["healthhub.auth"].tokens
    return tokens.issue(client_id=client_id, subject=subject or client_id, scope=scope, patient=patient,
                        extra=claims or None)


def authorized(app: Any, scope: str = FULL_ACCESS, **kw: Any) -> Any:
    """A test client sending ``Authorization: Bearer`` with a token for ``scope``."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {issue_token(app, scope, **kw)}"
    return client


@pytest.fixture
def client(app: Any) -> Any:
    """A client with full access (``system/*.cruds``): the FHIR tests are about FHIR; the
    authorization tests (tests/auth/) use narrower tokens and none."""
    return authorized(app)


@pytest.fixture
def cli(app: Any, base_config: Config, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Run ``healthhub …`` against the test app's database and signing key."""
    from click.testing import CliRunner

    from healthhub.cli import main

    monkeypatch.setenv("HEALTHHUB_DATABASE_URL", base_config.database_url)
    monkeypatch.setenv("HEALTHHUB_BASE_URL", base_config.base_url)
    monkeypatch.setenv("HEALTHHUB_SIGNING_KEY", base_config.signing_key)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def db_counts(app: Any) -> Callable[[], dict[str, int]]:
    """Row counts of every table but the audit trail and the inbound archive (which record the
    failure itself): proof that a failed request changed nothing."""
    def counts() -> dict[str, int]:
        engine = app.extensions["healthhub.db"].engine
        with engine.connect() as conn:
            return {t.name: conn.execute(text(f"SELECT COUNT(*) FROM {t.name}")).scalar_one()
                    for t in Base.metadata.sorted_tables if not t.name.startswith(("audit_", "inbound_"))}
    return counts


@pytest.fixture
def live_server(app: Any) -> Iterator[str]:
    """The app on a real HTTP port (for FHIR client libraries); yields the FHIR base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir"
    finally:
        server.shutdown()
        thread.join(5)


def free_port() -> int:
    """A local TCP port nothing listens on (for a server a test starts, or to find no one there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str, token: str | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples a Prometheus endpoint serves, by (name, labels): ``("x_total", frozenset({("k", "v")}))``."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.get(url, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    text = resp.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def load_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def post_json(client: Any, url: str, body: Any, **headers: str) -> Any:
    return client.post(url, data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def put_json(client: Any, url: str, body: Any, **headers: str) -> Any:
    return client.put(url, data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def archived(app: Any) -> list[Any]:
    """The inbound archive's rows, oldest first (detached from their session)."""
    from sqlalchemy import select

    from healthhub.ingest.models import InboundMessage

    with app.extensions["healthhub.db"].transaction() as session:
        rows = list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        session.expunge_all()
        return rows


@contextmanager
def mllp_listener(app: Any, **options: Any) -> Iterator[Any]:
    """A real MLLP listener on an ephemeral port, the app's ingest pipeline behind it, served by
    an event loop in a thread; yields the server (``server.port``)."""
    import asyncio

    from healthhub import ingest_pipeline
    from healthhub.ingest.mllp import MllpServer
    from healthhub.ingest.pipeline import Caller

    db = app.extensions["healthhub.db"]
    pipeline = ingest_pipeline(db, db.config)
    server = MllpServer(lambda f: pipeline.receive_hl7v2(f.data, Caller("mllp", peer=f.peer), truncated=f.truncated),
                        "127.0.0.1", 0, **{"idle_timeout": 5, **options})
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_until_complete(server.serve_forever())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5), "the MLLP listener did not start"
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        thread.join(10)
        loop.close()
