"""The keys that sign access and ID tokens: a PEM file, its retired predecessors, the JWKS.

The current private key lives at ``HEALTHHUB_SIGNING_KEY`` (CONTRACT §2), created on first use
(RSA 2048, mode 0600; two processes starting together agree on one file). A key's
``kid`` is its RFC 7638 thumbprint, the same in every process. :meth:`KeyRing.rotate` moves the
current key to ``<file>.retired/`` and makes a new one; a retired key stays in the JWKS, and
keeps verifying, for ``RETIRED_FOR`` (longer than any token it signed lives), then it is deleted.
Every web process shares the key file (one host, or a shared volume: docs/deployment.md).
Verification reads no database and no file per request: keys are cached and the folder is
looked at again only when a token names an unknown ``kid`` (at most every ``RELOAD_EVERY`` s).
https://hl7.org/fhir/smart-app-launch/app-launch.html, https://www.rfc-editor.org/rfc/rfc7517
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

#: Signing algorithm of the hub's tokens (RS256: what every JOSE library verifies; HAPI FHIR's
#: SMART module signs with it too).
ALG = "RS256"
#: How long a retired key keeps verifying (tokens live one hour; ID tokens too).
RETIRED_FOR = 2 * 3600
RELOAD_EVERY = 30.0


class KeyRing:
    """The current signing key and the retired keys still trusted."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.retired_dir = self.path.with_name(self.path.name + ".retired")
        self._lock = threading.Lock()
        self._current: RSAKey | None = None
        self._public: dict[str, RSAKey] = {}
        self._loaded_at = 0.0
        self._inode = -1

    # -- signing -----------------------------------------------------------------------------

    def current(self) -> RSAKey:
        """The key new tokens are signed with (created when missing)."""
        with self._lock:
            if self._current is None or (time.monotonic() - self._loaded_at > RELOAD_EVERY and self._replaced()):
                self._load()  # first use, or `healthhub keys rotate` ran (in any process)
            assert self._current is not None
            return self._current

    @property
    def kid(self) -> str:
        return self.current().thumbprint()

    # -- verifying ---------------------------------------------------------------------------

    def verification_key(self, kid: object) -> RSAKey | None:
        """The public key named ``kid`` (current or retired), or None."""
        if kid is not None and not isinstance(kid, str):
            # ``kid`` comes from a token's unverified header: a JSON list or object there was
            # looked up in the key dict and raised TypeError (unhashable), a 500 instead of a 401.
            return None
        self.current()
        with self._lock:
            key = self._public.get(kid or "")
            if key is None and time.monotonic() - self._loaded_at > RELOAD_EVERY:
                self._load()  # another process may have rotated
                key = self._public.get(kid or "")
            return key

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWK Set (``/auth/jwks``): current key first, then retired ones."""
        self.current()
        with self._lock:
            keys: list[dict[str, Any]] = []
            for kid, key in self._public.items():
                jwk = dict(key.as_dict(private=False))
                jwk.update({"kid": kid, "use": "sig", "alg": ALG})
                keys.append(jwk)
            return {"keys": keys}

    # -- rotation ----------------------------------------------------------------------------

    def rotate(self) -> str:
        """Retire the current key, make a new one; returns the new ``kid``."""
        with self._lock:
            self._load()
            assert self._current is not None
            self.retired_dir.mkdir(parents=True, exist_ok=True)
            retired = self.retired_dir / f"{int(time.time())}-{self._current.thumbprint()}.pem"
            os.replace(self.path, retired)
            self._current = None
            self._load()
            assert self._current is not None
            return self._current.thumbprint()

    # -- internals ---------------------------------------------------------------------------

    def _replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def _load(self) -> None:
        current = _read_or_create(self.path)
        self._inode = os.stat(self.path).st_ino
        public = {current.thumbprint(): _public(current)}
        if self.retired_dir.is_dir():
            now = time.time()
            for pem in sorted(self.retired_dir.glob("*.pem"), reverse=True):
                retired_at = _retired_at(pem)
                if retired_at is None:
                    continue
                if now - retired_at > RETIRED_FOR:
                    pem.unlink(missing_ok=True)  # nothing it signed is still valid
                    continue
                key = RSAKey.import_key(pem.read_bytes())
                public.setdefault(key.thumbprint(), _public(key))
        self._current = current
        self._public = public
        self._loaded_at = time.monotonic()


def _public(key: RSAKey) -> RSAKey:
    return RSAKey.import_key(key.as_dict(private=False))


def _retired_at(pem: Path) -> int | None:
    stamp = pem.name.split("-", 1)[0]
    return int(stamp) if stamp.isdigit() else None


def _read_or_create(path: Path) -> RSAKey:
    try:
        return RSAKey.import_key(path.read_bytes())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = RSAKey.generate_key(2048)
    # Written aside, then linked into place: the file appears whole or not at all, and when two
    # processes start together the first link wins and the other reads that key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.as_pem(private=True))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return RSAKey.import_key(path.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return key
