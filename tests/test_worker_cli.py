"""`healthhub worker`: what it logs while the database is away (one error, a warning per step of
its back-off, one line when the database is back), and its Prometheus metrics port."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from healthhub import migrate
from healthhub.bulk import worker as worker_module
from healthhub.bulk.worker import Worker
from healthhub.config import Config
from healthhub.db import Database, make_engine
from tests.conftest import free_port, scrape

HEALTHHUB = str(Path(sys.executable).with_name("healthhub"))


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """The real command, unbuffered (its first line says it has started), logging JSON."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "HEALTHHUB_LOG_FORMAT": "json", **env}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([HEALTHHUB, "worker", *args], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    started = proc.stdout.readline().decode()  # "export worker …: waiting for jobs"
    assert "waiting for jobs" in started, (started, proc.stderr.read().decode() if proc.stderr else "")
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, then its stderr; it must stop cleanly."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    return err.decode()


def bulk_records(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "healthhub.bulk"]


def test_an_unreachable_database_is_one_error_line_then_a_warning_per_backoff_step(tmp_path):
    """Nothing listens on the port: one ERROR without a traceback, then tries 1 s, 2 s, 4 s … apart."""
    proc = start_worker({"HEALTHHUB_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                         "HEALTHHUB_EXPORT_DIR": str(tmp_path / "exports")})
    time.sleep(4.5)  # tries at about 0, 1 and 3 s (the next at 7 s)
    err = stop_worker(proc)
    assert "Traceback" not in err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [r["level"] for r in records if r["level"] in ("ERROR", "CRITICAL")] == ["ERROR"], records
    (error,) = [r for r in records if r["level"] == "ERROR"]
    assert error["logger"] == "healthhub.bulk" and "exception" not in error
    assert "database is unreachable (OperationalError: connection" in error["message"]
    assert error["message"].endswith("retrying in 1 s")
    waits = [float(re.search(r"next try in ([\d.]+) s", r["message"])[1])
             for r in records if r["level"] == "WARNING"]
    assert waits in ([2.0], [2.0, 4.0], [2.0, 4.0, 8.0]), records


def test_backoff_stops_growing_at_its_cap_and_the_return_is_logged_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(worker_module, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(worker_module, "BACKOFF_MAX", 0.08)
    path = tmp_path / "hub.db"
    path.mkdir()  # SQLite cannot open a folder: "unable to open database file", as when it is away
    config = Config(database_url=f"sqlite:///{path}", export_dir=str(tmp_path / "exports"))
    database = Database(config)
    runner = Worker(database, config)
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    caplog.set_level(logging.INFO, logger="healthhub.bulk")
    thread.start()
    try:
        time.sleep(1.0)  # 0.01 + 0.02 + 0.04 + 0.08: at the cap after 0.15 s, then ~10 tries more
        path.rmdir()
        engine = make_engine(config)
        migrate.upgrade(engine)  # the database is back
        engine.dispose()
        deadline = time.monotonic() + 20
        while not any("reachable again" in r.getMessage() for r in bulk_records(caplog)):
            assert time.monotonic() < deadline, [r.getMessage() for r in bulk_records(caplog)]
            time.sleep(0.05)
    finally:
        runner.stopping.set()
        thread.join(10)
        database.dispose()
    records = [r for r in bulk_records(caplog) if r.levelno >= logging.INFO and "started" not in r.getMessage()
               and "stopped" not in r.getMessage()]
    levels = [r.levelname for r in records]
    assert levels == ["ERROR", "WARNING", "WARNING", "WARNING", "INFO"], [r.getMessage() for r in records]
    assert records[0].exc_info is None and "unable to open database file" in records[0].getMessage()
    assert [re.search(r"next try in ([\d.]+) s", r.getMessage())[1] for r in records[1:4]] == ["0.02", "0.04", "0.08"]
    assert "then every 0.08 s without further warnings" in records[3].getMessage()
    tries = int(re.search(r"(\d+) failed tries", records[4].getMessage())[1])
    assert tries >= 8  # the capped tries went on, silently


def test_other_errors_keep_their_traceback(app, monkeypatch, caplog):
    monkeypatch.setattr(worker_module, "POLL", 0.01)
    runner = Worker(app.extensions["healthhub.db"], app.config["HEALTHHUB"])

    def broken() -> int:
        raise RuntimeError("not a database outage")

    monkeypatch.setattr(runner, "clean_up", broken)
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    thread.start()
    time.sleep(0.2)
    runner.stopping.set()
    thread.join(10)
    errors = [r for r in bulk_records(caplog) if r.levelno == logging.ERROR]
    assert errors and all(r.exc_info and r.exc_info[0] is RuntimeError for r in errors)
    assert not any("unreachable" in r.getMessage() for r in bulk_records(caplog))


def test_metrics_port_serves_the_export_metrics(client, base_config, tmp_path):
    for pid in ("metrics-a", "metrics-b"):
        client.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                   headers={"Content-Type": "application/fhir+json"})
    kick = client.get("/fhir/$export?_type=Patient", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    status = kick.headers["Content-Location"].replace("http://hub.test", "")
    port = free_port()
    proc = start_worker({"HEALTHHUB_DATABASE_URL": base_config.database_url,
                         "HEALTHHUB_EXPORT_DIR": str(tmp_path / "exports")}, "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 30
        while client.get(status).status_code == 202:
            assert time.monotonic() < deadline, "the worker did not run the job"
            time.sleep(0.2)
        assert client.get(status).status_code == 200
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        err = stop_worker(proc)
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in err
    assert samples[("healthhub_export_jobs_total", frozenset({("outcome", "completed")}))] == 1
    assert not [k for k in samples if k[0] == "healthhub_export_jobs_total" and ("outcome", "completed") not in k[1]]
    assert samples[("healthhub_export_resources_total", frozenset())] == 2
    assert samples[("healthhub_export_jobs_in_progress", frozenset())] == 0
    polled = samples[("healthhub_export_worker_last_poll_timestamp_seconds", frozenset())]
    assert time.time() - 60 < polled <= time.time()
