"""SMART on FHIR scopes: parsing, and what a set of granted scopes allows.

Resource scopes are ``<context>/<type>.<permissions>[?<query>]`` (SMART App Launch 2.x,
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

- context: ``patient`` (confined to the token's patient compartment), ``user`` (what the user
  may see: every record, the hub has no per-user record lists) or ``system`` (a backend);
- type: a resource type or ``*``;
- permissions: v2 ``c r u d s`` in that order (any non-empty subsequence), or the v1 spellings
  ``read`` (= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``);
- query (v2 "granular" scopes): FHIR search parameters the allowed resources must match, e.g.
  ``patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory``.

Granted scopes combine by union (least privilege: nothing beyond what one of them allows).
Other scopes (``openid``, ``fhirUser``, ``launch/patient``, ``offline_access``, ``stats.read``…)
carry no resource permission and are kept as they are.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .. import resources

CONTEXTS = ("patient", "user", "system")
PERMISSIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(?:\?(.*))?$")
#: Scopes without a resource permission that the hub knows (others are refused at the token
#: endpoint as ``invalid_scope``).
IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                             "offline_access", "online_access", "stats.read"})


class ScopeError(ValueError):
    """A scope string that is not a valid SMART scope."""


@dataclass(frozen=True)
class ResourceScope:
    """One resource scope: context, type (``*`` for all), permissions, optional query."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    query: tuple[tuple[str, str], ...] = ()
    text: str = ""

    def covers(self, resource_type: str, permission: str) -> bool:
        return permission in self.permissions and self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> ResourceScope | str:
    """A ResourceScope, or the scope itself when it is an identity/launch scope."""
    if text in IDENTITY_SCOPES:
        return text
    m = _RESOURCE_SCOPE.match(text)
    if not m:
        raise ScopeError(f"{text!r} is not a SMART scope")
    context, rtype, perms, query = m.groups()
    if rtype != "*" and not resources.is_resource_type(rtype):
        raise ScopeError(f"{text!r} names no FHIR R4B resource type")
    if perms in _V1:
        letters = _V1[perms]
    elif perms and _in_order(perms):
        letters = perms
    else:
        raise ScopeError(f"{text!r}: permissions are c, r, u, d, s in that order, or read, write, *")
    pairs: tuple[tuple[str, str], ...] = ()
    if query is not None:
        if perms in _V1:
            raise ScopeError(f"{text!r}: a query needs v2 permissions (cruds)")
        pairs = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=True)) if query else ()
        if not pairs:
            raise ScopeError(f"{text!r}: empty query")
    return ResourceScope(context, rtype, frozenset(letters), pairs, text)


def _in_order(perms: str) -> bool:
    """``perms`` is a non-empty subsequence of ``cruds`` without repeats."""
    pos = -1
    for ch in perms:
        i = PERMISSIONS.find(ch)
        if i <= pos:
            return False
        pos = i
    return True


@dataclass(frozen=True)
class Grant:
    """What a token may do: its resource scopes, other scopes, and its patient context."""

    resource_scopes: tuple[ResourceScope, ...]
    other: frozenset[str]
    patient: str | None = None

    @classmethod
    def parse(cls, scope: str | Iterable[str], patient: str | None = None) -> Grant:
        """Parse a space-separated scope string (or its parts); raises ScopeError."""
        parts = scope.split() if isinstance(scope, str) else list(scope)
        found: list[ResourceScope] = []
        other: set[str] = set()
        for part in parts:
            parsed = parse_scope(part)
            if isinstance(parsed, ResourceScope):
                found.append(parsed)
            else:
                other.add(parsed)
        return cls(tuple(found), frozenset(other), patient)

    @property
    def text(self) -> str:
        return " ".join([s.text for s in self.resource_scopes] + sorted(self.other))

    def has(self, scope: str) -> bool:
        return scope in self.other

    def rules(self, resource_type: str, permission: str) -> list[ResourceScope]:
        """The scopes that allow ``permission`` on ``resource_type`` (empty: refused)."""
        return [s for s in self.resource_scopes if s.covers(resource_type, permission)]

    def allows(self, resource_type: str, permission: str) -> bool:
        return bool(self.rules(resource_type, permission))

    def narrow(self, requested: Grant) -> Grant:
        """The requested scopes that this grant covers (a client asks for at most what it is
        registered for): a resource scope is kept when one scope of this grant allows every
        permission of it on its type, in a context at least as wide, without a query or with
        the same query."""
        kept = [s for s in requested.resource_scopes if self._covers_scope(s)]
        return Grant(tuple(kept), requested.other & self.other, requested.patient)

    def _covers_scope(self, wanted: ResourceScope) -> bool:
        for mine in self.resource_scopes:
            if mine.resource_type not in ("*", wanted.resource_type):
                continue
            if not wanted.permissions <= mine.permissions:
                continue
            if CONTEXTS.index(mine.context) < CONTEXTS.index(wanted.context):
                # patient < user < system: a registration for user/ scopes covers patient/ ones.
                continue
            if mine.query and mine.query != wanted.query:
                continue
            return True
        return False
