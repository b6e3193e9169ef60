"""Configuration: the only module that reads ``os.environ`` (CONTRACT §2)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: The project checkout (the folder holding ``healthhub/``, ``migrations/`` and ``fhir/``).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    """Settings of one HealthHub instance; build it with :meth:`from_env`."""

    database_url: str = "sqlite:///instance/healthhub.db"
    base_url: str = "http://127.0.0.1:8080"
    signing_key: str = "instance/signing-key.pem"
    min_cell: int = 11
    export_dir: str = "instance/exports"
    #: An export's NDJSON file is split past this many bytes.
    export_file_max: int = 256 * 1024 * 1024
    #: Hours an export's files are kept after it completes (then removed, and the job forgotten).
    export_retention_hours: int = 24
    #: ``thread``: ``healthhub serve`` runs the export worker in each web process; ``off``: only
    #: ``healthhub worker`` processes do.
    export_worker: str = "thread"
    max_body: int = 50 * 1024 * 1024
    #: Entries a ``transaction`` or ``batch`` Bundle may hold (more: 413 before any of them is
    #: looked at); 0: no limit. A transaction holds its locks and its memory until the last entry
    #: is written. The largest Synthea Bundles hold 2,382 (a 3.8 MB batch) and a patient's
    #: transaction some 90-450; Azure's FHIR service takes 500 by default, Google's 4,500.
    max_bundle_entries: int = 10_000
    #: The audit trail (CONTRACT §9). Off only to measure what it costs (``make bench``).
    audit: bool = True
    #: A streaming replica for searches and statistics (reads that may lag the primary by the
    #: replication delay); empty: the primary answers everything.
    read_database_url: str = ""
    #: ``json`` (one object per line, the default) or ``text``.
    log_format: str = "json"
    #: Bearer secret a Prometheus scraper sends to ``/metrics``; empty: ``/metrics`` is closed.
    metrics_token: str = ""
    #: Browser origins allowed to call the API besides those of registered clients' redirect URIs.
    cors_origins: tuple[str, ...] = ()
    #: Requests per minute per client (per address before authentication); 0: no limit. The
    #: default (100 a second) is above what one hospital's interface engine sends.
    rate_limit: int = 6000
    #: Reverse proxies (load balancers) in front of the hub whose ``X-Forwarded-For`` and
    #: ``X-Forwarded-Proto`` are trusted: the client address (audit, access log, per-address rate
    #: limit) is taken that many hops back. 0: the connection's own address (no proxy is trusted).
    proxy_hops: int = 0
    #: Redis for the rate-limit counters and token revocations (shared by every process, at once);
    #: empty: the database.
    redis_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``HEALTHHUB_*`` variables, falling back to the documented defaults."""
        env = os.environ if environ is None else environ
        d = cls()
        cfg = cls(
            database_url=env.get("HEALTHHUB_DATABASE_URL", d.database_url),
            base_url=env.get("HEALTHHUB_BASE_URL", d.base_url).rstrip("/"),
            signing_key=env.get("HEALTHHUB_SIGNING_KEY", d.signing_key),
            min_cell=_int(env, "HEALTHHUB_MIN_CELL", d.min_cell),
            export_dir=env.get("HEALTHHUB_EXPORT_DIR", d.export_dir),
            export_file_max=_int(env, "HEALTHHUB_EXPORT_FILE_MAX", d.export_file_max),
            export_retention_hours=_int(env, "HEALTHHUB_EXPORT_RETENTION_HOURS", d.export_retention_hours),
            export_worker=_choice(env, "HEALTHHUB_EXPORT_WORKER", d.export_worker, ("thread", "off")),
            max_body=_int(env, "HEALTHHUB_MAX_BODY", d.max_body),
            max_bundle_entries=_int(env, "HEALTHHUB_MAX_BUNDLE_ENTRIES", d.max_bundle_entries),
            audit=_flag(env, "HEALTHHUB_AUDIT", d.audit),
            read_database_url=env.get("HEALTHHUB_READ_DATABASE_URL", d.read_database_url),
            log_format=_choice(env, "HEALTHHUB_LOG_FORMAT", d.log_format, ("json", "text")),
            metrics_token=env.get("HEALTHHUB_METRICS_TOKEN", d.metrics_token),
            cors_origins=tuple(o.strip().rstrip("/") for o in env.get("HEALTHHUB_CORS_ORIGINS", "").split(",")
                               if o.strip()),
            rate_limit=_int(env, "HEALTHHUB_RATE_LIMIT", d.rate_limit),
            redis_url=env.get("HEALTHHUB_REDIS_URL", d.redis_url),
            proxy_hops=_int(env, "HEALTHHUB_PROXY_HOPS", d.proxy_hops),
        )
        return replace(cfg, **overrides) if overrides else cfg

    @property
    def fhir_base(self) -> str:
        """Absolute URL of the FHIR endpoint, used in ``fullUrl``, ``Location`` and links."""
        return f"{self.base_url}/fhir"


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "on", "true", "yes"):
        return True
    if raw.lower() in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"{name} must be on or off, got {raw!r}")
