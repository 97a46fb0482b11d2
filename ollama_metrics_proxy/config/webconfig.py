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

Every key of that format either works as it does there or is refused at start with a line naming it (``KNOWN``):
``client_allowed_sans`` (a client certificate must name one of them), ``max_version``, ``cipher_suites`` (Go's
names), ``prefer_server_cipher_suites``, ``http_server_config.headers`` and ``http2: false`` work; inline ``cert``,
``key`` and ``client_ca``, ``curve_preferences`` and ``http2: true`` are refused (Python's ssl takes files and
sets no curve list; this listener speaks HTTP/1.1). Certificates are read at start: a renewed one takes a restart.

Passwords are checked with ``bcrypt`` (a check takes tens of milliseconds by design) on a pool of their own, so
a flood of wrong passwords never waits in front of a scrape's rendering; when the pool's queue is full, a check
is answered "no" (401) at once. A check that succeeded is remembered for the same password and hash, as
exporter-toolkit does, so a scraper costs one check per process lifetime. An unknown user's password is checked
against a dummy hash of the same cost, so the time of the answer does not tell which user names exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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
KNOWN_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans",
                  "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites"}
KNOWN_HTTP_KEYS = {"http2", "headers"}
# exporter-toolkit's keys that cannot work here, and why: refused rather than silently ignored.
REFUSED_KEYS = {
    "cert": "give the certificate as cert_file (inline PEM is not supported here)",
    "key": "give the key as key_file (inline PEM is not supported here)",
    "client_ca": "give the CA as client_ca_file (inline PEM is not supported here)",
    "curve_preferences": "Python's ssl sets no list of curves; remove it (OpenSSL's defaults apply)",
}
# The response headers exporter-toolkit lets http_server_config.headers set.
SETTABLE_HEADERS = {"Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "X-XSS-Protection",
                    "Content-Security-Policy"}
# Go's names of the TLS 1.0-1.2 cipher suites (crypto/tls) and OpenSSL's for the same suite.
GO_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
MAX_REMEMBERED = 1024
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
PASSWORD_THREADS = 2  # bcrypt releases the GIL: two checks at once use two cores at most
MAX_PENDING_CHECKS = 8  # running and queued; beyond, a check fails at once instead of waiting
_password_pool: ThreadPoolExecutor | None = None


def password_pool() -> ThreadPoolExecutor:
    global _password_pool
    if _password_pool is None:
        _password_pool = ThreadPoolExecutor(PASSWORD_THREADS, thread_name_prefix="password-check")
    return _password_pool


class WebConfigError(ValueError):
    """The file is missing, unreadable or wrong; the message names what to change."""


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None
    users: dict[str, bytes]
    allowed_sans: frozenset[str] = frozenset()  # empty: any verified client certificate
    headers: dict[str, str] = field(default_factory=dict)  # http_server_config.headers, on every response
    _verified: set[bytes] = field(default_factory=set)
    # Checked against for unknown users: a hash of the same cost as the users' (their first one's).
    dummy_hash: bytes = b""
    _pending: int = 0

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
            await self._check(password, self.dummy_hash)  # as long as a known user's wrong password takes
            return False
        remembered = hashlib.sha256(hashed + b"\0" + password).digest()
        if remembered in self._verified:
            return True
        if not await self._check(password, hashed):
            return False
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified.add(remembered)
        return True


    def client_allowed(self, peer_certificate: Any) -> bool:
        """Whether a verified client certificate names one of ``client_allowed_sans`` (DNS names, IP
        addresses, e-mail addresses or URIs, as exporter-toolkit compares them); any, when none are set."""
        if not self.allowed_sans:
            return True
        names = peer_certificate.get("subjectAltName", ()) if isinstance(peer_certificate, dict) else ()
        return any(value in self.allowed_sans for _, value in names)

    async def _check(self, password: bytes, hashed: bytes) -> bool:
        if self._pending >= MAX_PENDING_CHECKS:
            return False  # a flood: answer 401 now rather than queue behind it
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(password_pool(), _check, password, hashed)
        finally:
            self._pending -= 1



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
    _check_keys(tls, "tls_server_config", KNOWN_TLS_KEYS, path)
    http = document.get("http_server_config") or {}
    _check_keys(http, "http_server_config", KNOWN_HTTP_KEYS, path)
    users = _users(document.get("basic_auth_users") or {}, path)
    sans = _string_list(tls.get("client_allowed_sans") if isinstance(tls, Mapping) else None,
                        "client_allowed_sans", path)
    if sans and (not isinstance(tls, Mapping) or tls.get("client_auth_type") != "RequireAndVerifyClientCert"):
        raise WebConfigError(f"{path}: client_allowed_sans needs client_auth_type RequireAndVerifyClientCert")
    return WebConfig(ssl_context=_ssl_context(tls, base, path) if tls else None, users=users,
                     allowed_sans=frozenset(sans), headers=_http_headers(http, path), dummy_hash=_dummy_hash(users))


def _check_keys(section: Any, name: str, known: set[str], path: str) -> None:
    if section is None:
        return
    if not isinstance(section, Mapping):
        raise WebConfigError(f"{path}: {name} must be a mapping")
    for key in section:
        if key in REFUSED_KEYS:
            raise WebConfigError(f"{path}: {name}.{key} is not supported: {REFUSED_KEYS[key]}")
        if key not in known:
            raise WebConfigError(f"{path}: unknown key {name}.{key!s}; expected one of {', '.join(sorted(known))}")


def _string_list(value: Any, name: str, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise WebConfigError(f"{path}: {name} must be a list of names")
    return value


def _http_headers(http: Mapping[str, Any], path: str) -> dict[str, str]:
    if http.get("http2", False) not in (False, None):
        raise WebConfigError(f"{path}: http_server_config.http2 is not supported: this listener speaks HTTP/1.1; "
                             "remove it or set it to false")
    headers = http.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise WebConfigError(f"{path}: http_server_config.headers must map header names to values")
    for name, value in headers.items():
        if name not in SETTABLE_HEADERS:
            raise WebConfigError(f"{path}: http_server_config.headers.{name} cannot be set; settable: "
                                 f"{', '.join(sorted(SETTABLE_HEADERS))}")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(f"{path}: http_server_config.headers.{name} must be one line of text")
    return {str(name): str(value) for name, value in headers.items()}


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
    for key in ("min_version", "max_version"):
        version = tls.get(key)
        if version is None:
            continue
        if version not in TLS_VERSIONS:
            raise WebConfigError(f"{path}: {key} must be one of {', '.join(TLS_VERSIONS)}, got {version!r}")
        if key == "min_version":
            context.minimum_version = TLS_VERSIONS[version]
        else:
            context.maximum_version = TLS_VERSIONS[version]
    suites = _string_list(tls.get("cipher_suites"), "cipher_suites", path)
    unknown = [suite for suite in suites if suite not in GO_CIPHER_SUITES]
    if unknown:
        raise WebConfigError(f"{path}: cipher_suites: unknown suite {unknown[0]!r} (Go's names for TLS 1.0-1.2 "
                             "suites, such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
    if suites:
        try:
            context.set_ciphers(":".join(GO_CIPHER_SUITES[suite] for suite in suites))
        except ssl.SSLError:
            raise WebConfigError(f"{path}: cipher_suites: none of them is available in this OpenSSL") from None
    if tls.get("prefer_server_cipher_suites"):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
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
        if not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"{path}: the password hash of {user!r} is not a whole bcrypt hash ($2y$, a cost "
                                 f"of 04-31, $, then 53 characters; this one has {len(hashed)} in all, not 60): "
                                 "was it cut when copied?")
        parsed[str(user)] = hashed.encode()
    return parsed


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash of an unknown password at the users' cost (their first one's), for checks of unknown users."""
    if not users:
        return b""
    cost = int(next(iter(users.values()))[4:6])
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


def _path(base: str, name: Any) -> str:
    return os.path.join(base, str(name))

