"""The hub as a real HTTP server: ``healthhub serve --workers N`` (gunicorn) on a free loopback
port against the benchmark database, started and stopped by the harness."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import requests

from bench.access import KEY_FILE, bearer
from bench.workload import register_token
from healthhub.config import PROJECT_ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a server started in its own session: SIGTERM (it finishes what is in flight), SIGKILL
    to its process group after 30 s. Nothing to do when it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def healthhub_command() -> list[str]:
    """The ``healthhub`` console script of the interpreter running the harness (the venv's)."""
    script = Path(sys.executable).parent / "healthhub"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from healthhub.cli import main; main()"]


class HubServer:
    """``with HubServer(url, log_path) as server: server.base`` → ``http://127.0.0.1:<port>/fhir``."""

    def __init__(self, database_url: str, log_path: Path, workers: int = 2, audit: bool = True) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.workers = workers
        self.audit = audit
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self._proc: subprocess.Popen[bytes] | None = None
        register_token(self.base, bearer(f"http://127.0.0.1:{self.port}"))

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        env = {**os.environ, "HEALTHHUB_DATABASE_URL": self.database_url,
               "HEALTHHUB_BASE_URL": f"http://127.0.0.1:{self.port}", "HEALTHHUB_SIGNING_KEY": str(KEY_FILE),
               "HEALTHHUB_AUDIT": "on" if self.audit else "off",
               # The benchmark measures throughput: one client id sends everything, far past a limit.
               "HEALTHHUB_RATE_LIMIT": "0"}
        log = self.log_path.open("ab")
        # Its own process group, so stopping it can never signal the harness.
        self._proc = subprocess.Popen(
            [*healthhub_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"healthhub serve exited with {self._proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.base}/metadata", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"healthhub serve did not answer within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM to the gunicorn master (graceful), SIGKILL to its group after 30 s."""
        proc, self._proc = self._proc, None
        terminate(proc)
