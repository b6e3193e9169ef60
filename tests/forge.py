"""Hand-made JWTs that no JOSE library would sign: the attacks the hub must refuse."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any] | str) -> str:
    """HS256 keyed with ``secret`` — with a public key PEM: the algorithm-confusion attack."""
    body = claims if isinstance(claims, str) else b64(claims)
    signing_input = f"{b64({**header, 'alg': 'HS256'})}.{body}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any] | str) -> str:
    """``alg: none``."""
    body = claims if isinstance(claims, str) else b64(claims)
    return f"{b64({**header, 'alg': 'none'})}.{body}."
