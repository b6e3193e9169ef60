"""Token revocations shared by every web process: through the database (within REFRESH_EVERY
seconds), or at once through Redis when HEALTHHUB_REDIS_URL is set."""
from __future__ import annotations

from typing import Any

import fakeredis
import pytest


def test_a_revocation_counts_in_every_process_at_once_with_redis(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two revocation lists stand for two web processes. Without Redis the other process sees a
    revocation when it next re-reads the database list (REFRESH_EVERY); with Redis, at once."""
    from datetime import timedelta

    from healthhub.auth.revocation import RevocationList
    from healthhub.clock import utcnow

    server = fakeredis.FakeServer()
    monkeypatch.setattr("redis.Redis.from_url", lambda *_a, **_k: fakeredis.FakeRedis(server=server))
    db = app.extensions["healthhub.db"]
    here, there, there_without = RevocationList(db, "redis://x"), RevocationList(db, "redis://x"), RevocationList(db)
    assert not there("jti-1") and not there_without("jti-1")  # both have read the (empty) list
    with db.transaction() as session:
        here.revoke(session, "jti-1", utcnow() + timedelta(minutes=5))
    assert here("jti-1") and there("jti-1")
    assert not there_without("jti-1")  # until its next read of the database list
    assert server.connected and fakeredis.FakeRedis(server=server).ttl("healthhub:revoked:jti-1") > 0
