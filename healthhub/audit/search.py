"""Reading the audit trail as FHIR: ``GET /fhir/AuditEvent/{id}`` and ``GET /fhir/AuditEvent?…``.

The trail lives in its own hash-chained table (:mod:`.chain`), not in the resource store, so it
has its own small search: ``date`` (with ``ge gt le lt eq`` prefixes), ``agent`` (a client id or
user name), ``entity`` (``Type/id``), ``subtype``, ``action``, ``outcome``, ``_count``; newest
first, keyset-paged. Unknown parameters are refused (an audit query that silently ignored a
filter would mislead its reader). Nothing can write it through the API.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from ..outcome import invalid, not_found
from ..search.values import BadValue, date_range
from .events import as_resource
from .models import AuditEntity
from .models import AuditRecord as A

DEFAULT_COUNT, MAX_COUNT = 50, 1000
PARAMS = frozenset({"date", "agent", "entity", "subtype", "action", "outcome", "_count", "_cursor", "_format",
                    "_pretty"})


def read(session: Session, audit_id: str) -> dict[str, Any]:
    record = session.get(A, int(audit_id)) if audit_id.isdigit() and len(audit_id) < 19 else None
    if record is None:
        raise not_found(f"AuditEvent/{audit_id} is not known")
    return as_resource(record.seq, record.content)


def search(session: Session, pairs: list[tuple[str, str]], url: str) -> dict[str, Any]:
    where: list[ColumnElement[bool]] = []
    count, cursor = DEFAULT_COUNT, None
    for name, value in pairs:
        if name not in PARAMS:
            raise invalid(f"AuditEvent search supports {', '.join(sorted(PARAMS - {'_format', '_pretty'}))}; "
                          f"not {name!r}", (name,))
        if name == "_count":
            if not value.isdigit():
                raise invalid("_count must be a non-negative integer", ("_count",))
            count = min(int(value), MAX_COUNT)
        elif name == "_cursor":
            if not value.isdigit() or len(value) > 18:
                raise invalid("_cursor must come from a next link", ("_cursor",))
            cursor = int(value)
        elif name in ("_format", "_pretty"):
            continue
        else:
            where.append(or_(*(_condition(name, v) for v in value.split(","))))
    total = session.scalar(select(func.count()).select_from(A).where(*where)) or 0
    stmt = select(A.seq, A.content).where(*where)
    if cursor is not None:
        stmt = stmt.where(A.seq < cursor)
    rows = session.execute(stmt.order_by(A.seq.desc()).limit(count + 1)).all()
    page = rows[:count]
    keep = [(k, v) for k, v in pairs if k != "_cursor"]
    links = [{"relation": "self", "url": f"{url}?{urlencode(pairs)}" if pairs else url}]
    if len(rows) > count and page:
        links.append({"relation": "next", "url": f"{url}?{urlencode([*keep, ('_cursor', str(page[-1][0]))])}"})
    base = url.rsplit("/", 1)[0]
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
            "entry": [{"fullUrl": f"{base}/AuditEvent/{seq}", "resource": as_resource(seq, content),
                       "search": {"mode": "match"}} for seq, content in page]}


def _condition(name: str, value: str) -> ColumnElement[bool]:
    if name == "date":
        prefix, text = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", value)
        try:
            low, high = date_range(text)
        except BadValue:
            raise invalid(f"date must be a FHIR date or instant, optionally prefixed ge gt le lt eq; not {value!r}",
                          ("date",)) from None
        return {"ge": A.recorded >= low, "gt": A.recorded > high, "le": A.recorded <= high,
                "lt": A.recorded < low}.get(prefix, A.recorded.between(low, high))
    if name == "agent":
        return or_(A.client_id == value, A.username == value)
    if name == "entity":
        return or_(A.entity == value, A.patient == value,
                   A.seq.in_(select(AuditEntity.seq).where(AuditEntity.reference == value)))
    if name == "subtype":
        return A.subtype == value.rsplit("|", 1)[-1]
    if name == "action":
        return A.action == value
    return A.outcome == value.rsplit("|", 1)[-1]
