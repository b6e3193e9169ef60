"""The searchset Bundle: entries, includes, links and warnings
(https://hl7.org/fhir/R4B/bundle.html#searchset)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from ..outcome import Issue, operation_outcome
from ..storage.repository import Stored
from .engine import SearchResult
from .request import SearchRequest
from .shape import select_elements, summarize

_PAGING = frozenset({"_cursor"})


def searchset(req: SearchRequest, result: SearchResult, url: str, pairs: list[tuple[str, str]],
              base: str) -> dict[str, Any]:
    """Build the Bundle; ``pairs`` are the request's parameters, kept in the links."""
    keep = [(k, v) for k, v in pairs if k not in _PAGING]
    self_pairs = keep + ([("_cursor", req.cursor)] if req.cursor else [])
    links = [{"relation": "self", "url": _link(url, self_pairs)}]
    if result.next_cursor:
        links.append({"relation": "next", "url": _link(url, [*keep, ("_cursor", result.next_cursor)])})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    entries = [_entry(s, "match", req, base) for s in result.matches]
    entries += [_entry(s, "include", req, base) for s in result.included]
    if req.warnings:
        entries.append({"resource": operation_outcome([Issue("warning", "not-supported", w) for w in req.warnings]),
                        "search": {"mode": "outcome"}})
    if entries and req.summary != "count":
        bundle["entry"] = entries
    return bundle


def _entry(stored: Stored, mode: str, req: SearchRequest, base: str) -> dict[str, Any]:
    resource = stored.content or {}
    if mode == "match":
        resource = select_elements(summarize(resource, req.summary), req.elements)
    return {"fullUrl": f"{base}/{stored.resource_type}/{stored.id}", "resource": resource, "search": {"mode": mode}}


def _link(url: str, pairs: list[tuple[str, str]]) -> str:
    return f"{url}?{urlencode(pairs)}" if pairs else url
