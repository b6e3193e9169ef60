"""A real ``redis-server`` for the tests of the Redis paths (rate-limit counters, token
revocations), next to fakeredis: Debian's ``redis-server`` (``.ci/run`` installs it), started by
the tests themselves — never the machine's service — on a free loopback port, in a temporary
folder, without persistence (``--save '' --appendonly no``). :meth:`RedisServer.stop` and
:meth:`RedisServer.start` stop it for real and start it again on the same port (an outage),
:meth:`RedisServer.freeze` makes it hang; what a fixture could not stop is killed when pytest exits.
"""
from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BINARY = shutil.which("redis-server")
SKIP_REASON = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers ``PING`` on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a port chosen once (kept across :meth:`stop` and
    :meth:`start`), its folder a new temporary one (deleted by :meth:`remove`)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="healthhub-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        _SERVERS.append(self)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        """Start it and wait until it answers PING."""
        assert self.proc is None, "already running"
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no"],
            cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n{self.log()}")
            time.sleep(0.05)

    def freeze(self) -> None:
        """``SIGSTOP``: the server keeps its port (the kernel still accepts connections) but answers
        nothing — a hung Redis, where only the clients' socket timeouts bound a request."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop it (by default at once, ``SIGKILL``: Redis gone as in a crash) and reap it. Safe to
        call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVERS: list[RedisServer] = []


@atexit.register
def _remove_servers() -> None:
    for server in _SERVERS:
        server.remove()


@contextlib.contextmanager
def running_server() -> Iterator[RedisServer]:
    """A started server, removed afterwards; the test is skipped where none is installed."""
    import pytest

    if BINARY is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(BINARY)
    server.start()
    try:
        yield server
    finally:
        server.remove()
