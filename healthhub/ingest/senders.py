"""Registered sending hospitals: how each one's data is read (``healthhub sender create``).

A sender is known by its hospital code — HL7 MSH-4 (the sending facility's namespace id) and
the CSV ``hospital_code``. Its registration says which Organization it is (``meta.source`` and
the Provenance agent of what it sends), which time zone its unzoned timestamps are in, which
identifier systems its assigning authorities stand for, and which OAuth client may send for it
over HTTP. Data from an unregistered code is refused (and archived, for replay once it is
registered): a national hub does not file records under a name nobody vouched for.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Sender
from .normalize import SenderProfile


class SenderError(ValueError):
    """A registration that cannot be made, or a sender that is not allowed to send."""


def profile(row: Sender) -> SenderProfile:
    """The normalization profile of a registered sender."""
    return SenderProfile(code=row.code, organization=row.organization, timezone=row.timezone,
                         identifier_systems=dict(row.identifier_systems or {}),
                         code_systems=dict(row.code_systems or {}))


def find(session: Session, code: str) -> Sender | None:
    """The active sender with this hospital code (exact, or case-insensitively unique)."""
    row = session.get(Sender, code)
    if row is None:
        matches = list(session.scalars(select(Sender).where(Sender.code.ilike(code)).limit(2))) if code else []
        row = matches[0] if len(matches) == 1 else None
    return row if row is not None and not row.disabled else None


def for_client(session: Session, client_id: str) -> Sender | None:
    """The active sender an OAuth client sends for."""
    row = session.scalars(select(Sender).where(Sender.client_id == client_id)).first()
    return row if row is not None and not row.disabled else None


def create(session: Session, code: str, name: str, now: datetime, *, organization: str | None = None,
           timezone: str = "UTC", identifier_systems: Mapping[str, str] | None = None,
           code_systems: Mapping[str, str] | None = None, client_id: str | None = None) -> Sender:
    """Register a sender (SenderError on a bad or taken code, zone or client)."""
    if not code or len(code) > 64 or code != code.strip() or not code.isprintable() or any(c in code for c in "|^~\\&"):
        raise SenderError(f"the hospital code must be 1-64 printable characters without HL7 separators or "
                          f"surrounding spaces, not {code!r}")
    if session.get(Sender, code) is not None:
        raise SenderError(f"a sender with code {code!r} is already registered")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SenderError(f"unknown time zone {timezone!r} (use an IANA name such as Asia/Bangkok)") from None
    if organization is not None and not organization.startswith("Organization/"):
        raise SenderError(f"--organization must be Organization/<id>, not {organization!r}")
    if client_id is not None and for_client(session, client_id) is not None:
        raise SenderError(f"client {client_id!r} already sends for another hospital")
    for name_, uri in {**(identifier_systems or {}), **(code_systems or {})}.items():
        if not name_ or not uri or ":" not in uri:
            raise SenderError(f"{name_!r}={uri!r}: a system must be an absolute URI (http…, urn:…)")
    row = Sender(code=code, name=name, organization=organization, timezone=timezone,
                 identifier_systems=dict(identifier_systems or {}), code_systems=dict(code_systems or {}),
                 client_id=client_id, created_at=now, disabled=False)
    session.add(row)
    session.flush()
    return row


def all_senders(session: Session) -> list[Sender]:
    return list(session.scalars(select(Sender).order_by(Sender.code)))
