"""System tests: the hub as it is deployed, under load and faults (issue 7).

``healthhub serve --workers 4`` (gunicorn) and ``healthhub mllp`` run as subprocesses on free
loopback ports, on a fresh PostgreSQL schema (``new_database``, migrated), with a signing key file
shared with this process, which signs the tests' access tokens. The hub processes reach PostgreSQL
through :class:`TcpProxy`, a small TCP proxy in this process: ``test_outage.py`` cuts the database
away with it. PostgreSQL on the machine is shared: it is never stopped. To stop a database for real,
``test_outage.py`` starts a second hub on a :class:`PostgresCluster` of its own (``initdb`` in a
temporary folder, its own port), reached directly. The tests themselves check what was stored over
a direct connection (``hub.sql``) and with ``healthhub`` commands.

The fixtures here are PostgreSQL only: the faults tested (concurrent writers in several
processes, a worker killed in a transaction, a database that goes away) are PostgreSQL
deployments'; without HEALTHHUB_TEST_DATABASE_URL those tests are skipped.
``test_hostile_input.py`` (the in-process fuzz and attacks) and ``test_backup_restore.py`` use
the suite-wide fixtures of tests/conftest.py instead and run on both databases.

One hub serves the whole session (a gunicorn start costs ~20 s of CPU on a 2-core machine);
the ``hub`` fixture makes it whole again before each test (the proxy passing traffic, 4 workers,
a listener) and everything started is killed at the end, also when a test fails. Only the real
stop of ``test_outage.py`` starts a second hub (``running_hub``), with its cluster, for itself;
the cluster is stopped and its folder deleted at the end too.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from bench.server import healthhub_command
from healthhub import migrate
from healthhub.auth.keys import KeyRing
from healthhub.auth.tokens import TokenService
from healthhub.clock import utcnow
from healthhub.config import PROJECT_ROOT, Config
from healthhub.db import Database, make_engine
from healthhub.ingest.mllp import END_BLOCK, START_BLOCK, FrameParser
from tests.api.test_ingest_hl7 import facility  # noqa: F401  (re-exported to the system tests)
from tests.conftest import DATA, new_database

POSTGRES_URL = os.environ.get("HEALTHHUB_TEST_DATABASE_URL", "")
ON_POSTGRES = make_url(POSTGRES_URL).get_backend_name() == "postgresql" if POSTGRES_URL else False
SKIP_REASON = ("system tests run on PostgreSQL only (gunicorn workers, kill -9, a database outage): "
               "set HEALTHHUB_TEST_DATABASE_URL=postgresql://…")
#: ``pytestmark = postgres_only`` in each module of this folder.
postgres_only = pytest.mark.skipif(not ON_POSTGRES, reason=SKIP_REASON)

WORKERS = 4
SCOPE = "system/*.cruds"
#: Client-side timeout of one HTTP request or MLLP exchange: no answer within it is a hang.
TIMEOUT = 15.0
#: The hub's processes name themselves so in pg_stat_activity (``hub.backends``), with ``-serve``
#: or ``-mllp`` after it.
APPLICATION_NAME = f"healthhub-system-{os.getpid()}"
FHIR_JSON = "application/fhir+json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (parent ids from /proc/<pid>/stat; zombies left out)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(proc.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_group(proc: subprocess.Popen[bytes] | None, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` to a process started in its own session, then SIGKILL to its whole group: nothing
    it started outlives it. The group is signalled only while its leader is not yet reaped (so its
    id cannot belong to anyone else); a process reaped before is left alone. Safe to call twice."""
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)  # not proc.send_signal: its poll() could reap the leader
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _running(proc.pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers too (start_new_session: the group is its pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _running(pid: int) -> bool:
    """Whether our child ``pid`` has not exited yet (without reaping it)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


# -- the database proxy --------------------------------------------------------------------------

class TcpProxy:
    """Forward connections to 127.0.0.1:``port`` to ``target``, until told to stage an outage.

    ``outage("refuse")``: every proxied connection is cut at once (as when PostgreSQL restarts or
    its host drops off the network) and new connections are accepted and reset straight away.
    ``outage("hang")``: connections are cut too, but new ones are accepted and then left silent —
    a database host that takes connections and never answers, which only a connect timeout
    ends. ``restore()`` lets traffic through again (held connections are closed)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self.mode = "up"
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: list[socket.socket] = []
        self._closed = False
        self.connections = 0  # proxied since start
        self.refused = 0  # reset during an outage
        self.held = 0  # left silent during an outage
        self.cut = 0  # open connections cut by outage()
        self._thread = threading.Thread(target=self._accept_loop, name="db-proxy", daemon=True)
        self._thread.start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def outage(self, mode: str = "refuse") -> None:
        assert mode in ("refuse", "hang"), mode
        with self._lock:
            self.mode = mode
            pairs, self._pairs = self._pairs, set()
            self.cut += len(pairs)
        for pair in pairs:
            _close_pair(pair)

    def restore(self) -> None:
        with self._lock:
            self.mode = "up"
            held, self._held = self._held, []
        for sock in held:
            _close(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.outage()
        self.restore()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                closed, mode = self._closed, self.mode
                if mode == "refuse" and not closed:
                    self.refused += 1
                elif mode == "hang" and not closed:
                    self.held += 1
                    self._held.append(client)
                    continue
            if closed:
                _close(client)
                return
            if mode == "refuse":
                _close(client, reset=True)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _close(client, reset=True)
            return
        pair = (client, upstream)
        with self._lock:
            if self.mode != "up" or self._closed:  # an outage began meanwhile
                _close_pair(pair)
                return
            self._pairs.add(pair)
            self.connections += 1
        for src, dst in (pair, pair[::-1]):
            threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        # Either end left (a worker killed, PostgreSQL closing): close both, as a lost TCP
        # connection would, so that PostgreSQL ends the backend and rolls its transaction back.
        with self._lock:
            mine = pair in self._pairs
            self._pairs.discard(pair)
        if mine:
            _close_pair(pair)


def _close(sock: socket.socket, reset: bool = False) -> None:
    with contextlib.suppress(OSError):
        if reset:  # RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv() on it
    with contextlib.suppress(OSError):
        sock.close()


def _close_pair(pair: tuple[socket.socket, socket.socket]) -> None:
    for sock in pair:
        _close(sock, reset=True)


# -- a PostgreSQL cluster of the tests' own ------------------------------------------------------

def postgres_bindir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: the newest
    /usr/lib/postgresql/<version>/bin (Debian, Ubuntu), else the one of ``pg_ctl`` on PATH."""

    def version(bindir: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            return ()

    candidates = sorted((Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")), key=version,
                        reverse=True)
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / program, os.X_OK) for program in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class PostgresCluster:
    """A throw-away PostgreSQL cluster: ``initdb`` in a new temporary folder, listening on
    127.0.0.1 and a free port (its unix socket in that folder), trust authentication for
    ``postgres``. Unlike the machine's shared PostgreSQL, a test may really stop it (:meth:`stop`)
    and start it again on the same port and data directory (:meth:`start`).

    initdb and postgres refuse to run as root: as root, every command of the cluster runs as the
    ``postgres`` user (``runuser``), who owns the folder. ``fsync=off`` and ``full_page_writes=off``
    for speed — they only matter when the machine itself crashes, not when PostgreSQL is killed —
    but commits stay synchronous, so an immediate stop keeps every commit a client was told of.
    :meth:`remove` stops it and deletes the folder; what a fixture could not remove is removed when
    pytest exits."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="healthhub-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._removed = False
        _CLUSTERS.append(self)
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        settings = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
                    "unix_socket_directories": f"'{self.root}'", "fsync": "off", "full_page_writes": "off",
                    "synchronous_commit": "on", "shared_buffers": "32MB", "max_connections": "100"}
        with (self.data / "postgresql.conf").open("a") as conf:  # stays the postgres user's file
            conf.write("\n# tests/system/conftest.py: PostgresCluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        """Start it and wait until it accepts connections (after an immediate stop: crash recovery)."""
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", timeout=70)

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m immediate``: every backend killed at once, no checkpoint (``fast``:
        backends told to end, then a checkpoint)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60", timeout=70)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> None:
        engine = make_engine(Config(database_url=self.url()))
        try:
            with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()

    def log(self, lines: int = 20) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop it at once if it runs and delete its folder. Safe to call twice."""
        if self._removed:
            return
        self._removed = True
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                self.stop("immediate")
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                # Only our own postmaster: the process of that pid started on our data directory.
                with contextlib.suppress(OSError):
                    if str(self.data).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if self._as_postgres:
            command = (["runuser", "-u", "postgres", "--", *command] if shutil.which("runuser")
                       else ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)])
        # No PG* of the caller's shell (PGDATA, PGPORT…): the cluster is told everything it needs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
        done = subprocess.run(command, cwd=self.root, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} exited with {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}\n{self.logfile}:\n{self.log()}")
        return done


_CLUSTERS: list[PostgresCluster] = []


@atexit.register
def _remove_clusters() -> None:
    for cluster in _CLUSTERS:
        cluster.remove()


@contextlib.contextmanager
def postgres_cluster(database: str = "healthhub") -> Iterator[PostgresCluster]:
    """A running :class:`PostgresCluster` with an empty ``database``, stopped and deleted at the
    end (also when the body fails). Skips the test where no PostgreSQL server is installed."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin "
                    "or on PATH: cannot start a PostgreSQL of the test's own to stop")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and initdb refuses root: no 'postgres' user to run it as")
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database(database)
        yield cluster
    finally:
        cluster.remove()


# -- the hub -------------------------------------------------------------------------------------

@dataclass
class Hub:
    """The hub's processes and what the tests need to talk to them."""

    config: Config  # the database over a direct connection, and the signing key
    database_url: str  # what the hub's processes use: through the proxy, if there is one
    proxy: TcpProxy | None  # None: the hub's processes reach the database directly
    workdir: Path
    port: int = field(default_factory=free_port)
    mllp_port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    listener: subprocess.Popen[bytes] | None = None
    _engine: Engine | None = None
    _warm: set[int] = field(default_factory=set)  # workers that have answered a search

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"

    def env(self, process: str | None = None) -> dict[str, str]:
        """The environment of a ``healthhub`` process: no HEALTHHUB_* of the caller's shell. The
        hub's ``serve`` and ``mllp`` reach the database by ``database_url`` (the proxy's, when
        there is one); other commands directly."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHHUB_")}
        url = self.config.database_url
        if process is not None:
            url = make_url(self.database_url).update_query_dict(
                {"application_name": f"{APPLICATION_NAME}-{process}"}).render_as_string(hide_password=False)
        env.update(HEALTHHUB_DATABASE_URL=url,
                   HEALTHHUB_BASE_URL=self.base, HEALTHHUB_SIGNING_KEY=self.config.signing_key,
                   HEALTHHUB_EXPORT_DIR=str(self.workdir / "exports"))
        return env

    # -- processes

    def _launch(self, command: str, *args: str) -> subprocess.Popen[bytes]:
        """``healthhub <command> --host 127.0.0.1 <args>`` in a process group of its own, logging
        to ``<command>.log`` in the work folder, killed at exit whatever happens."""
        with (self.workdir / f"{command}.log").open("ab") as log:
            proc = subprocess.Popen([*healthhub_command(), command, "--host", "127.0.0.1", *args],
                                    cwd=PROJECT_ROOT, env=self.env(command), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        _register_for_exit(proc)
        return proc

    def start_server(self, timeout: float = 120.0) -> None:
        """``healthhub serve --workers 4``, ready when /fhir/metadata answers and all workers run."""
        self.server = self._launch("serve", "--port", str(self.port), "--workers", str(WORKERS))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"healthhub serve exited with {self.server.returncode}:\n{self.log('serve')}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.fhir}/metadata", timeout=10).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"healthhub serve did not answer within {timeout:.0f} s:\n{self.log('serve')}")
        self.wait_for_workers(deadline - time.monotonic())
        self._warm_up(deadline)

    def _warm_up(self, deadline: float) -> None:
        """Searches until every worker has loaded what its first request loads (the search
        parameters: seconds of CPU each), so that no test's timeout counts a cold start: rounds of
        concurrent searches (a busy sync worker accepts nothing, so they spread over the workers)
        until a round is answered at once."""
        from concurrent.futures import ThreadPoolExecutor

        web = self.session()

        def search(_: int) -> float:
            started = time.monotonic()
            resp = web.get(f"{self.fhir}/Patient", params={"_count": "1"}, timeout=TIMEOUT * 4)
            resp.raise_for_status()
            return time.monotonic() - started

        with ThreadPoolExecutor(2 * WORKERS) as pool:
            while max(pool.map(search, range(2 * WORKERS))) > 1.0 and time.monotonic() < deadline:
                pass
        web.close()
        self._warm = set(self.workers())

    def workers(self) -> list[int]:
        """Process ids of the gunicorn workers (the master's children)."""
        return children(self.server.pid) if self.server is not None else []

    def wait_for_workers(self, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + max(timeout, 1.0)
        while time.monotonic() < deadline:
            pids = self.workers()
            if len(pids) == WORKERS:
                return pids
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn runs {len(self.workers())} workers, not {WORKERS}:\n{self.log('serve')}")

    def start_listener(self, timeout: float = 60.0) -> None:
        """``healthhub mllp`` on ``mllp_port``, ready when it accepts a connection."""
        self.listener = self._launch("mllp", "--port", str(self.mllp_port), "--idle-timeout", "30")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listener.poll() is not None:
                raise RuntimeError(f"healthhub mllp exited with {self.listener.returncode}:\n{self.log('mllp')}")
            try:
                socket.create_connection(("127.0.0.1", self.mllp_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"healthhub mllp did not listen within {timeout:.0f} s:\n{self.log('mllp')}")
        # Its first message loads the HL7 mapping and the search parameters: not in a test's timeout.
        sample = hl7_sample(HL7_SAMPLES[0])
        self.register_sender(facility(sample))
        with MllpClient(self.mllp_port, timeout=max(deadline - time.monotonic(), TIMEOUT)) as client:
            code, _ = ack_code(client.exchange(with_control_id(sample, f"WARM-UP-{run_id()}")))
        if code != "AA":
            raise RuntimeError(f"healthhub mllp answered {code} to a sample message:\n{self.log('mllp')}")

    def kill_listener(self) -> None:
        """kill -9 the MLLP listener (no graceful stop: in-flight messages get no ACK), and wait
        until PostgreSQL has ended its sessions: by then each of its transactions committed or
        rolled back, and what is stored no longer changes."""
        assert self.listener is not None
        os.kill(self.listener.pid, signal.SIGKILL)
        self.listener.wait(10)
        deadline = time.monotonic() + 15
        while self.backends("mllp"):
            if time.monotonic() > deadline:
                raise AssertionError(f"the killed listener's sessions are still open: {self.backends('mllp')}")
            time.sleep(0.1)

    def ensure(self) -> None:
        """Make the hub whole again after a test: traffic through, 4 workers, a listener."""
        if self.proxy is not None:
            self.proxy.restore()
        if self.server is None or self.server.poll() is not None:
            _kill_group(self.server)
            self.start_server()
        elif set(self.wait_for_workers()) != self._warm:  # gunicorn replaced a worker (test_crash.py)
            self._warm_up(time.monotonic() + 120)
        if self.listener is None or self.listener.poll() is not None:
            _kill_group(self.listener)
            self.start_listener()

    def stop(self) -> None:
        _kill_group(self.listener)
        _kill_group(self.server, sig=signal.SIGINT)  # gunicorn's quick shutdown: nothing is in flight
        if self._engine is not None:
            self._engine.dispose()

    def log(self, name: str, lines: int = 10) -> str:
        """The last errors in ``serve.log`` or ``mllp.log``, shortened (for failure messages)."""
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        found = [line[:400] for line in path.read_text(errors="replace").splitlines()
                 if "ERROR" in line or "Error" in line or "Traceback" in line]
        return f"{path}:\n" + "\n".join(found[-lines:])

    # -- talking to it

    def token(self, scope: str = SCOPE, client_id: str = "system-test") -> str:
        """An access token signed with the hub's key, as its token endpoint would issue it."""
        service = TokenService(KeyRing(self.config.signing_key), issuer=self.base, audience=self.fhir)
        return service.issue(client_id=client_id, subject=client_id, scope=scope, lifetime=4 * 3600)

    def session(self, scope: str = SCOPE) -> requests.Session:
        """A requests session with a bearer token (one per client thread)."""
        web = requests.Session()
        web.headers.update({"Authorization": f"Bearer {self.token(scope)}", "Accept": FHIR_JSON})
        return web

    @property
    def engine(self) -> Engine:
        """A direct connection to the hub's database (not through the proxy)."""
        if self._engine is None:
            self._engine = make_engine(self.config)
        return self._engine

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``healthhub …`` on the hub's database (directly, not through the proxy)."""
        return subprocess.run([*healthhub_command(), *args], cwd=PROJECT_ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def backends(self, process: str) -> list[Any]:
        """The PostgreSQL backends of the hub's ``serve`` or ``mllp`` (pg_stat_activity: pid, state,
        xid — set once its transaction has written —, seconds since its transaction began, query)."""
        return self.sql("SELECT pid, state, backend_xid::text AS xid, query, "
                        "extract(epoch FROM now() - xact_start) AS xact_age FROM pg_stat_activity "
                        "WHERE application_name = :name", name=f"{APPLICATION_NAME}-{process}")

    def register_sender(self, code: str) -> None:
        """Register a sending hospital (HL7 MSH-4) if it is not yet."""
        from healthhub.ingest import senders

        db = Database(self.config)
        try:
            with db.transaction() as session:
                if session.get(senders.Sender, code) is None:
                    senders.create(session, code, f"Hospital {code} (system tests)", utcnow())
        finally:
            db.dispose()


_STARTED: list[subprocess.Popen[bytes]] = []


def _register_for_exit(proc: subprocess.Popen[bytes]) -> None:
    """Belt and braces: whatever a fixture could not stop is killed when pytest exits."""
    _STARTED.append(proc)


@atexit.register
def _kill_started() -> None:
    for proc in _STARTED:
        _kill_group(proc, grace=0)


@contextlib.contextmanager
def running_hub(workdir: Path, cfg: Config, proxy: TcpProxy | None = None) -> Iterator[Hub]:
    """A hub on ``cfg``'s empty database (migrated here): ``healthhub serve`` and ``healthhub mllp``
    reaching it through ``proxy``, or directly without one, and a new signing key in ``workdir``.
    Its processes are stopped at the end, also when the body fails."""
    engine = make_engine(cfg)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    key = workdir / "signing-key.pem"
    KeyRing(key).current()  # created here, shared by the hub's processes and the tests' tokens
    url = make_url(cfg.database_url)
    if proxy is not None:
        url = url.set(host="127.0.0.1", port=proxy.port)
    hub = Hub(replace(cfg, signing_key=str(key)), url.render_as_string(hide_password=False), proxy, workdir)
    try:
        hub.start_server()
        hub.start_listener()
        yield hub
    finally:
        hub.stop()


# Package scope: shared by tests/system's modules and stopped when they are done. For the session
# its processes kept polling the database through the proxy's threads in this process, and a
# later test that measures this process's allocations (tracemalloc counts every thread) failed.
@pytest.fixture(scope="package")
def system_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    if not ON_POSTGRES:
        pytest.skip(SKIP_REASON)
    workdir = tmp_path_factory.mktemp("system-hub")
    with new_database(workdir) as cfg:
        url = make_url(cfg.database_url)
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        try:
            with running_hub(workdir, cfg, proxy) as hub:
                yield hub
        finally:
            proxy.close()


@pytest.fixture
def hub(system_hub: Hub) -> Iterator[Hub]:
    """The session's hub, whole: the proxy passing traffic, 4 workers, a listener."""
    system_hub.ensure()
    yield system_hub
    if system_hub.proxy is not None:
        system_hub.proxy.restore()


# -- HL7 v2 --------------------------------------------------------------------------------------

#: Sample messages that the hub stores (AA), one per sending facility.
HL7_SAMPLES = ("ms_oru_r01_rmgead.hl7", "ms_adt_a01_01.hl7", "ms_vxu.hl7")


def hl7_fields(message: bytes) -> list[list[str]]:
    """Segments split into fields on the message's own separator."""
    text_ = message.decode("utf-8-sig").replace("\r\n", "\r").replace("\n", "\r")
    lines = [line for line in text_.split("\r") if line.strip()]
    fs = lines[0][3]
    return [line.split(fs) for line in lines]


def with_control_id(message: bytes, control_id: str) -> bytes:
    """The message with MSH-10 replaced, segments ended by <CR> as MLLP carries them."""
    text_ = message.decode("utf-8-sig").replace("\r\n", "\r").replace("\n", "\r")
    lines = [line for line in text_.split("\r") if line.strip()]
    fs = lines[0][3]
    msh = lines[0].split(fs)
    msh[9] = control_id
    lines[0] = fs.join(msh)
    return ("\r".join(lines) + "\r").encode()


def hl7_sample(name: str) -> bytes:
    return (DATA / "hl7v2" / name).read_bytes()


def ack_code(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK: the code and the control id it acknowledges."""
    msa = next((s for s in hl7_fields(ack) if s[0] == "MSA"), ["MSA", "??", ""])
    return msa[1], msa[2] if len(msa) > 2 else ""


class MllpClient:
    """One MLLP connection that sends a message and waits for its ACK (as an interface engine does)."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._parser = FrameParser("hub")
        self._acks: list[bytes] = []

    def exchange(self, message: bytes) -> bytes:
        """Send ``message``; its ACK. OSError (a TimeoutError too) when the connection fails first."""
        self.sock.sendall(START_BLOCK + message + END_BLOCK)
        deadline = time.monotonic() + self.timeout
        while not self._acks:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError("the listener closed the connection without an ACK")
            self._acks.extend(frame.data for frame in self._parser.feed(chunk))
        return self._acks.pop(0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stored_messages(hub: Hub, control_ids: list[str]) -> dict[str, int]:
    """For each control id, how many times the hub stored it: archive rows with outcome ``stored``
    (each commits with its data and its duplicate key, ``inbound_keys``)."""
    counts = dict.fromkeys(control_ids, 0)
    for control_id, n in hub.sql("SELECT control_id, count(*) FROM inbound_messages WHERE outcome = 'stored' "
                                 "AND control_id = ANY(:ids) GROUP BY control_id", ids=control_ids):
        counts[control_id] = n
    return counts


def run_id() -> str:
    """A short id unique to one test run (identifiers and control ids carry it)."""
    return uuid.uuid4().hex[:8]
