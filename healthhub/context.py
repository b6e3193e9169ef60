"""Who is asking: passed explicitly from the edge to everything below the views."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

#: SMART v2 permission letters (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
PERMISSION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


class AccessPolicy(Protocol):
    """What the caller's token allows (:class:`healthhub.auth.access.Access`)."""

    def restriction(self, resource_type: str, permission: str) -> Any: ...

    def unrestricted(self, resource_type: str, permission: str) -> bool: ...

    def visible(self, session: Session, resource_type: str, ids: Iterable[str], permission: str) -> set[str]: ...

    def outside(self, session: Session, resource_type: str, ids: Iterable[str], permission: str) -> set[str]: ...

    def filter(self, session: Session, items: Sequence[Any], permission: str = "r") -> list[Any]: ...

    def readable_types(self, candidates: Iterable[str]) -> list[str]: ...


@dataclass(frozen=True)
class RequestContext:
    """The caller of one interaction.

    ``actor`` names the client or user; ``source`` ends up in ``meta.source`` of what the
    caller writes when the resource has none; ``organization`` (the URL of the Organization a
    hospital system is bound to) always does. ``access`` confines what the caller may read and
    write (None: the hub itself — CLI, demo loading — which may do everything).
    """

    actor: str = "anonymous"
    source: str | None = None
    organization: str | None = None
    access: AccessPolicy | None = None


SYSTEM = RequestContext(actor="system")
