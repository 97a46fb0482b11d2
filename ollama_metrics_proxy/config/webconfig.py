"""``--web-config-file``: TLS and basic authentication for the metrics listener, in the Prometheus
exporter-toolkit format, so a ``scrape_config`` with ``tls_config`` and ``basic_auth`` works unchanged::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file, as in exporter-toolkit
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # optional: TLS10 … TLS13
    basic_auth_users:
      prometheus: $2y$10$…           # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

Passwords are checked with ``bcrypt`` in a thread (a check takes tens of milliseconds by design), and a check
that succeeded is remembered for the same password and hash, as exporter-toolkit does, so a scraper costs one
check per process lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import yaml

# exporter-toolkit's values that Python's ssl can express: it always verifies a certificate it asks for, so
# RequestClientCert and RequireAnyClientCert (ask, but do not verify) are refused with a message.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                "TLS13": ssl.TLSVersion.TLSv1_3}
log = logging.getLogger(__name__)

KNOWN_SECTIONS = {"tls_server_config", "basic_auth_users", "http_server_config"}
MAX_REMEMBERED = 1024


class WebConfigError(ValueError):
    """The file is missing, unreadable or wrong; the message names what to change."""


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None
    users: dict[str, bytes]
    _verified: set[bytes] = field(default_factory=set)

    async def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries a configured user's password (always, with no users)."""
        if not self.users:
            return True
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        if hashed is None:
            return False
        remembered = hashlib.sha256(hashed + b"\0" + password).digest()
        if remembered in self._verified:
            return True
        if not await asyncio.to_thread(_check, password, hashed):
            return False
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified.add(remembered)
        return True


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user.decode("utf-8", "replace"), password


def load_web_config(path: str) -> WebConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise WebConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise WebConfigError(f"{path} must be a mapping with tls_server_config and/or basic_auth_users")
    unknown = set(document) - KNOWN_SECTIONS
    if unknown:
        raise WebConfigError(f"{path}: unknown section {sorted(unknown)[0]!r}; expected "
                             "tls_server_config, basic_auth_users")
    base = os.path.dirname(os.path.abspath(path))
    tls = document.get("tls_server_config")
    return WebConfig(ssl_context=_ssl_context(tls, base, path) if tls else None,
                     users=_users(document.get("basic_auth_users") or {}, path))


def _ssl_context(tls: Any, base: str, path: str) -> ssl.SSLContext:
    if not isinstance(tls, Mapping) or not tls.get("cert_file") or not tls.get("key_file"):
        raise WebConfigError(f"{path}: tls_server_config needs cert_file and key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    key_file = _path(base, tls["key_file"])
    try:
        context.load_cert_chain(_path(base, tls["cert_file"]), key_file)
        if os.stat(key_file).st_mode & 0o077:
            log.warning("TLS key_file %s can be read by other users; make it private: chmod 600 %s", key_file,
                        key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"{path}: cannot load cert_file/key_file: {exc}") from None
    version = tls.get("min_version")
    if version is not None:
        if version not in TLS_VERSIONS:
            raise WebConfigError(f"{path}: min_version must be one of {', '.join(TLS_VERSIONS)}, got {version!r}")
        context.minimum_version = TLS_VERSIONS[version]
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH_TYPES:
        raise WebConfigError(f"{path}: client_auth_type must be one of {', '.join(CLIENT_AUTH_TYPES)} "
                             f"(client certificates are always verified here), got {auth_type!r}")
    context.verify_mode = CLIENT_AUTH_TYPES[auth_type]
    if context.verify_mode != ssl.CERT_NONE:
        if not tls.get("client_ca_file"):
            raise WebConfigError(f"{path}: client_auth_type {auth_type} needs client_ca_file")
        try:
            context.load_verify_locations(_path(base, tls["client_ca_file"]))
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{path}: cannot load client_ca_file: {exc}") from None
    return context


def _users(users: Any, path: str) -> dict[str, bytes]:
    if not isinstance(users, Mapping):
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    parsed = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: the password of {user!r} must be a bcrypt hash ($2y$…), never plain text")
        parsed[str(user)] = hashed.encode()
    return parsed


def _path(base: str, name: Any) -> str:
    return os.path.join(base, str(name))

