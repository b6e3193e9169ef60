"""HealthHub: a FHIR R4B data hub. ``create_app`` builds the WSGI application."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def create_app(config: Any = None) -> Any:
    """Application factory: config → database → blueprints → error handlers."""
    from flask import Flask

    from . import errors
    from .api import auth as auth_api
    from .api import authorize as authorize_api
    from .api import bulk as bulk_api
    from .api import cors, edge, guard, throttle
    from .api import dashboard as dashboard_api
    from .api import fhir as fhir_api
    from .api import ingest as ingest_api
    from .api import ops as ops_api
    from .api import stats as stats_api
    from .auth import service as auth_service
    from .config import Config
    from .db import Database
    from .operations import load as load_operations

    cfg: Config = config if config is not None else Config.from_env()
    app = Flask(__name__, instance_relative_config=False)
    if cfg.proxy_hops:
        # Behind load balancers: trust exactly that many X-Forwarded-For/-Proto hops, no more
        # (https://werkzeug.palletsprojects.com/en/stable/middleware/proxy_fix/).
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg.proxy_hops, x_proto=cfg.proxy_hops)  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body
    app.config["HEALTHHUB"] = cfg
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False
    db = app.extensions["healthhub.db"] = Database(cfg)
    load_operations()  # fail at start-up when an operation and its definition do not pair up
    edge.init_app(app, cfg)  # first: the request id exists before any other hook logs
    guard.init_app(app)
    cors.init_app(app, cfg, db)
    throttle.init_app(app, cfg, db)
    auth_service.init_app(app, cfg, db)
    auth_api.init_app(app)
    authorize_api.init_app(app)
    fhir_api.init_app(app)
    ingest_api.init_app(app, ingest_pipeline(db, cfg))
    stats_api.init_app(app)
    bulk_api.init_app(app)
    dashboard_api.init_app(app)
    ops_api.init_app(app)
    errors.init_app(app)
    return app


def ingest_pipeline(db: Any, cfg: Any) -> Any:
    """The ingest pipeline of a database (HTTP, MLLP and CLI share it), with patient matching."""
    from .ingest.pipeline import Pipeline
    from .mpi.index import update

    def match_patients(session: Any, repo: Any, now: Any) -> None:
        if repo.written_patients:
            repo.touched.extend(update(session, repo.written_patients, now=now).touched)
            repo.written_patients.clear()

    return Pipeline(db, cfg.base_url, after_write=match_patients)
