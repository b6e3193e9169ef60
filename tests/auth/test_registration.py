"""`healthhub client create` and `healthhub user create` (CONTRACT §3), checked in the database."""
from __future__ import annotations

import hashlib

import orjson
import pytest
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from healthhub.auth.models import OAuthClient, User


@pytest.fixture
def stored(app):
    engine = app.extensions["healthhub.db"].engine

    def get(model, key):
        with Session(engine) as session:
            return session.get(model, key)
    return get


def _jwks_file(tmp_path, *keys, private=False):
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [{**k.as_dict(private=private), "kid": f"k{i}"}
                                            for i, k in enumerate(keys)]}))
    return str(path)


def test_backend_with_secret(cli, stored):
    result = cli("client", "create", "--name", "St Mary lab system", "--grant", "client_credentials",
                 "--scope", "system/*.cu system/Patient.rs", "--organization", "Organization/st-mary")
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.output)
    assert set(out) == {"client_id", "client_secret"} and len(out["client_secret"]) >= 40
    client = stored(OAuthClient, out["client_id"])
    assert client.auth_method == "client_secret_basic" and client.organization == "Organization/st-mary"
    assert client.secret_hash == hashlib.sha256(out["client_secret"].encode()).hexdigest()
    assert out["client_secret"] not in client.secret_hash  # only the digest is kept


def test_backend_with_jwks_gets_no_secret(cli, stored, tmp_path):
    jwks = _jwks_file(tmp_path, RSAKey.generate_key(2048), ECKey.generate_key("P-384"))
    result = cli("client", "create", "--name", "registry", "--grant", "client_credentials",
                 "--scope", "system/*.rs", "--jwks-file", jwks)
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.output)
    assert set(out) == {"client_id"}
    client = stored(OAuthClient, out["client_id"])
    assert client.auth_method == "private_key_jwt" and client.secret_hash is None
    assert [k["kid"] for k in client.jwks["keys"]] == ["k0", "k1"]


def test_public_app(cli, stored):
    result = cli("client", "create", "--name", "Growth charts", "--grant", "authorization_code",
                 "--scope", "launch/patient openid fhirUser offline_access patient/*.rs",
                 "--redirect-uri", "https://apps.example.org/callback", "--redirect-uri", "http://localhost:9000/cb")
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.output)
    client = stored(OAuthClient, out["client_id"])
    assert set(out) == {"client_id"} and client.auth_method == "none"
    assert client.redirect_uris == ["https://apps.example.org/callback", "http://localhost:9000/cb"]


@pytest.mark.parametrize("args,message", [
    (["--grant", "client_credentials", "--scope", "patient/*.rs"], "system/ scopes"),
    (["--grant", "client_credentials", "--scope", "system/*.rs openid"], "system/ scopes"),
    (["--grant", "client_credentials", "--scope", "system/*.rs", "--redirect-uri", "https://x.org/cb"], "no redirect"),
    (["--grant", "authorization_code", "--scope", "system/*.rs", "--redirect-uri", "https://x.org/cb"], "patient/ and user/"),
    (["--grant", "authorization_code", "--scope", "patient/*.rs"], "redirect-uri"),
    (["--grant", "authorization_code", "--scope", "patient/*.rs", "--redirect-uri", "http://x.org/cb"], "https"),
    (["--grant", "authorization_code", "--scope", "patient/*.rs", "--redirect-uri", "https://x.org/cb#f"], "fragment"),
    (["--grant", "client_credentials", "--scope", "system/*.rx"], "--scope"),
    (["--grant", "client_credentials", "--scope", "system/*.rs", "--organization", "Organization/a b"], "Organization"),
    (["--grant", "password", "--scope", "system/*.rs"], "'password' is not one of"),
])
def test_bad_clients_are_refused_in_one_line(cli, args, message):
    result = cli("client", "create", "--name", "x", *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == \
        [result.output.strip().splitlines()[-1]]  # one error line (after click's usage hint, if any)


class _WeakRsa:
    """A 1024-bit RSA public JWK, built without joserfc (which warns on such keys)."""

    def as_dict(self, private=False):
        import base64

        from cryptography.hazmat.primitives.asymmetric import rsa

        numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()

        def b64(n: int) -> str:
            return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
        return {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e)}


@pytest.mark.parametrize("make_key,message", [
    (_WeakRsa, "2048"),
    (lambda: ECKey.generate_key("P-256"), "P-384"),
])
def test_weak_or_wrong_keys_are_refused(cli, tmp_path, make_key, message):
    result = cli("client", "create", "--name", "x", "--grant", "client_credentials", "--scope", "system/*.rs",
                 "--jwks-file", _jwks_file(tmp_path, make_key()))
    assert result.exit_code != 0 and message in result.output


def test_private_keys_are_refused(cli, tmp_path):
    result = cli("client", "create", "--name", "x", "--grant", "client_credentials", "--scope", "system/*.rs",
                 "--jwks-file", _jwks_file(tmp_path, RSAKey.generate_key(2048), private=True))
    assert result.exit_code != 0 and "private key material" in result.output


def test_user_create(cli, stored):
    result = cli("user", "create", "--username", "dr.ames", "--password", "correct horse battery",
                 "--role", "clinician", "--practitioner", "Practitioner/pr-1")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == {"username": "dr.ames", "role": "clinician", "fhirUser": "Practitioner/pr-1"}
    user = stored(User, "dr.ames")
    assert user.password_hash.startswith("scrypt:") and "correct horse" not in user.password_hash
    assert check_password_hash(user.password_hash, "correct horse battery")
    again = cli("user", "create", "--username", "dr.ames", "--password", "another password", "--role", "admin")
    assert again.exit_code != 0 and "exists already" in again.output


@pytest.mark.parametrize("args,message", [
    (["--username", "a b", "--password", "long enough pw", "--role", "admin"], "--username"),
    (["--username", "ok", "--password", "short", "--role", "admin"], "at least 10"),
    (["--username", "ok", "--password", "long enough pw", "--role", "root"], "root"),
    (["--username", "ok", "--password", "long enough pw", "--role", "clinician", "--practitioner", "Patient/x"],
     "Practitioner"),
])
def test_bad_users_are_refused(cli, args, message):
    result = cli("user", "create", *args)
    assert result.exit_code != 0 and message in result.output


def test_list_and_disable_clients_and_users(cli, app):
    import base64

    made = orjson.loads(cli("client", "create", "--name", "Lab", "--grant", "client_credentials",
                            "--scope", "system/*.rs").output)
    assert cli("user", "create", "--username", "nurse", "--password", "long enough pw", "--role",
               "clinician").exit_code == 0
    listed = [orjson.loads(line) for line in cli("client", "list").output.splitlines()]
    assert [c["client_id"] for c in listed] == [made["client_id"]] and made["client_secret"] not in str(listed)
    web = app.test_client()
    basic = {"Authorization": "Basic " + base64.b64encode(f"{made['client_id']}:{made['client_secret']}".encode()).decode()}
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    assert web.post("/auth/token", data=form, headers=basic).status_code == 200
    assert cli("client", "disable", made["client_id"]).exit_code == 0
    assert web.post("/auth/token", data=form, headers=basic).status_code == 401
    assert cli("user", "disable", "nurse").exit_code == 0
    assert cli("user", "disable", "nobody").exit_code == 1
    assert cli("client", "disable", "nobody").exit_code == 1
