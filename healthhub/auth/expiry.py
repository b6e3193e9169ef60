"""Dropping the authorization server's rows that can no longer matter, so its tables stay the
size of what is live: revoked tokens and client-assertion ``jti`` past their expiry, refresh
tokens past theirs, authorization codes an hour after theirs (a replay within the hour still
revokes what the code gave: its access token lives an hour), sign-in failures outside the
throttling window. Run by the token endpoint at most once a minute per process."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .login import WINDOW
from .models import AssertionJti, AuthorizationCode, LoginFailure, RefreshToken, RevokedToken
from .tokens import LIFETIME

EVERY = 60.0
_lock = threading.Lock()
_last = [-EVERY]


def purge(session: Session, now: datetime) -> None:
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    session.execute(delete(AssertionJti).where(AssertionJti.expires_at < now))
    session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))
    session.execute(delete(AuthorizationCode).where(AuthorizationCode.expires_at < now - timedelta(seconds=LIFETIME)))
    session.execute(delete(LoginFailure).where(LoginFailure.at < now - WINDOW))


def purge_now_and_then(session: Session, now: datetime) -> None:
    """:func:`purge`, unless this process did it less than ``EVERY`` seconds ago."""
    with _lock:
        if time.monotonic() - _last[0] < EVERY:
            return
        _last[0] = time.monotonic()
    purge(session, now)
