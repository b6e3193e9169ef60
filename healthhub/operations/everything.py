"""``Patient/{id}/$everything`` (https://hl7.org/fhir/R4B/patient-operation-everything.html).

The patient is the person: the records of every Patient the master patient index links to it
(other hospitals' records, merged ones) are part of the answer, those Patients included.

One SELECT for the page and one COUNT, whatever the size of the record; paged by keyset on
(resource_type, id) so pages stay correct while the record grows.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, func, or_, select, tuple_

from .. import resources
from ..clock import aware
from ..context import AccessPolicy
from ..outcome import invalid
from ..search import cursor
from ..search.compartment import everything as compartment_everything
from ..storage import models
from ..storage.repository import ordered
from . import OperationCall, operation

R = models.Resource
DEFAULT_COUNT, MAX_COUNT = 20, 1000


@operation("everything", methods={"GET", "POST"})
def everything(call: OperationCall) -> tuple[int, dict[str, Any]]:
    assert call.resource_id is not None
    call.repo.read("Patient", call.resource_id)  # 404 / 410 for an unknown or deleted patient
    args = _arguments(call)
    count = _count(args.get("_count"))
    since = _since(args.get("_since"))
    types = _types(args.get("_type"))
    access = call.repo.ctx.access
    if access is not None:
        types = tuple(access.readable_types(types if types is not None else resources.resource_types()))
    where: list[ColumnElement[bool]] = [
        tuple_(R.resource_type, R.id).in_(compartment_everything(call.resource_id, types, linked=True)),
        R.deleted.is_(False)]
    if access is not None:
        where.append(_visible(access, types or ()))
    if since is not None:
        where.append(R.last_updated >= since)
    session = call.repo.session
    total = session.scalar(select(func.count()).select_from(R).where(*where)) or 0
    stmt = select(R).where(*where)
    cursor = args.get("_cursor")
    if cursor:
        stmt = stmt.where(tuple_(R.resource_type, R.id) > _decode(cursor))
    rows = list(session.scalars(stmt.order_by(R.resource_type, R.id).limit(count + 1)))
    page = rows[:count]
    url = f"{call.base_url}/Patient/{call.resource_id}/$everything"
    keep = [(k, v) for k, v in args.items() if k in ("_since", "_type") and v] + [("_count", str(count))]
    links = [{"relation": "self", "url": f"{url}?{urlencode(keep + ([('_cursor', cursor)] if cursor else []))}"}]
    if len(rows) > count and page:
        links.append({"relation": "next", "url": f"{url}?{urlencode(keep + [('_cursor', _encode(page[-1]))])}"})
    return 200, {
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "entry": [{"fullUrl": f"{call.base_url}/{r.resource_type}/{r.id}", "resource": ordered(r.content),
                   "search": {"mode": "match"}} for r in page],
    }


def _visible(access: AccessPolicy, types: tuple[str, ...]) -> ColumnElement[bool]:
    """The rows of ``types`` the token may read: whole types where a scope allows every resource,
    the visible ids (compartment, granular query) elsewhere."""
    whole: list[str] = []
    confined: list[ColumnElement[bool]] = []
    for rtype in types:
        sel = access.restriction(rtype, "r")
        if sel is None:
            whole.append(rtype)
        else:
            confined.append(and_(R.resource_type == rtype, R.id.in_(sel)))
    return or_(R.resource_type.in_(whole), *confined)


def _arguments(call: OperationCall) -> dict[str, str]:
    """Query parameters, or the parts of a POSTed Parameters resource."""
    args = {k: v[-1] for k, v in call.query.items() if v}
    body = call.body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for part in body.get("parameter") or []:
            if isinstance(part, dict) and isinstance(part.get("name"), str):
                value = next((v for k, v in part.items() if k.startswith("value")), None)
                if value is not None:
                    args[part["name"]] = str(value)
    return args


def _count(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_COUNT
    if not raw.isdigit():
        raise invalid(f"_count must be a non-negative integer, not {raw[:40]!r}", ("_count",))
    return min(int(raw), MAX_COUNT) or DEFAULT_COUNT


def _since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return aware(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise invalid(f"_since must be an instant such as 2024-01-31T12:00:00Z, not {raw[:40]!r}",
                      ("_since",)) from None


def _types(raw: str | None) -> tuple[str, ...] | None:
    if not raw:
        return None
    types = tuple(t.strip() for t in raw.split(",") if t.strip())
    unknown = [t for t in types if not resources.is_resource_type(t)]
    if unknown:
        raise invalid(f"_type names unknown resource types: {', '.join(unknown)[:200]}", ("_type",))
    return types


def _encode(row: models.Resource) -> str:
    return cursor.encode([row.resource_type, row.id])


def _decode(token: str) -> tuple[str, str]:
    resource_type, resource_id = cursor.decode(token, 2)
    if not isinstance(resource_type, str) or not isinstance(resource_id, str):
        raise invalid("_cursor is not a page token from this operation's links", ("_cursor",))
    return resource_type, resource_id
