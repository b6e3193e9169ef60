"""``/dashboard``: the page public-health officials look at the statistics on (issue 6).

The page is server-rendered HTML and a script with no build step (``static/dashboard/``) that
draws its charts with the vendored Chart.js. The script is a SMART public client of the hub's
own OAuth server — authorization code + PKCE (S256), the official signs in at
``/auth/authorize`` — and reads only ``/stats`` with the ``stats.read`` token it gets, kept in
the tab's ``sessionStorage``. Nothing on the page is ever more than the suppressed aggregates.

The dashboard's OAuth client is the hub's own, registered on the first request (its redirect URI
is this page at ``HEALTHHUB_BASE_URL``; a new base URL is added to it).
"""
from __future__ import annotations

import uuid

from flask import Blueprint, Flask, Response, current_app, render_template

from ..auth.models import OAuthClient
from ..clock import utcnow
from ..config import Config
from ..db import Database
from ..stats.dimensions import AGE_GROUPS
from ..storage.models import AppState

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
CLIENT_KEY = "dashboard.client"
SCOPE = "stats.read openid fhirUser"
#: Only this origin's scripts, styles and connections; no framing; no inline script or style.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("")
def page() -> Response:
    config: Config = current_app.config["HEALTHHUB"]
    redirect_uri = f"{config.base_url}/dashboard"
    client_id = ensure_client(current_app.extensions["healthhub.db"], redirect_uri)
    html = render_template("dashboard/index.html", client_id=client_id, redirect_uri=redirect_uri, scope=SCOPE,
                           base_url=config.base_url, min_cell=config.min_cell,
                           age_groups=",".join(label for label, _, _ in AGE_GROUPS))
    return Response(html, 200, content_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})


def ensure_client(db: Database, redirect_uri: str) -> str:
    """The dashboard's public OAuth client, made on first use (first-party: registered here,
    not by ``healthhub client create``, whose https rule is for third-party apps)."""
    with db.transaction() as session:
        state = session.get(AppState, CLIENT_KEY)
        client = session.get(OAuthClient, state.value) if state is not None else None
        if client is None:
            client = OAuthClient(client_id=str(uuid.uuid4()), name="HealthHub dashboard",
                                 grant_type="authorization_code", auth_method="none", scope=SCOPE, secret_hash=None,
                                 jwks=None, redirect_uris=[redirect_uri], organization=None, created_at=utcnow(),
                                 disabled=False)
            session.add(client)
            if state is None:
                session.add(AppState(key=CLIENT_KEY, value=client.client_id))
            else:
                state.value = client.client_id
        elif redirect_uri not in (client.redirect_uris or []):
            client.redirect_uris = [*(client.redirect_uris or []), redirect_uri]
        return client.client_id
