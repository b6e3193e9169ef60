"""Discovery documents: SMART's ``.well-known/smart-configuration``
(https://hl7.org/fhir/smart-app-launch/conformance.html) and OpenID Connect's
``.well-known/openid-configuration`` (https://openid.net/specs/openid-connect-discovery-1_0.html)."""
from __future__ import annotations

from typing import Any

from .keys import ALG
from .server import ASSERTION_ALGS

SCOPES_SUPPORTED = [
    "openid", "fhirUser", "launch/patient", "offline_access", "online_access", "stats.read",
    "patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs", "system/*.cruds", "system/*.rs",
    "patient/*.read", "patient/*.write", "user/*.read", "user/*.write", "system/*.read", "system/*.write",
]
GRANT_TYPES = ["authorization_code", "client_credentials", "refresh_token"]
AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "none"]
#: https://hl7.org/fhir/smart-app-launch/conformance.html#capabilities
CAPABILITIES = [
    "launch-standalone", "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
    "context-standalone-patient", "context-passthrough-banner",
    "permission-offline", "permission-online", "permission-patient", "permission-user", "permission-v1",
    "permission-v2", "sso-openid-connect",
]


def endpoints(base_url: str) -> dict[str, str]:
    return {
        "issuer": base_url,
        "jwks_uri": f"{base_url}/auth/jwks",
        "authorization_endpoint": f"{base_url}/auth/authorize",
        "token_endpoint": f"{base_url}/auth/token",
        "introspection_endpoint": f"{base_url}/auth/introspect",
        "revocation_endpoint": f"{base_url}/auth/revoke",
    }


def smart_configuration(base_url: str) -> dict[str, Any]:
    return {
        **endpoints(base_url),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "grant_types_supported": GRANT_TYPES,
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "capabilities": CAPABILITIES,
        "code_challenge_methods_supported": ["S256"],
    }


def openid_configuration(base_url: str) -> dict[str, Any]:
    return {
        **endpoints(base_url),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser", "name"],
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "code_challenge_methods_supported": ["S256"],
    }
