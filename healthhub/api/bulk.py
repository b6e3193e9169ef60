"""``/bulk``: the status and files of Bulk Data exports (the kick-off is ``$export`` under ``/fhir``).

- ``GET /bulk/status/{job}``: 202 with ``X-Progress`` and ``Retry-After`` while the job waits or
  runs; 200 with the manifest when it is complete; 500 with an OperationOutcome when it failed.
- ``DELETE /bulk/status/{job}``: cancel it and remove its files (202).
- ``GET /bulk/files/{job}/{file}``: one NDJSON file (``requiresAccessToken: true``).

Only the client that started a job sees it (another gets 404); every request needs a valid
bearer token and is audited. https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-status-request
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, send_file
from sqlalchemy.orm import Session

from ..audit.events import record
from ..auth.tokens import AccessToken
from ..bulk import jobs
from ..bulk.models import ExportFile
from ..clock import http_date, utcnow
from ..config import Config
from ..db import Database
from ..jsonio import dumps
from ..outcome import FhirError, Issue, not_found, operation_outcome
from . import audit_hooks, throttle

bp = Blueprint("bulk", __name__, url_prefix="/bulk")
NDJSON = "application/fhir+ndjson"


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.before_request
def _authenticate() -> None:
    throttle.authenticated()


bp.after_request(audit_hooks.record_failure)


def _client() -> str:
    token: AccessToken = g.access_token
    return token.client_id


def _config() -> Config:
    config: Config = current_app.config["HEALTHHUB"]
    return config


def _db() -> Database:
    db: Database = current_app.extensions["healthhub.db"]
    return db


def _audited(session: Session) -> None:
    """Record the request in the audit trail, in the transaction that answers it."""
    if audit_hooks.enabled():
        record(session, audit_hooks.happening(200, []), utcnow(), durable=False)
        g.audited = True


@bp.get("/status/<job_id>")
def status(job_id: str) -> Response:
    config = _config()
    with _db().transaction() as session:
        job = jobs.owned(session, job_id, _client())
        files = jobs.files_of(session, job.id) if job.status == "completed" else []
        _audited(session)
        if job.status in ("accepted", "in-progress"):
            return Response(status=202, headers={"X-Progress": job.progress or job.status,
                                                 "Retry-After": str(jobs.retry_after(job))})
        if job.status == "failed":
            outcome = operation_outcome([Issue("error", "exception", f"The export failed: {job.error or 'unknown'}")])
            return Response(dumps(outcome), 500, content_type="application/fhir+json; charset=utf-8")
        body = jobs.manifest(job, files, config.base_url)
        expires = jobs.expires(job)
    headers = {"Expires": http_date(expires)} if expires else {}
    return Response(dumps(body), 200, content_type="application/json", headers=headers)


@bp.delete("/status/<job_id>")
def cancel(job_id: str) -> Response:
    with _db().transaction() as session:
        job = jobs.owned(session, job_id, _client())
        jobs.cancel(session, job, Path(_config().export_dir))
        _audited(session)
    return Response(dumps(operation_outcome([Issue("information", "informational",
                                                   f"Export {job_id} cancelled; its files are removed")])),
                    202, content_type="application/fhir+json; charset=utf-8")


@bp.get("/files/<job_id>/<name>")
def download(job_id: str, name: str) -> Response:
    with _db().transaction() as session:
        job = jobs.owned(session, job_id, _client())
        found = session.get(ExportFile, (job.id, name)) if job.status == "completed" and len(name) <= 128 else None
        if found is None:
            raise not_found(f"Export {job_id[:64]} has no file {name[:128]!r}")
        _audited(session)
        # The path is made of the job's id and the file's recorded name, never of the client's text.
        path = jobs.job_folder(Path(_config().export_dir), job.id) / found.name
    if not path.is_file():
        raise FhirError(410, [Issue("error", "not-found", f"The file {found.name} was removed (retention)")])
    return send_file(path.resolve(), mimetype=NDJSON, as_attachment=False, conditional=False, etag=False,
                     max_age=0)
