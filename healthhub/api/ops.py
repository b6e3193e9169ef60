"""Endpoints for the operator's tools, outside the FHIR API:

- ``GET /healthz``: liveness — the process answers (no database call: a database outage must not
  make an orchestrator restart every web process).
- ``GET /readyz``: readiness — the database answers a query within a couple of seconds; 503
  otherwise, so a load balancer stops sending traffic. The read replica, when configured, is
  checked and reported too, but does not decide: without it reads go to the primary.
- ``GET /metrics``: Prometheus text format (healthhub/metrics.py), for a scraper presenting
  ``Authorization: Bearer $HEALTHHUB_METRICS_TOKEN``; closed (404) while no token is configured —
  traffic figures are not for everyone on the network.
"""
from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Flask, Response, current_app
from flask import request as http_request
from sqlalchemy import text

from ..config import Config
from ..db import Database
from ..jsonio import dumps
from ..metrics import exposition
from ..outcome import FhirError, Issue

bp = Blueprint("ops", __name__)
log = logging.getLogger("healthhub.ops")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _json(body: dict[str, object], status: int = 200) -> Response:
    return Response(dumps(body), status, content_type="application/json", headers={"Cache-Control": "no-store"})


@bp.get("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    db: Database = current_app.extensions["healthhub.db"]
    checks: dict[str, str] = {}
    engines = [("database", db.engine)] + ([("read_database", db.read_engine)] if db.has_replica else [])
    for name, engine in engines:
        try:
            with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SET LOCAL statement_timeout = 2000"))
                conn.execute(text("SELECT 1"))
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the reason goes to the log only
            log.warning("readiness: %s unavailable: %s", name, type(exc).__name__)
            checks[name] = "unavailable"
    # Ready is the primary's answer: without the replica, searches and statistics read the
    # primary (db.read_transaction), and every process shares one replica — failing readiness for
    # it would take every process out of the load balancer for reads the primary can serve.
    ready = checks["database"] == "ok"
    return _json({"status": "ready" if ready else "unavailable", **checks}, 200 if ready else 503)


@bp.get("/metrics")
def metrics() -> Response:
    config: Config = current_app.config["HEALTHHUB"]
    if not config.metrics_token:
        raise FhirError(404, [Issue("error", "not-found", "Metrics are off: set HEALTHHUB_METRICS_TOKEN and scrape "
                                    "with that bearer token")])
    sent = http_request.headers.get("Authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {config.metrics_token}".encode()):
        raise FhirError(401, [Issue("error", "login", "Metrics need the bearer token of HEALTHHUB_METRICS_TOKEN")],
                        {"WWW-Authenticate": 'Bearer realm="metrics"'})
    body, content_type = exposition()
    return Response(body, 200, content_type=content_type, headers={"Cache-Control": "no-store"})
