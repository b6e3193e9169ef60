"""The FHIR API's side of OAuth: the bearer token of a request (RFC 6750), verified from its
signature alone, and the 401 that answers a missing or unusable one."""
from __future__ import annotations

from ..outcome import FhirError, Issue
from .tokens import AccessToken, InvalidToken, TokenService

REALM = "healthhub"


def unauthorized(reason: str) -> FhirError:
    """401 with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 §3). The
    description is printable ASCII, as RFC 6750 §3 requires (gunicorn refuses anything else
    in a header: a 500 instead of the 401)."""
    description = "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "." for c in reason)
    return FhirError(401, [Issue("error", "login", reason)], {
        "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'})


def authenticate(header: str | None, tokens: TokenService) -> AccessToken:
    """The verified token of an ``Authorization: Bearer …`` header, or a 401."""
    if not header:
        raise unauthorized("An access token is required (Authorization: Bearer <token>); see "
                           "/.well-known/smart-configuration")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("The Authorization header must be 'Bearer <access token>'")
    try:
        return tokens.verify(value.strip())
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None
