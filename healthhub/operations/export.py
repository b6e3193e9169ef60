"""``$export`` kick-off (FHIR Bulk Data Access 2.0): system level, ``Patient`` (type level) and
``Group/{id}`` (instance level). The request is checked and recorded as a job; a worker runs it
(``healthhub/bulk``); the answer is 202 with the status URL in ``Content-Location``.
https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-kick-off-request
"""
from __future__ import annotations

from typing import Any

from ..bulk import jobs
from ..clock import utcnow
from ..outcome import information, not_found
from ..search.registry import default_registry
from . import OperationCall, operation


@operation("export", {"GET"})
def export(call: OperationCall) -> tuple[int, dict[str, Any], dict[str, str]]:
    if call.level == "type" and call.resource_type != "Patient":
        raise not_found("$export at the type level is Patient/$export")
    if call.level == "instance" and call.resource_type != "Group":
        raise not_found("$export at the instance level is Group/{id}/$export")
    level = {"system": "system", "type": "patient", "instance": "group"}[call.level]
    access = call.repo.ctx.access
    if level == "group":
        assert call.resource_id is not None
        call.repo.read("Group", call.resource_id)  # 404/410, or 403 when the token may not read it
    kickoff = jobs.check_kickoff(level, call.resource_id, call.query, call.headers, access, default_registry())
    grant = getattr(access, "grant", None)
    job = jobs.create(call.repo.session, kickoff, call.url, call.client_id or "system",
                      grant.text if grant is not None else "system/*.rs", getattr(grant, "patient", None), utcnow())
    base = call.base_url[:-len("/fhir")] if call.base_url.endswith("/fhir") else call.base_url
    status_url = f"{base}/bulk/status/{job.id}"
    return 202, information(f"Export {job.id} accepted: {', '.join(kickoff.types[:10])}"
                            f"{'…' if len(kickoff.types) > 10 else ''}; poll {status_url}"), {
        "Content-Location": status_url}
