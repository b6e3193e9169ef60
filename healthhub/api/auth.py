"""The authorization server's endpoints (CONTRACT §5): ``/auth/token``, ``/auth/introspect``,
``/auth/revoke``, ``/auth/jwks`` and the discovery documents. Views stay thin: authlib does the
protocol (:mod:`healthhub.auth.server`), each request in one database transaction."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify

from ..auth.discovery import openid_configuration, smart_configuration
from ..auth.service import auth_service
from ..db import Database

bp = Blueprint("auth", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _in_transaction(respond: Any) -> Response:
    db: Database = current_app.extensions["healthhub.db"]
    with db.transaction() as session:
        g.auth_session = session
        try:
            response: Response = respond()
        finally:
            g.pop("auth_session", None)
    return response


@bp.post("/auth/token")
def token() -> Response:
    return _in_transaction(lambda: auth_service().server.create_token_response())


@bp.post("/auth/introspect")
def introspect() -> Response:
    return _in_transaction(lambda: auth_service().server.create_endpoint_response("introspection"))


@bp.post("/auth/revoke")
def revoke() -> Response:
    return _in_transaction(lambda: auth_service().server.create_endpoint_response("revocation"))


@bp.get("/auth/jwks")
def jwks() -> Response:
    resp = jsonify(auth_service().keys.jwks())
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.get("/.well-known/smart-configuration")
@bp.get("/fhir/.well-known/smart-configuration")
def smart() -> Response:
    return jsonify(smart_configuration(auth_service().config.base_url))


@bp.get("/.well-known/openid-configuration")
def openid() -> Response:
    return jsonify(openid_configuration(auth_service().config.base_url))
