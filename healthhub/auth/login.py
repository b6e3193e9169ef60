"""Password sign-in at the authorization page, throttled per user and per address.

Failed attempts are rows (shared by every web process): after ``MAX_PER_USER`` failures for a
user name, or ``MAX_PER_ADDRESS`` from one address, within ``WINDOW``, sign-in is refused
without looking at the password until the window has passed. Passwords are checked against
werkzeug's salted scrypt hashes; an unknown user costs the same hash check as a known one.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from ..clock import utcnow
from .models import LoginFailure, User

MAX_PER_USER = 5
MAX_PER_ADDRESS = 20
WINDOW = timedelta(minutes=15)
_DUMMY_HASH = generate_password_hash("not a password of anyone")


@dataclass
class LoginRefused(Exception):
    message: str
    status: int


def sign_in(session: Session, username: str, password: str, address: str) -> User:
    """The user, or LoginRefused (401 wrong credentials, 429 throttled). The caller commits
    the session even when refused, so the failure counts."""
    now = utcnow()
    username = username.strip()[:128]
    address = address[:64]
    since = now - WINDOW
    by_user = session.scalar(select(func.count()).select_from(LoginFailure).where(
        LoginFailure.username == username, LoginFailure.at > since)) or 0
    by_address = session.scalar(select(func.count()).select_from(LoginFailure).where(
        LoginFailure.address == address, LoginFailure.at > since)) or 0
    if by_user >= MAX_PER_USER or by_address >= MAX_PER_ADDRESS:
        raise LoginRefused(f"Too many failed sign-ins. Wait {WINDOW.seconds // 60} minutes and try again.", 429)
    user = session.get(User, username) if username else None
    ok = check_password_hash(user.password_hash if user is not None else _DUMMY_HASH, password)
    if user is None or user.disabled or not ok:
        session.add(LoginFailure(username=username, address=address, at=now))
        raise LoginRefused("The user name or password is wrong.", 401)
    session.execute(delete(LoginFailure).where(LoginFailure.username == username))
    return user
