"""What the benchmark ran on: hardware, software versions, code revision."""
from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from healthhub import __version__
from healthhub.config import PROJECT_ROOT, Config
from healthhub.db import make_engine


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def postgres_info(url: str) -> dict[str, str]:
    """Server version and the settings that matter most for these numbers."""
    engine = make_engine(Config(database_url=url))
    try:
        with engine.connect() as conn:
            return {name: str(conn.execute(text(f"SHOW {name}")).scalar_one())
                    for name in ("server_version", "shared_buffers", "work_mem", "effective_cache_size",
                                 "synchronous_commit", "max_connections")}
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the PostgreSQL run may be skipped
        return {"error": str(exc).splitlines()[0]}
    finally:
        engine.dispose()


def describe(postgres_url: str | None) -> dict[str, Any]:
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres_info(postgres_url) if postgres_url else None,
        "healthhub": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted changes to the code under test (the harness itself lives in bench/).
        "git_dirty_hub": bool(_git("status", "--porcelain", "--", "healthhub", "migrations", "fhir")),
    }
