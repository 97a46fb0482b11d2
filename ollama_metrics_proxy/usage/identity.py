"""Who made a request, as the request log stores it: the configured header's value, or for Authorization a keyed
hash of the bearer token.

An unsalted hash of an API key can be reversed by trying likely keys (a four-word dictionary found the README's
own example), so the token is hashed with HMAC-SHA256 under a secret key: given with ``--client-hash-key``
(the same key on every proxy of a fleet makes their identities agree), or else a random key kept in a file beside
the request log, created on first start and readable by its owner only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets

log = logging.getLogger(__name__)
KEY_FILE_NAME = "client-identity.key"
MAX_IDENTITY_LENGTH = 128
HASH_PREFIX = "hmac-sha256:"


class ClientIdentity:
    def __init__(self, header: str, key: bytes) -> None:
        self.header = header
        self._key = key
        self._hashed = header.lower() == "authorization"

    def __call__(self, value: str | None) -> str | None:
        if not value:
            return None
        if not self._hashed:
            return value[:MAX_IDENTITY_LENGTH]
        token = value.split(" ", 1)[1] if value.lower().startswith("bearer ") else value
        digest = hmac.new(self._key, token.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:16]


def warn_if_readable_by_others(descriptor: int, path: str) -> None:
    """A secret key that other local users can read is not secret: say so (and how to fix it)."""
    if os.fstat(descriptor).st_mode & 0o077:
        log.warning("key file %s can be read by other users; make it private: chmod 600 %s", path, path)


def load_key(given: str | None, directory: str) -> bytes:
    """The given key, else the one in ``directory`` (made on first use); a directory that cannot be written
    gets a key for this run only, and a log line saying identities will not match across restarts."""
    if given:
        return given.encode()
    path = os.path.join(directory, KEY_FILE_NAME)
    try:
        with open(path, "rb") as existing:
            key = existing.read().strip()
            warn_if_readable_by_others(existing.fileno(), path)
        if key:
            return key
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("client identity key %s cannot be read (%s); using a key for this run only", path,
                    exc.strerror)
        return secrets.token_hex(32).encode()
    key = secrets.token_hex(32).encode()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as created:
            created.write(key + b"\n")
    except FileExistsError:
        return load_key(None, directory)  # another process made it first
    except OSError as exc:
        log.warning("client identity key cannot be kept in %s (%s); hashed identities will differ after a "
                    "restart (give one with --client-hash-key)", directory, exc.strerror)
    return key
