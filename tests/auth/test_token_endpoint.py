"""The token endpoint for hospital systems (SMART Backend Services and client_secret_basic),
introspection, revocation, the JWKS and the discovery documents — through HTTP only."""
from __future__ import annotations

import base64
import time
import uuid

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.orm import Session

from healthhub.auth.registry import create_client
from healthhub.clock import utcnow
from tests.forge import hs256, unsigned

BASE = "http://hub.test"
TOKEN_URL = f"{BASE}/auth/token"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def register(app):
    engine = app.extensions["healthhub.db"].engine

    def make(scope="system/*.rs", jwks=None, organization=None, grant="client_credentials", redirect_uris=()):
        with Session(engine) as session, session.begin():
            return create_client(session, name="Hospital", grant=grant, scope=scope, now=utcnow(), jwks=jwks,
                                 organization=organization, redirect_uris=redirect_uris)
    return make


def _basic(client_id, secret):
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _token(web, data, **headers):
    return web.post("/auth/token", data=data, headers={"Content-Type": FORM, **headers})


def _assertion(key, client_id, *, alg="RS384", kid="k1", aud=TOKEN_URL, lifetime=240, jti=None, **extra):
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "iat": now,
              "jti": uuid.uuid4().hex if jti is None else jti, **extra}
    return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def _jwks(*keys):
    return {"keys": [{**k.as_dict(private=False), "kid": f"k{i + 1}"} for i, k in enumerate(keys)]}


def _backend_form(assertion, scope="system/Patient.rs"):
    return {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}


def test_client_secret_basic_gets_a_token_that_reads_but_cannot_write(app, register):
    new = register(scope="system/Patient.rs system/Observation.rs")
    web = app.test_client()
    resp = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.rs system/Encounter.rs"},
                  Authorization=_basic(new.client_id, new.client_secret))
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "system/Patient.rs"  # Encounter was never registered: left out
    assert resp.headers["Cache-Control"] == "no-store"
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert web.get("/fhir/Patient", headers=bearer).status_code == 200
    denied = web.post("/fhir/Patient", json={"resourceType": "Patient"},
                      headers={**bearer, "Content-Type": "application/fhir+json"})
    assert denied.status_code == 403 and denied.json["issue"][0]["code"] == "forbidden"
    assert web.get("/fhir/Observation", headers=bearer).status_code == 403  # not in the token's scope


def test_wrong_secret_unknown_client_and_unregistered_scope_are_refused(app, register):
    new = register(scope="system/Patient.rs")
    web = app.test_client()
    wrong = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                   Authorization=_basic(new.client_id, "not-the-secret"))
    assert wrong.status_code == 401 and wrong.json["error"] == "invalid_client"
    unknown = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                     Authorization=_basic("no-such-client", "x"))
    assert unknown.status_code == 401 and unknown.json["error"] == "invalid_client"
    beyond = _token(web, {"grant_type": "client_credentials", "scope": "system/Observation.rs"},
                    Authorization=_basic(new.client_id, new.client_secret))
    assert beyond.status_code == 400 and beyond.json["error"] == "invalid_scope"
    malformed = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.delete-all"},
                       Authorization=_basic(new.client_id, new.client_secret))
    assert malformed.status_code == 400 and malformed.json["error"] == "invalid_scope"
    missing = _token(web, {"grant_type": "client_credentials"}, Authorization=_basic(new.client_id, new.client_secret))
    assert missing.status_code == 400 and missing.json["error"] == "invalid_scope"
    other_grant = _token(web, {"grant_type": "password", "username": "a", "password": "b"},
                         Authorization=_basic(new.client_id, new.client_secret))
    assert other_grant.status_code == 400 and other_grant.json["error"] == "unsupported_grant_type"


@pytest.mark.parametrize("key,alg", [(RSAKey.generate_key(2048), "RS384"), (ECKey.generate_key("P-384"), "ES384")])
def test_backend_services_assertion(app, register, key, alg):
    new = register(scope="system/*.rs", jwks=_jwks(key))
    web = app.test_client()
    resp = _token(web, _backend_form(_assertion(key, new.client_id, alg=alg)))
    assert resp.status_code == 200, resp.json
    assert resp.json["scope"] == "system/Patient.rs"
    assert web.get("/fhir/Patient", headers={"Authorization": f"Bearer {resp.json['access_token']}"}).status_code == 200


def test_backend_assertion_refusals(app, register):
    key = RSAKey.generate_key(2048)
    new = register(scope="system/*.rs", jwks=_jwks(key))
    web = app.test_client()

    def refused(assertion, why):
        resp = _token(web, _backend_form(assertion))
        assert resp.status_code in (400, 401), (why, resp.json)
        assert resp.json["error"] == "invalid_client", (why, resp.json)

    used = _assertion(key, new.client_id)
    assert _token(web, _backend_form(used)).status_code == 200
    refused(used, "the same jti twice (replay)")
    refused(_assertion(key, new.client_id, lifetime=600), "exp ten minutes out")
    refused(_assertion(key, new.client_id, lifetime=-120), "expired")
    refused(_assertion(key, new.client_id, aud=f"{BASE}/fhir"), "aud is not the token endpoint")
    refused(_assertion(key, new.client_id, alg="RS256"), "RS256 is not a SMART assertion algorithm")
    refused(_assertion(RSAKey.generate_key(2048), new.client_id), "signed by a key the client never registered")
    refused(_assertion(key, new.client_id, kid="k9"), "names a key the client does not have")
    claims = {"iss": new.client_id, "sub": new.client_id, "aud": TOKEN_URL, "exp": int(time.time()) + 60,
              "jti": uuid.uuid4().hex}
    refused(hs256(key.as_pem(private=False), {"kid": "k1"}, claims), "HS256 keyed with the public key")
    refused(unsigned({"typ": "JWT"}, claims), "alg none")
    refused(_assertion(key, new.client_id, jti=""), "no jti")
    # A secret client cannot present an assertion, nor a key client a secret.
    secret_client = register(scope="system/*.rs")
    refused(_assertion(key, secret_client.client_id), "the client has no keys")
    basic = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                   Authorization=_basic(new.client_id, "guess"))
    assert basic.status_code == 401


def test_hospital_writes_carry_its_organization(app, register):
    new = register(scope="system/*.cruds", organization="Organization/hospital-a")
    web = app.test_client()
    resp = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.cru"},
                  Authorization=_basic(new.client_id, new.client_secret))
    bearer = {"Authorization": f"Bearer {resp.json['access_token']}", "Content-Type": "application/fhir+json"}
    made = web.post("/fhir/Patient", json={"resourceType": "Patient", "meta": {"source": "http://elsewhere"}},
                    headers=bearer)
    assert made.status_code == 201
    assert made.json["meta"]["source"] == f"{BASE}/fhir/Organization/hospital-a"


def test_introspection_and_revocation(app, register):
    new = register(scope="system/*.rs")
    other = register(scope="system/*.rs")
    web = app.test_client()
    creds = {"Authorization": _basic(new.client_id, new.client_secret)}
    token = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.rs"}, **creds).json["access_token"]

    active = web.post("/auth/introspect", data={"token": token}, headers={"Content-Type": FORM, **creds}).json
    assert active["active"] is True and active["scope"] == "system/Patient.rs"
    assert active["client_id"] == new.client_id and active["exp"] > time.time()
    # Another client learns nothing about it.
    theirs = web.post("/auth/introspect", data={"token": token},
                      headers={"Content-Type": FORM, "Authorization": _basic(other.client_id, other.client_secret)})
    assert theirs.json == {"active": False}
    garbage = web.post("/auth/introspect", data={"token": "not-a-token"}, headers={"Content-Type": FORM, **creds})
    assert garbage.json == {"active": False}
    assert web.post("/auth/introspect", data={"token": token}, headers={"Content-Type": FORM}).status_code == 401

    assert web.post("/auth/revoke", data={"token": token}, headers={"Content-Type": FORM, **creds}).status_code == 200
    after = web.post("/auth/introspect", data={"token": token}, headers={"Content-Type": FORM, **creds}).json
    assert after == {"active": False}
    refused = web.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_revocation_reaches_another_process(app, make_app, register):
    """A second app on the same database (another web process) refuses the revoked token
    once it re-reads the revocation list."""
    from healthhub.auth import revocation

    new = register(scope="system/*.rs")
    web = app.test_client()
    creds = {"Authorization": _basic(new.client_id, new.client_secret)}
    token = _token(web, {"grant_type": "client_credentials", "scope": "system/Patient.rs"}, **creds).json["access_token"]
    other = make_app().test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert other.get("/fhir/Patient", headers=bearer).status_code == 200
    web.post("/auth/revoke", data={"token": token}, headers={"Content-Type": FORM, **creds})
    other_list = other.application.extensions["healthhub.auth"].revocations
    other_list._read_at -= revocation.REFRESH_EVERY + 1  # as if the refresh period had passed
    assert other.get("/fhir/Patient", headers=bearer).status_code == 401


def test_jwks_and_discovery(app):
    web = app.test_client()
    keys = web.get("/auth/jwks").json["keys"]
    assert keys and all(k["kid"] and k["kty"] == "RSA" and "d" not in k for k in keys)
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        doc = web.get(path).json
        for field in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint",
                      "token_endpoint_auth_methods_supported", "grant_types_supported", "scopes_supported",
                      "response_types_supported", "capabilities", "code_challenge_methods_supported",
                      "introspection_endpoint", "revocation_endpoint"):
            assert doc[field], field
        assert doc["token_endpoint"] == TOKEN_URL and doc["code_challenge_methods_supported"] == ["S256"]
        assert {"private_key_jwt", "client_secret_basic"} <= set(doc["token_endpoint_auth_methods_supported"])
        assert {"permission-v2", "permission-v1", "launch-standalone"} <= set(doc["capabilities"])
    oidc = web.get("/.well-known/openid-configuration").json
    assert oidc["issuer"] == BASE and oidc["jwks_uri"] == f"{BASE}/auth/jwks"
    assert web.get("/fhir/metadata").status_code == 200  # public


def test_expired_server_state_is_purged(app):
    from datetime import timedelta

    from sqlalchemy import func, select

    from healthhub.auth import expiry
    from healthhub.auth.models import AssertionJti, LoginFailure, RevokedToken

    engine = app.extensions["healthhub.db"].engine
    now = utcnow()
    with Session(engine) as session, session.begin():
        session.add_all([RevokedToken(jti="old", expires_at=now - timedelta(minutes=1)),
                         RevokedToken(jti="live", expires_at=now + timedelta(minutes=30)),
                         AssertionJti(client_id="c", jti="old", expires_at=now - timedelta(minutes=1)),
                         LoginFailure(username="u", address="a", at=now - timedelta(hours=1))])
    expiry._last[0] = -expiry.EVERY  # as if no purge had run lately in this process
    app.test_client().post("/auth/token", data={"grant_type": "client_credentials"})
    with Session(engine) as session:
        assert list(session.scalars(select(RevokedToken.jti))) == ["live"]
        assert session.scalar(select(func.count()).select_from(AssertionJti)) == 0
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 0
