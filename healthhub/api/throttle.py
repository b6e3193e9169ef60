"""Rate limits on the API (``HEALTHHUB_RATE_LIMIT`` requests per minute, healthhub/ratelimit.py):
per client once its token is verified, per address for requests without a token (the token and
sign-in endpoints, discovery). Over the limit: 429 with ``Retry-After`` and an OperationOutcome
(code ``throttled``), as HAPI FHIR's and the cloud FHIR services' throttling answers.

Operator endpoints (``/healthz``, ``/readyz``, ``/metrics``) and static files are not limited.
"""
from __future__ import annotations

from flask import Flask, current_app, g, request

from ..auth.bearer import authenticate
from ..auth.service import auth_service
from ..auth.tokens import AccessToken
from ..config import Config
from ..db import Database
from ..outcome import FhirError, Issue
from ..ratelimit.counters import Limiter, make_limiter

EXEMPT = ("/healthz", "/readyz", "/metrics", "/static/")
#: Blueprints whose every endpoint verifies a bearer token (:func:`authenticated`), but these.
VERIFYING = frozenset({"fhir", "stats", "bulk", "ingest"})
PUBLIC_ENDPOINTS = frozenset({"fhir.metadata"})


def init_app(app: Flask, config: Config, db: Database) -> None:
    app.extensions["healthhub.limiter"] = make_limiter(db, config.rate_limit, config.redis_url)

    @app.before_request
    def _anonymous() -> None:
        # A request whose bearer token will be verified is counted against its client then
        # (below); every other one — no token, Basic credentials on the token endpoint, any
        # header at all on an endpoint that reads none — against its address, now.
        if not request.path.startswith(EXEMPT) and not _verified_later():
            charge(_by_address())


def _verified_later() -> bool:
    return (request.headers.get("Authorization", "").strip().lower().startswith("bearer ")
            and request.blueprint in VERIFYING and request.endpoint not in PUBLIC_ENDPOINTS)


def _by_address() -> str:
    return f"addr:{request.remote_addr or '-'}"


def charge(key: str) -> None:
    """Count this request against ``key``; 429 past the limit."""
    limiter: Limiter | None = current_app.extensions.get("healthhub.limiter")
    if limiter is None:
        return
    verdict = limiter.check(key)
    if not verdict.allowed:
        raise FhirError(429, [Issue("error", "throttled", f"More than {verdict.limit} requests in a minute; "
                                    f"retry in {verdict.retry_after} s")],
                        {"Retry-After": str(verdict.retry_after)})


def authenticated() -> AccessToken:
    """The request's verified bearer token (else 401), counted against its client's limit."""
    try:
        token = authenticate(request.headers.get("Authorization"), auth_service().tokens)
    except FhirError:
        charge(_by_address())  # guessing tokens costs the guesser's address, not a client's budget
        raise
    g.access_token = token
    charge(f"client:{token.client_id}")
    return token
