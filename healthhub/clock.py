"""Server time in the forms FHIR and HTTP need."""
from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime


def utcnow() -> datetime:
    """Now, in UTC, truncated to milliseconds (the precision written into meta.lastUpdated)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def aware(value: datetime) -> datetime:
    """Attach UTC to a naive value read back from SQLite."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def instant(value: datetime) -> str:
    """FHIR ``instant``: ``2026-11-26T10:00:00.123+00:00``."""
    return aware(value).astimezone(UTC).isoformat(timespec="milliseconds")


def http_date(value: datetime) -> str:
    """RFC 9110 HTTP-date for ``Last-Modified``."""
    return format_datetime(aware(value).astimezone(UTC), usegmt=True)
