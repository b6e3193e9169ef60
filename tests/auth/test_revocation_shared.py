"""Token revocations shared by every web process: through the database (within REFRESH_EVERY
seconds), or at once through Redis when HEALTHHUB_REDIS_URL is set — on fakeredis and on a real
redis-server (``redis_store``, tests/conftest.py)."""
from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy.orm import Session

from healthhub.auth import revocation
from healthhub.auth.registry import create_client
from healthhub.clock import utcnow
from tests.conftest import RedisStore

FORM = "application/x-www-form-urlencoded"


def test_a_revocation_counts_in_every_process_at_once_with_redis(app: Any, redis_store: RedisStore) -> None:
    """Two revocation lists stand for two web processes. Without Redis the other process sees a
    revocation when it next re-reads the database list (REFRESH_EVERY); with Redis, at once."""
    from datetime import timedelta

    from healthhub.auth.revocation import RevocationList

    db = app.extensions["healthhub.db"]
    here, there = RevocationList(db, redis_store.url), RevocationList(db, redis_store.url)
    there_without = RevocationList(db)
    assert not there("jti-1") and not there_without("jti-1")  # both have read the (empty) list
    with db.transaction() as session:
        here.revoke(session, "jti-1", utcnow() + timedelta(minutes=5))
    assert here("jti-1") and there("jti-1")
    assert not there_without("jti-1")  # until its next read of the database list
    assert 0 < redis_store.client.ttl("healthhub:revoked:jti-1") <= 5 * 60 + 1


def backend_client(app: Any) -> dict[str, str]:
    """A new client_credentials client (``system/*.rs``): its Basic credentials header."""
    with Session(app.extensions["healthhub.db"].engine) as session, session.begin():
        new = create_client(session, name="Hospital", grant="client_credentials", scope="system/*.rs", now=utcnow())
    basic = base64.b64encode(f"{new.client_id}:{new.client_secret}".encode()).decode()
    return {"Authorization": f"Basic {basic}"}


def token_from(web: Any, creds: dict[str, str]) -> dict[str, str]:
    """An access token from the token endpoint: its Bearer header."""
    answer = web.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                      headers={"Content-Type": FORM, **creds})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return {"Authorization": f"Bearer {answer.json['access_token']}"}


def revoke_through(web: Any, creds: dict[str, str], bearer: dict[str, str]) -> None:
    token = bearer["Authorization"].removeprefix("Bearer ")
    answer = web.post("/auth/revoke", data={"token": token}, headers={"Content-Type": FORM, **creds})
    assert answer.status_code == 200, answer.get_data(as_text=True)


def test_two_apps_on_one_redis_server_refuse_a_revoked_token_at_once(
        make_app: Any, real_redis: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two apps (two web processes) on the same database and the same real redis-server: a token
    revoked through /auth/revoke of one is refused by the other at its next request. The other's
    database list is not re-read in this test (REFRESH_EVERY an hour): Redis alone tells it."""
    monkeypatch.setattr(revocation, "REFRESH_EVERY", 3600.0)
    first, second = make_app(redis_url=real_redis.url), make_app(redis_url=real_redis.url)
    one, two = first.test_client(), second.test_client()
    creds = backend_client(first)
    bearer = token_from(one, creds)
    assert two.get("/fhir/Patient", headers=bearer).status_code == 200  # the second has read the (empty) list
    revoke_through(one, creds, bearer)
    refused = two.get("/fhir/Patient", headers=bearer)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert one.get("/fhir/Patient", headers=bearer).status_code == 401
    assert real_redis.client.keys("healthhub:revoked:*")
    assert two.get("/fhir/Patient", headers=token_from(two, creds)).status_code == 200  # only that token
