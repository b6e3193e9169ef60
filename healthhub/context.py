"""Who is asking: passed explicitly from the edge to everything below the views."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    """The caller of one interaction.

    ``actor`` names the client or user; ``source`` ends up in ``meta.source`` of what the
    caller writes when set (a hospital's sender URI). Scopes and patient context join here
    with SMART authorization.
    """

    actor: str = "anonymous"
    source: str | None = None


SYSTEM = RequestContext(actor="system")
