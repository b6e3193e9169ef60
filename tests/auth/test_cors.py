"""CORS for browser-based SMART apps: preflights and answers allowed to the origins of registered
apps (by their redirect URIs) or configured ones, a token readable only from its own app's
origin, and nothing for origins nobody registered or endpoints browsers never call."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from healthhub.auth.registry import create_client
from healthhub.clock import utcnow
from tests.conftest import issue_token

APP = "https://app.example.org"
OTHER = "https://other-app.example.net:8443"
EVIL = "https://evil.example.com"


def register(app: Any, redirect: str) -> str:
    with Session(app.extensions["healthhub.db"].engine) as session, session.begin():
        return create_client(session, name="Browser app", grant="authorization_code", scope="patient/*.rs openid",
                             now=utcnow(), redirect_uris=(redirect,)).client_id


def preflight(app: Any, origin: str, path: str = "/fhir/Patient") -> Any:
    return app.test_client().options(path, headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "authorization"})


def test_a_registered_apps_origin_passes_the_preflight(app: Any) -> None:
    register(app, f"{APP}/callback")
    resp = preflight(app, APP)
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in resp.headers  # bearer tokens, not cookies


def test_an_unknown_origin_is_refused(app: Any) -> None:
    register(app, f"{APP}/callback")
    resp = preflight(app, EVIL)
    assert resp.status_code == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    got = app.test_client().get("/fhir/metadata", headers={"Origin": EVIL})
    assert got.status_code == 200 and "Access-Control-Allow-Origin" not in got.headers
    assert "Origin" in got.headers["Vary"]


def test_a_token_is_readable_only_from_its_own_apps_origin(app: Any) -> None:
    mine = register(app, f"{APP}/callback")
    register(app, f"{OTHER}/cb")
    bearer = {"Authorization": f"Bearer {issue_token(app, 'patient/*.rs', client_id=mine, patient='p1')}"}
    web = app.test_client()
    own = web.get("/fhir/Patient", headers={**bearer, "Origin": APP})
    assert own.status_code == 200 and own.headers["Access-Control-Allow-Origin"] == APP
    assert "Location" in own.headers["Access-Control-Expose-Headers"]
    stolen = web.get("/fhir/Patient", headers={**bearer, "Origin": OTHER})  # another registered app's page
    assert "Access-Control-Allow-Origin" not in stolen.headers
    # Without a token (discovery, a 401) any registered app's origin may read the answer.
    assert web.get("/fhir/.well-known/smart-configuration",
                   headers={"Origin": OTHER}).headers["Access-Control-Allow-Origin"] == OTHER
    denied = web.get("/fhir/Patient", headers={"Origin": OTHER})
    assert denied.status_code == 401 and denied.headers["Access-Control-Allow-Origin"] == OTHER


def test_configured_origins_and_endpoints_that_take_no_part(make_app: Any) -> None:
    app = make_app(cors_origins=("https://portal.health.example",))
    assert preflight(app, "https://portal.health.example").status_code == 204
    assert preflight(app, "https://portal.health.example", "/stats/Condition").status_code == 204
    ingest = app.test_client().post("/ingest/hl7v2", data=b"MSH|", headers={
        "Origin": "https://portal.health.example", "Content-Type": "x-application/hl7-v2+er7"})
    assert "Access-Control-Allow-Origin" not in ingest.headers  # hospital systems only
    page = app.test_client().get("/dashboard", headers={"Origin": "https://portal.health.example"})
    assert "Access-Control-Allow-Origin" not in page.headers


def test_a_disabled_apps_origin_no_longer_passes(app: Any) -> None:
    from sqlalchemy import update

    from healthhub.api import cors
    from healthhub.auth.models import OAuthClient as Client

    client_id = register(app, f"{APP}/callback")
    assert preflight(app, APP).status_code == 204
    with Session(app.extensions["healthhub.db"].engine) as session, session.begin():
        session.execute(update(Client).where(Client.client_id == client_id).values(disabled=True))
    app.extensions["healthhub.cors"]._loaded_at -= cors.CACHE_SECONDS  # as if the cache had aged
    assert preflight(app, APP).status_code == 403
