"""Revoked access tokens, shared by every web process through the database.

Access tokens are verified without a database read (CONTRACT §5): each process keeps the set
of revoked, unexpired ``jti`` in memory and re-reads it at most every ``REFRESH_EVERY`` seconds
(a revocation made by this process counts at once; one made by another process within that
delay). Rows go once their token has expired anyway (:mod:`.expiry`). https://www.rfc-editor.org/rfc/rfc7009
"""
from __future__ import annotations

import threading
import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..clock import utcnow
from ..db import Database
from .models import RevokedToken

REFRESH_EVERY = 5.0


class RevocationList:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._jtis: frozenset[str] = frozenset()
        self._local: set[str] = set()
        self._read_at = -REFRESH_EVERY

    def __call__(self, jti: str) -> bool:
        """Whether the token ``jti`` is revoked."""
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

    def _refresh(self) -> None:
        now = utcnow()
        with self.db.sessionmaker() as session:
            jtis = frozenset(session.scalars(select(RevokedToken.jti).where(RevokedToken.expires_at > now)))
        with self._lock:
            self._jtis = jtis
            self._local -= jtis
            self._read_at = time.monotonic()
