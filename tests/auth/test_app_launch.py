"""SMART App Launch for clinicians and officials: authorization code + PKCE through the sign-in
and consent pages, ID tokens, refresh rotation, and every refusal the flow owes — over HTTP."""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from healthhub.auth.registry import create_client, create_user
from healthhub.clock import utcnow
from tests.conftest import authorized, put_json

BASE = "http://hub.test"
FHIR = f"{BASE}/fhir"
CALLBACK = "https://app.example/callback"
FORM = "application/x-www-form-urlencoded"
APP_SCOPE = "launch/patient patient/*.rs user/*.rs openid fhirUser offline_access"


@pytest.fixture
def hub(app):
    engine = app.extensions["healthhub.db"].engine
    with Session(engine) as session, session.begin():
        public = create_client(session, name="Ward App", grant="authorization_code", scope=APP_SCOPE, now=utcnow(),
                               redirect_uris=(CALLBACK,))
        create_user(session, username="dr.uwase", password="correct horse battery", role="clinician", now=utcnow(),
                    practitioner="Practitioner/pr1")
        create_user(session, username="officer", password="correct horse battery", role="public-health",
                    now=utcnow())
    admin = authorized(app)
    for body in ({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Uwase"}]},
                 {"resourceType": "Patient", "id": "pa", "name": [{"family": "Alpha", "given": ["Ann"]}],
                  "gender": "female", "birthDate": "1980-02-03"},
                 {"resourceType": "Patient", "id": "pb", "name": [{"family": "Beta"}]}):
        assert put_json(admin, f"/fhir/{body['resourceType']}/{body['id']}", body).status_code == 201
    return app, public.client_id


def pkce():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def auth_params(client_id, challenge, **over):
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "scope": APP_SCOPE,
              "state": "st-1", "aud": FHIR, "code_challenge": challenge, "code_challenge_method": "S256",
              "nonce": "n-1"}
    params.update(over)
    return {k: v for k, v in params.items() if v is not None}


def hidden_fields(html):
    return {unescape(m.group(1)): unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)}


def sign_in(web, params, username="dr.uwase", password="correct horse battery"):
    page = web.get("/auth/authorize?" + urlencode(params))
    assert page.status_code == 200, page.data[:500]
    form = {**hidden_fields(page.get_data(as_text=True)), "username": username, "password": password}
    return web.post("/auth/authorize", data=form, content_type=FORM)


def launch(web, params, patient="pa", decision="allow", **login):
    consent = sign_in(web, params, **login)
    assert consent.status_code == 200, consent.get_data(as_text=True)[:800]
    html = consent.get_data(as_text=True)
    form = {**hidden_fields(html), "step": decision,
            "grant_scope": re.findall(r'name="grant_scope" value="([^"]+)" checked', html)}
    if patient:
        form["patient"] = patient
    return web.post("/auth/authorize", data=form, content_type=FORM)


def code_of(resp):
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    location = resp.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return parse_qs(urlsplit(location).query)


def exchange(web, client_id, code, verifier, **extra):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "client_id": client_id,
            "code_verifier": verifier, **extra}
    return web.post("/auth/token", data=data, content_type=FORM)


def test_clinician_launch_end_to_end(hub):
    app, client_id = hub
    web = app.test_client()
    verifier, challenge = pkce()
    page = web.get("/auth/authorize?" + urlencode(auth_params(client_id, challenge)))
    html = page.get_data(as_text=True)
    assert '<html lang="en">' in html and '<label for="username">' in html and '<label for="password">' in html
    assert page.headers["X-Frame-Options"] == "DENY"
    consent = sign_in(web, auth_params(client_id, challenge))
    text = consent.get_data(as_text=True)
    assert "Ward App" in text and "patient_query" in text and "launch/patient" in text
    found = web.post("/auth/authorize", content_type=FORM, data={**hidden_fields(text), "step": "find-patient",
                                                                  "patient_query": "alpha",
                                                                  "grant_scope": APP_SCOPE.split()})
    assert "Ann Alpha" in found.get_data(as_text=True) and 'value="pa"' in found.get_data(as_text=True)

    answer = code_of(launch(web, auth_params(client_id, challenge)))
    assert answer["state"] == ["st-1"]
    resp = exchange(web, client_id, answer["code"][0], verifier)
    assert resp.status_code == 200, resp.json
    token = resp.json
    assert token["patient"] == "pa" and token["token_type"] == "Bearer" and token["refresh_token"]
    assert set(token["scope"].split()) == set(APP_SCOPE.split())
    keys = KeySet.import_key_set(web.get("/auth/jwks").json)
    id_claims = jwt.decode(token["id_token"], keys).claims
    assert id_claims["aud"] == client_id and id_claims["iss"] == BASE and id_claims["nonce"] == "n-1"
    assert id_claims["fhirUser"] == f"{FHIR}/Practitioner/pr1" and id_claims["sub"] == "dr.uwase"

    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert web.get("/fhir/Patient/pa", headers=bearer).status_code == 200
    assert web.get("/fhir/Practitioner/pr1", headers=bearer).status_code == 200
    # user/*.rs was granted too: a clinician's app also reads beyond the chosen patient.
    assert web.get("/fhir/Patient/pb", headers=bearer).status_code == 200
    assert web.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=bearer).status_code == 403


def launched(hub):
    """A completed launch: (test client, client_id, code, verifier, token response)."""
    app, client_id = hub
    web = app.test_client()
    verifier, challenge = pkce()
    code = code_of(launch(web, auth_params(client_id, challenge)))["code"][0]
    return web, client_id, code, verifier, exchange(web, client_id, code, verifier).json


def test_code_reuse_revokes_what_the_first_use_got(hub):
    web, client_id, code, verifier, first = launched(hub)
    bearer = {"Authorization": f"Bearer {first['access_token']}"}
    assert web.get("/fhir/Patient/pa", headers=bearer).status_code == 200
    again = exchange(web, client_id, code, verifier)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"
    assert web.get("/fhir/Patient/pa", headers=bearer).status_code == 401
    refreshed = web.post("/auth/token", content_type=FORM, data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": client_id})
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"


def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(hub):
    web, client_id, _, _, first = launched(hub)

    def refresh(token, **extra):
        return web.post("/auth/token", content_type=FORM, data={
            "grant_type": "refresh_token", "refresh_token": token, "client_id": client_id, **extra})

    second = refresh(first["refresh_token"])
    assert second.status_code == 200, second.json
    assert second.json["refresh_token"] != first["refresh_token"] and second.json["patient"] == "pa"
    narrower = refresh(second.json["refresh_token"], scope="patient/*.rs launch/patient offline_access")
    assert narrower.status_code == 200 and "user/*.rs" not in narrower.json["scope"]
    wider = refresh(narrower.json["refresh_token"], scope="patient/*.cruds launch/patient offline_access")
    assert wider.status_code == 400 and wider.json["error"] == "invalid_scope"
    latest = narrower.json
    replay = refresh(first["refresh_token"])  # spent: someone else has it
    assert replay.status_code == 400 and replay.json["error"] == "invalid_grant"
    assert refresh(latest["refresh_token"]).status_code == 400  # the whole family is void
    assert web.get("/fhir/Patient/pa", headers={"Authorization": f"Bearer {latest['access_token']}"}).status_code == 401


def test_pkce_and_redirect_rules(hub):
    app, client_id = hub
    web = app.test_client()
    verifier, challenge = pkce()
    for over, why in (({"code_challenge": None, "code_challenge_method": None}, "no PKCE"),
                      ({"code_challenge_method": "plain", "code_challenge": verifier}, "plain PKCE"),
                      ({"aud": "https://other.example/fhir"}, "wrong aud")):
        resp = web.get("/auth/authorize?" + urlencode(auth_params(client_id, challenge, **over)))
        answer = code_of(resp)
        assert answer["error"] == ["invalid_request"] and answer["state"] == ["st-1"], why
    for uri in (CALLBACK + "/extra", CALLBACK + "?x=1", "https://evil.example/callback", "https://app.example"):
        resp = web.get("/auth/authorize?" + urlencode(auth_params(client_id, challenge, redirect_uri=uri)))
        assert resp.status_code == 400 and "Location" not in resp.headers, uri  # never sent to an unknown URI
        assert "cannot be used" in resp.get_data(as_text=True)
    resp = web.get("/auth/authorize?" + urlencode(auth_params("no-such-client", challenge)))
    assert resp.status_code == 400 and "Location" not in resp.headers

    code = code_of(launch(web, auth_params(client_id, challenge)))["code"][0]
    assert exchange(web, client_id, code, None).json["error"] == "invalid_request"  # no verifier
    code = code_of(launch(web, auth_params(client_id, challenge)))["code"][0]
    wrong = exchange(web, client_id, code, secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json["error"] == "invalid_grant"
    code = code_of(launch(web, auth_params(client_id, challenge)))["code"][0]
    assert exchange(web, client_id, code, verifier, redirect_uri="https://app.example/other").json["error"] == \
        "invalid_grant"


def test_deny_csrf_and_patient_choice(hub):
    app, client_id = hub
    web = app.test_client()
    _, challenge = pkce()
    denied = code_of(launch(web, auth_params(client_id, challenge), decision="deny"))
    assert denied["error"] == ["access_denied"] and "code" not in denied
    no_patient = launch(web, auth_params(client_id, challenge), patient=None)
    assert no_patient.status_code == 400 and "Choose the patient" in no_patient.get_data(as_text=True)
    unknown = launch(web, auth_params(client_id, challenge), patient="nobody")
    assert unknown.status_code == 400
    page = web.get("/auth/authorize?" + urlencode(auth_params(client_id, challenge)))
    form = {**hidden_fields(page.get_data(as_text=True)), "username": "dr.uwase", "password": "correct horse battery"}
    form["csrf_token"] = "forged"
    assert web.post("/auth/authorize", data=form, content_type=FORM).status_code == 400
    form = {**hidden_fields(page.get_data(as_text=True)), "username": "dr.uwase", "password": "correct horse battery",
            "scope": "user/*.cruds"}  # parameters changed after the form was made
    assert web.post("/auth/authorize", data=form, content_type=FORM).status_code == 400


def test_public_health_official_gets_statistics_only(hub):
    app, client_id = hub
    engine = app.extensions["healthhub.db"].engine
    with Session(engine) as session, session.begin():
        dash = create_client(session, name="Dashboard", grant="authorization_code", now=utcnow(),
                             scope="stats.read openid fhirUser user/*.rs", redirect_uris=(CALLBACK,))
    web = app.test_client()
    verifier, challenge = pkce()
    params = auth_params(dash.client_id, challenge, scope="stats.read openid user/*.rs")
    code = code_of(launch(web, params, patient=None, username="officer"))["code"][0]
    token = exchange(web, dash.client_id, code, verifier).json
    assert token["scope"] == "openid stats.read" and "patient" not in token
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    for path in ("/fhir/Patient", "/fhir/Patient/pa", "/fhir/Practitioner/pr1"):
        assert web.get(path, headers=bearer).status_code == 403


def test_sign_in_is_throttled_per_user(hub):
    app, client_id = hub
    web = app.test_client()
    _, challenge = pkce()
    params = auth_params(client_id, challenge)
    for _ in range(5):
        wrong = sign_in(web, params, password="guess")
        assert wrong.status_code == 401 and "wrong" in wrong.get_data(as_text=True)
    blocked = sign_in(web, params)  # the right password no longer helps for a while
    assert blocked.status_code == 429 and "Too many" in blocked.get_data(as_text=True)
    unknown = sign_in(web, params, username="nobody", password="x")
    assert unknown.status_code == 401


def test_patient_scopes_without_launch_patient_still_pick_a_patient(hub):
    app, client_id = hub
    web = app.test_client()
    verifier, challenge = pkce()
    params = auth_params(client_id, challenge, scope="patient/*.rs openid")
    assert "patient_query" in sign_in(web, params).get_data(as_text=True)  # the picker is shown
    token = exchange(web, client_id, code_of(launch(web, params, patient="pa"))["code"][0], verifier).json
    assert token["scope"] == "patient/*.rs openid" and "patient" not in token  # not asked for in the answer
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert web.get("/fhir/Patient/pa", headers=bearer).status_code == 200
    assert web.get("/fhir/Patient/pb", headers=bearer).status_code == 404
