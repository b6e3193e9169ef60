"""The authorization server's endpoints (CONTRACT §5): ``/auth/token``, ``/auth/introspect``,
``/auth/revoke``, ``/auth/jwks`` and the discovery documents. Views stay thin: authlib does the
protocol (:mod:`healthhub.auth.server`), each request in one database transaction."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from joserfc import jws
from joserfc.errors import JoseError

from ..audit.events import Happening, record
from ..auth.discovery import openid_configuration, smart_configuration
from ..auth.expiry import purge_now_and_then
from ..auth.service import auth_service
from ..clock import utcnow
from ..db import Database

bp = Blueprint("auth", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _in_transaction(subtype: str, respond: Any) -> Response:
    """Run an authlib endpoint in one transaction, with its audit record (grant or refusal)."""
    db: Database = current_app.extensions["healthhub.db"]
    with db.transaction() as session:
        g.auth_session = session
        try:
            response: Response = respond()
            if current_app.config["HEALTHHUB"].audit:
                record(session, _happening(subtype, response), utcnow())
        finally:
            g.pop("auth_session", None)
    return response


def _happening(subtype: str, response: Response) -> Happening:
    detail = None
    if response.status_code >= 400 and response.is_json:
        body = response.get_json(silent=True) or {}
        detail = f"{body.get('error', '')}: {body.get('error_description', '')}"
    grant_type = request.form.get("grant_type", "")
    return Happening(subtype=subtype, action="E", status=response.status_code,
                     description=f"POST {request.path}" + (f" grant_type={grant_type[:40]}" if grant_type else ""),
                     client_id=_claimed_client(), address=request.remote_addr, detail=detail)


def _claimed_client() -> str | None:
    """The client the request names (authenticated or not: a refusal records who was claimed)."""
    if request.authorization and request.authorization.username:
        return request.authorization.username[:64]
    if request.form.get("client_id"):
        return request.form["client_id"][:64]
    assertion = request.form.get("client_assertion", "")
    try:
        payload = jws.extract_compact(assertion.encode("ascii")).payload if assertion.count(".") == 2 else b"{}"
        claims = orjson.loads(payload)
    except (JoseError, ValueError, UnicodeError, orjson.JSONDecodeError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub[:64] if isinstance(sub, str) else None


@bp.post("/auth/token")
def token() -> Response:
    def respond() -> Response:
        purge_now_and_then(g.auth_session, utcnow())
        response: Response = auth_service().server.create_token_response()
        return response

    return _in_transaction("token", respond)


@bp.post("/auth/introspect")
def introspect() -> Response:
    return _in_transaction("introspect", lambda: auth_service().server.create_endpoint_response("introspection"))


@bp.post("/auth/revoke")
def revoke() -> Response:
    return _in_transaction("revoke", lambda: auth_service().server.create_endpoint_response("revocation"))


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
