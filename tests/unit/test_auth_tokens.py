"""Access tokens (RFC 9068) and the signing key ring: issue, verify, refuse, rotate."""
from __future__ import annotations

import base64
import json
import os
import time

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from healthhub.auth.keys import RETIRED_FOR, KeyRing
from healthhub.auth.tokens import InvalidToken, TokenService
from tests.forge import b64, hs256, unsigned

ISS = "https://hub.test"
AUD = "https://hub.test/fhir"


@pytest.fixture
def ring(tmp_path):
    return KeyRing(tmp_path / "keys" / "signing-key.pem")


@pytest.fixture
def service(ring):
    return TokenService(ring, ISS, AUD)


def test_key_file_is_created_private_and_stable(ring, tmp_path):
    kid = ring.kid
    path = tmp_path / "keys" / "signing-key.pem"
    assert path.exists() and (os.stat(path).st_mode & 0o777) == 0o600
    assert KeyRing(path).kid == kid  # another process reads the same key
    jwks = ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [kid]
    assert set(jwks["keys"][0]) >= {"kty", "n", "e", "kid", "alg", "use"}
    assert "d" not in jwks["keys"][0]  # never the private part


def test_issue_and_verify(service):
    token = service.issue(client_id="app", subject="alice", scope="patient/Observation.rs launch/patient",
                          patient="p1", fhir_user="Practitioner/pr1")
    checked = service.verify(token)
    assert checked.client_id == "app" and checked.subject == "alice" and checked.patient == "p1"
    assert checked.fhir_user == "Practitioner/pr1"
    assert checked.grant.allows("Observation", "s") and not checked.grant.allows("Observation", "c")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256" and header["kid"]


def test_refusals(service, ring):
    good = service.issue(client_id="app", subject="alice", scope="system/*.rs")
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = ".".join([head, b64({**claims, "scope": "system/*.cruds"}), sig])
    other_key = RSAKey.generate_key(2048)
    foreign = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": ring.kid}, claims, other_key)
    confused = hs256(ring.current().as_pem(private=False), {"typ": "at+jwt", "kid": ring.kid}, body)
    for bad in (forged, foreign, confused, unsigned({"typ": "at+jwt"}, body), "", "garbage", "a.b.c", "x" * 9000, good + "x"):
        with pytest.raises(InvalidToken):
            service.verify(bad)


@pytest.mark.parametrize("changes,reason", [
    ({"iss": "https://evil.test"}, "another server"),
    ({"aud": "https://other.test/fhir"}, "another audience"),
    ({"exp": int(time.time()) - 120}, "expired"),
    ({"iat": int(time.time()) + 600}, "not valid yet"),
])
def test_claims_are_checked(ring, changes, reason):
    service = TokenService(ring, ISS, AUD)
    token = service.issue(client_id="app", subject="s", scope="system/*.rs", extra=changes)
    with pytest.raises(InvalidToken, match=reason):
        service.verify(token)


def test_revoked_tokens_are_refused(ring):
    revoked: set[str] = set()
    service = TokenService(ring, ISS, AUD, revoked=revoked.__contains__)
    token = service.issue(client_id="app", subject="s", scope="system/*.rs")
    revoked.add(service.verify(token).jti)
    with pytest.raises(InvalidToken, match="revoked"):
        service.verify(token)


def test_rotation_keeps_old_tokens_valid_until_the_retired_key_expires(ring, tmp_path):
    service = TokenService(ring, ISS, AUD)
    old_token = service.issue(client_id="app", subject="s", scope="system/*.rs")
    old_kid = ring.kid
    new_kid = ring.rotate()
    assert new_kid != old_kid
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new_kid, old_kid]
    assert service.verify(old_token).client_id == "app"
    new_token = service.issue(client_id="app", subject="s", scope="system/*.rs")
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"] == new_kid
    # Another process, started after the rotation, trusts both keys too.
    assert TokenService(KeyRing(ring.path), ISS, AUD).verify(old_token).subject == "s"
    # Once retired for longer than tokens live, the old key is gone.
    retired = next(ring.retired_dir.glob("*.pem"))
    stamp, rest = retired.name.split("-", 1)
    retired.rename(retired.with_name(f"{int(stamp) - RETIRED_FOR - 1}-{rest}"))
    fresh = KeyRing(ring.path)
    assert [k["kid"] for k in fresh.jwks()["keys"]] == [new_kid]
    with pytest.raises(InvalidToken):
        TokenService(fresh, ISS, AUD).verify(old_token)
