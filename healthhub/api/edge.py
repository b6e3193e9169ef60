"""What every request gets, whatever its endpoint: a request id, security headers, one access-log
record and its metrics.

- ``X-Request-ID``: the load balancer's, when it sent a sane one, else a new one; echoed in the
  response and carried by every log record of the request (healthhub/logs.py).
- Security headers (OWASP Secure Headers, https://owasp.org/www-project-secure-headers/):
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` everywhere; no framing
  (``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``); HTML pages get a strict
  Content-Security-Policy (this origin's scripts and styles only, nothing inline) unless the view
  set its own, API answers a ``default-src 'none'`` one (OWASP REST Security cheat sheet);
  ``Strict-Transport-Security`` when the hub is served over https.
- The access log names the route, not the path or query (no patient data in logs).
"""
from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from .. import logs
from ..config import Config
from ..metrics import LATENCY, REQUESTS

access_log = logging.getLogger("healthhub.access")

#: HTML pages: this origin's scripts and styles, no inline code, no plug-ins, not framed.
#: No ``form-action``: Chrome applies it to the redirect that follows the consent form's POST,
#: which goes to the app's own redirect URI on another origin.
HTML_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")
#: Everything else is data: nothing in it may run or load anything if a browser renders it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def init_app(app: Flask, config: Config) -> None:
    hsts = config.base_url.startswith("https://")
    # Cookies (none is set today; Flask's session would be the one) stay on this origin and off scripts.
    app.config.update(SESSION_COOKIE_SECURE=hsts, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        g.request_id_token = logs.request_id.set(logs.new_request_id(request.headers.get("X-Request-ID")))

    @app.after_request
    def _finish(response: Response) -> Response:
        headers = response.headers
        headers["X-Request-ID"] = logs.request_id.get()
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Content-Security-Policy", HTML_CSP if response.mimetype == "text/html" else API_CSP)
        if hsts:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        _record(response)
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            logs.request_id.reset(token)


def _record(response: Response) -> None:
    started = g.get("request_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
    REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    LATENCY.labels(request.method, route).observe(seconds)
    token = g.get("access_token")
    access_log.info("%s %s %s", request.method, route, response.status_code, extra={
        "method": request.method, "route": route, "status": response.status_code,
        "duration_ms": round(seconds * 1000, 1), "client_id": getattr(token, "client_id", None),
        "peer": request.remote_addr, "bytes": response.calculate_content_length()})
