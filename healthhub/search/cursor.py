"""Opaque page tokens: the sort values of a page's last row, for keyset paging."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from .. import jsonio
from ..outcome import invalid


def encode(values: list[Any]) -> str:
    """URL-safe token for JSON-able ``values``."""
    return base64.urlsafe_b64encode(jsonio.dumps(values)).decode().rstrip("=")


def decode(token: str, length: int) -> list[Any]:
    """The values of a token made by :func:`encode`; a 400 for anything else."""
    try:
        values = jsonio.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        values = None
    if not isinstance(values, list) or len(values) != length:
        raise invalid("_cursor is not a page token from this search's links", ("_cursor",))
    return values
