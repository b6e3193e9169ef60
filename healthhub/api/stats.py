"""``/stats/{type}``: counts of a FHIR search's matches grouped by dimensions, small cells
suppressed (CONTRACT §7). The view parses and checks; ``healthhub/stats`` counts and publishes.

Needs the ``stats.read`` scope — the public-health officials' scope, which reads no resource:
nothing here returns anything but dimension values and counts. Every query is audited with its
query string, like a search.
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, g, request

from ..audit.events import record
from ..auth.tokens import AccessToken
from ..clock import utcnow
from ..config import Config
from ..db import Database
from ..jsonio import dumps
from ..outcome import FhirError, Issue, forbidden
from ..resources import is_resource_type
from ..search.parser import parse
from ..search.registry import default_registry
from ..stats.dimensions import parse_group_by
from ..stats.query import Aggregation
from ..stats.report import as_csv, publish
from . import audit_hooks, http, throttle

bp = Blueprint("stats", __name__, url_prefix="/stats")
SCOPE = "stats.read"
#: Query parameters of the statistics themselves; every other one is a search parameter.
OWN_PARAMS = frozenset({"_group-by", "_count-by", "_code-system", "_format"})
CSV_TYPES = ("text/csv", "application/csv")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.before_request
def _authenticate() -> None:
    throttle.authenticated()
    token: AccessToken = g.access_token
    if not token.grant.has(SCOPE):
        raise forbidden(f"Aggregate statistics need the {SCOPE} scope")


bp.after_request(audit_hooks.record_failure)


@bp.get("/<rtype>")
def counts(rtype: str) -> Response:
    """``GET /stats/{type}?{search}&_group-by=d1[,d2…][&_count-by=patient][&_code-system=URI]``."""
    if not is_resource_type(rtype):
        raise FhirError(404, [Issue("error", "not-supported", f"Unknown resource type {rtype!r}")])
    config: Config = current_app.config["HEALTHHUB"]
    pairs = list(request.args.items(multi=True))
    dims = parse_group_by([v for k, v in pairs if k == "_group-by"])
    count_by = ([v for k, v in pairs if k == "_count-by"] or ["resource"])[-1]
    code_system = ([v for k, v in pairs if k == "_code-system"] or [""])[-1]
    registry = default_registry()
    req = parse(rtype, [(k, v) for k, v in pairs if k not in OWN_PARAMS], registry,
                strict=http.prefer_handling() == "strict", base_url=config.fhir_base)
    db: Database = current_app.extensions["healthhub.db"]
    # On the read replica when there is one (then audited on the primary after the answer, by
    # audit_hooks.record_failure); else counted and audited in one transaction.
    with db.read_transaction() as session:
        found = Aggregation(session, registry, utcnow(), config.fhir_base).count(
            req, dims, count_by, code_system or None)
        if audit_hooks.enabled() and not db.has_replica:
            record(session, audit_hooks.happening(200, []), utcnow(), durable=False)
            g.audited = True
    document = publish(found, config.min_cell)
    if _wants_csv():
        return Response(as_csv(document), 200, content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="stats-{rtype}.csv"'})
    return Response(dumps(document), 200, content_type="application/json")


def _wants_csv() -> bool:
    fmt = (request.args.get("_format") or "").split(";")[0].strip().lower()
    if fmt:
        return fmt in ("csv", *CSV_TYPES)
    best = request.accept_mimetypes.best_match(["application/json", *CSV_TYPES])
    return best in CSV_TYPES
