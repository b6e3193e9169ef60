"""Tokens for the benchmark: every FHIR request needs one (issue 4). The harness and the servers
it starts share one signing key file; the harness signs a ``system/*.cruds`` token per server
base URL (its ``iss``/``aud``), as the hub's token endpoint would."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from healthhub.auth.keys import KeyRing
from healthhub.auth.tokens import TokenService

#: The key of every hub this harness starts (removed when the harness ends).
KEY_FILE = Path(tempfile.gettempdir()) / f"healthhub-bench-{os.getpid()}" / "signing-key.pem"
SCOPE = "system/*.cruds"


def bearer(base_url: str, scope: str = SCOPE, client_id: str = "bench") -> str:
    """``Bearer …`` for the hub at ``base_url`` (``http://host:port``), valid for 12 hours."""
    service = TokenService(KeyRing(KEY_FILE), issuer=base_url, audience=f"{base_url}/fhir")
    return "Bearer " + service.issue(client_id=client_id, subject=client_id, scope=scope, lifetime=12 * 3600)


def cleanup() -> None:
    for path in sorted(KEY_FILE.parent.glob("**/*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    if KEY_FILE.parent.exists():
        KEY_FILE.parent.rmdir()
