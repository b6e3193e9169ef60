"""Revoked access tokens, shared by every web process through the database.

Access tokens are verified without a database read (CONTRACT §5): each process keeps the set
of revoked, unexpired ``jti`` in memory and re-reads it at most every ``REFRESH_EVERY`` seconds
(a revocation made by this process counts at once; one made by another process within that
delay). Rows go once their token has expired anyway (:mod:`.expiry`). https://www.rfc-editor.org/rfc/rfc7009

With ``HEALTHHUB_REDIS_URL`` a revocation is also written to Redis (a key that expires with the
token) and every check asks Redis first, so a revocation counts in every process at once; when
Redis cannot be reached the check falls back to the database list above.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..clock import utcnow
from ..db import Database
from ..redis_guard import GuardedRedis, Unavailable
from .models import RevokedToken

REFRESH_EVERY = 5.0
log = logging.getLogger("healthhub.auth")


class RevocationList:
    def __init__(self, db: Database, redis_url: str = "") -> None:
        self.db = db
        self.redis = GuardedRedis(redis_url, timeout=0.5) if redis_url else None
        self._lock = threading.Lock()
        self._jtis: frozenset[str] = frozenset()
        self._local: set[str] = set()
        self._read_at = -REFRESH_EVERY

    def __call__(self, jti: str) -> bool:
        """Whether the token ``jti`` is revoked."""
        if self.redis is not None:
            try:
                if self.redis.call(lambda client: client.exists(_key(jti))):
                    return True
            except Unavailable:  # failed moments ago (logged then): the database's list answers
                pass
            except Exception:  # Redis away: the database's list still answers (within its delay)
                log.warning("revocation check: Redis unavailable; using the database's list")
        if time.monotonic() - self._read_at > REFRESH_EVERY:
            self._refresh()
        return jti in self._jtis or jti in self._local

    def revoke(self, session: Session, jti: str, expires_at: datetime) -> None:
        """Record a revocation in ``session``'s transaction (counted here at once)."""
        if expires_at <= utcnow() or not jti:
            return
        try:
            with session.begin_nested():
                session.add(RevokedToken(jti=jti, expires_at=expires_at))
        except IntegrityError:
            pass  # revoked before
        with self._lock:
            self._local.add(jti)
        if self.redis is not None:
            try:  # before the commit: a rollback leaves a token revoked that need not be — never the reverse
                self.redis.call(lambda client: client.set(_key(jti), b"1", exat=int(expires_at.timestamp()) + 1))
            except Exception:
                log.warning("revocation: Redis unavailable; other processes see it within %.0f s", REFRESH_EVERY)

    def _refresh(self) -> None:
        now = utcnow()
        with self.db.sessionmaker() as session:
            jtis = frozenset(session.scalars(select(RevokedToken.jti).where(RevokedToken.expires_at > now)))
        with self._lock:
            self._jtis = jtis
            self._local -= jtis
            self._read_at = time.monotonic()


def _key(jti: str) -> str:
    return f"healthhub:revoked:{jti}"
