"""``/auth/authorize``: the pages a person sees when an app asks for access (SMART App Launch,
https://hl7.org/fhir/smart-app-launch/app-launch.html#obtain-authorization-code).

GET validates the request (client, exact redirect URI, ``aud``, PKCE S256) and shows the sign-in
form; the form posts back with the request's parameters, then the consent page (scopes to tick,
and a patient picker when ``launch/patient`` or a ``patient/`` scope is asked for) posts the decision. authlib checks
the request at each step and writes the redirect. Errors before the redirect URI is known to
belong to the client are shown as a page, never redirected (RFC 6749 §4.1.2.1).

Forms carry a CSRF token bound to the request's parameters; the consent form also carries a
signed ticket naming the signed-in user (ten minutes), so no server-side session is needed and
any web process can take the next step.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from flask import Blueprint, Flask, Response, current_app, g, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from ..audit.events import Happening, record
from ..auth.code_flow import Approval, ceiling
from ..auth.login import LoginRefused, sign_in
from ..auth.models import User
from ..auth.server import Client
from ..auth.service import auth_service
from ..clock import utcnow
from ..db import Database
from ..search.engine import Engine
from ..search.parser import parse
from ..search.registry import default_registry
from ..storage.repository import Repository

bp = Blueprint("authorize", __name__)
#: The authorization request's parameters, carried through the forms.
PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge",
          "code_challenge_method", "nonce", "launch")
TICKET_AGE = 600
SCOPE_LABELS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.route("/auth/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    db: Database = current_app.extensions["healthhub.db"]
    with db.transaction() as session:
        g.auth_session = session
        try:
            response = _authorize(session)
        finally:
            g.pop("auth_session", None)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"  # no clickjacking of the consent page
    return response


def _authorize(session: Session) -> Response:
    server = auth_service().server
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as err:
        return _refuse(err)
    client: Client = grant.client
    params = {k: request.values[k] for k in PARAMS if k in request.values}
    if params.get("aud", "").rstrip("/") != auth_service().config.fhir_base:
        return _refuse(InvalidRequestError(f"aud must be this server's FHIR base URL, {auth_service().config.fhir_base}",
                                           redirect_uri=grant.redirect_uri, state=params.get("state")))
    if request.method == "GET":
        return _login_page(client, params)
    if not _valid_csrf(request.form.get("csrf_token", ""), params):
        return _page("auth/error.html", 400, error="The form expired or did not come from this server.")
    step = request.form.get("step", "")
    if step == "login":
        username = request.form.get("username", "")
        try:
            user = sign_in(session, username, request.form.get("password", ""), request.remote_addr or "unknown")
        except LoginRefused as refused:
            _audit_sign_in(session, client, username, refused.status, refused.message)
            return _login_page(client, params, refused.message, refused.status, username)
        _audit_sign_in(session, client, user.username, 200)
        return _consent_page(session, client, user, params, _serializer().dumps(
            {"u": user.username, "t": int(utcnow().timestamp())}))
    ticket = request.form.get("ticket", "")
    try:
        data = _serializer().loads(ticket, max_age=TICKET_AGE)
    except BadSignature:
        return _login_page(client, params, "Your sign-in expired; sign in again.", 401)
    signed_in = session.get(User, data["u"])
    if signed_in is None or signed_in.disabled:
        return _login_page(client, params, "Sign in again.", 401)
    return _decide(session, grant, client, signed_in, params, ticket, step, data["t"])


def _decide(session: Session, grant: Any, client: Client, user: User, params: dict[str, str], ticket: str,
            step: str, auth_time: int) -> Response:
    """The consent form's answer: deny, search patients, or allow what was ticked."""
    server = auth_service().server
    if step == "deny":
        return server.create_authorization_response(grant=grant, grant_user=None)
    if step == "find-patient":
        return _consent_page(session, client, user, params, ticket)
    allowed = ceiling(client, user, params.get("scope", ""))
    chosen = set(request.form.getlist("grant_scope"))
    scope = " ".join(s for s in allowed.text.split() if s in chosen)
    if not scope:
        return _consent_page(session, client, user, params, ticket, "Tick at least one kind of access, or deny.")
    patient = None
    if needs_patient(scope.split()):
        patient = request.form.get("patient", "")
        if not patient or not _patient_exists(session, patient):
            return _consent_page(session, client, user, params, ticket, "Choose the patient the app will work on.")
    approval = Approval(user, scope, patient, datetime.fromtimestamp(auth_time, tz=UTC))
    return server.create_authorization_response(grant=grant, grant_user=approval)


def _audit_sign_in(session: Session, client: Client, username: str, status: int, detail: str | None = None) -> None:
    if current_app.config["HEALTHHUB"].audit:
        record(session, Happening(subtype="login", action="E", status=status, description="POST /auth/authorize sign-in",
                                  client_id=client.get_client_id(), username=username[:128] or None,
                                  address=request.remote_addr, detail=detail), utcnow())


# -- pages ---------------------------------------------------------------------------------------

def _login_page(client: Client, params: dict[str, str], error: str | None = None, status: int = 200,
                username: str = "") -> Response:
    return _page("auth/login.html", status, client_name=client.row.name, params=params, error=error,
                 username=username, csrf_token=_csrf(params), action=request.path)


def _consent_page(session: Session, client: Client, user: User, params: dict[str, str], ticket: str,
                  error: str | None = None) -> Response:
    allowed = ceiling(client, user, params.get("scope", "")).text.split()
    if not allowed:
        return _page("auth/error.html", 403, error=f"Your role ({user.role}) allows none of the access "
                                                   f"{client.row.name} asks for.")
    ticked = set(request.form.getlist("grant_scope")) if request.form.get("step") in ("find-patient", "allow") \
        else set(allowed)
    query = request.form.get("patient_query", "").strip()
    return _page("auth/consent.html", 400 if error else 200, client_name=client.row.name, username=user.username,
                 params=params, ticket=ticket, csrf_token=_csrf(params), action=request.path, error=error,
                 scopes=[{"text": s, "label": _label(s), "checked": s in ticked} for s in allowed],
                 pick_patient=needs_patient(allowed), patient_query=query,
                 patients=_find_patients(session, query) if query else [], patient=request.form.get("patient"))


def _page(template: str, status: int, **context: Any) -> Response:
    return Response(render_template(template, **context), status=status, content_type="text/html; charset=utf-8")


def _refuse(err: OAuth2Error) -> Response:
    """Redirect the error to the client when its redirect URI was checked; else show it."""
    if getattr(err, "redirect_uri", None):
        response: Response = auth_service().server.handle_error_response(None, err)
        return response
    return _page("auth/error.html", 400, error=err.get_error_description() or err.error)


def needs_patient(scopes: list[str]) -> bool:
    """A patient is chosen for ``launch/patient`` and for any ``patient/`` scope: a ``patient/``
    scope without a patient in context would allow nothing."""
    return any(s == "launch/patient" or s.startswith("patient/") for s in scopes)


def _label(scope: str) -> str:
    if scope == "launch/patient":
        return "Work on one patient's record (chosen below)"
    if scope in ("openid", "fhirUser", "profile"):
        return "Know who you are"
    if scope in ("offline_access", "online_access"):
        return "Stay signed in" + (" after you close the app" if scope == "offline_access" else " while you use it")
    if scope == "stats.read":
        return "Read aggregate statistics"
    context, _, rest = scope.partition("/")
    rtype, _, perms = rest.partition(".")
    perms, _, query = perms.partition("?")
    letters = {"read": "rs", "write": "cud", "*": "cruds"}.get(perms, perms)
    what = ", ".join(SCOPE_LABELS[c] for c in letters if c in SCOPE_LABELS)
    whose = {"patient": "the chosen patient's", "user": "all", "system": "all"}.get(context, "")
    kind = "records of every type" if rtype == "*" else f"{rtype} records"
    return f"{what.capitalize()} {whose} {kind}" + (f" matching {query}" if query else "")


# -- patient picker ------------------------------------------------------------------------------

def _find_patients(session: Session, query: str) -> list[dict[str, str]]:
    registry = default_registry()
    req = parse("Patient", [("name", query[:100]), ("_count", "20")], registry)
    found = Engine(session, registry, utcnow()).search(req).matches
    out = []
    for p in found:
        c = p.content or {}
        names = c.get("name") or [{}]
        name = " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip() or names[0].get("text", p.id)
        out.append({"id": p.id, "name": name, "gender": c.get("gender", "unknown"),
                    "birth_date": c.get("birthDate", "unknown")})
    return out


def _patient_exists(session: Session, patient_id: str) -> bool:
    from ..context import SYSTEM
    from ..outcome import FhirError

    try:
        Repository(session, SYSTEM).read("Patient", patient_id)
    except FhirError:
        return False
    return True


# -- CSRF and tickets ----------------------------------------------------------------------------

def _secret() -> bytes:
    """Derived from the signing key: shared by every process that shares the key file."""
    pem = auth_service().keys.current().as_pem(private=True)
    return hmac.new(pem, b"healthhub authorization forms", hashlib.sha256).digest()


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(), salt="consent-ticket")


def _csrf(params: dict[str, str]) -> str:
    return URLSafeTimedSerializer(_secret(), salt="csrf").dumps(_digest(params))


def _valid_csrf(token: str, params: dict[str, str]) -> bool:
    try:
        return bool(URLSafeTimedSerializer(_secret(), salt="csrf").loads(token, max_age=3600) == _digest(params))
    except BadSignature:
        return False


def _digest(params: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{k}={params.get(k, '')}" for k in PARAMS).encode()).hexdigest()
