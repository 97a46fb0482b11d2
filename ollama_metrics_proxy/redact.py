"""Secrets never shown: credentials in URLs, secret-looking query parameters and connection-string fields are
replaced before a URL or a message reaches a log line, a reply or a page."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

# Names of query parameters and libpq connection-string fields that carry a secret (`?password=`, `api_key=`,
# `sslpassword=`, `access_token=`, AWS-style `X-Amz-Signature=`, ...). Matched case-insensitively, whole names only.
_SECRET_NAMES = (r"password|passwd|pwd|pass|passphrase|secret|client_secret|token|access_token|refresh_token|"
                 r"id_token|auth|authorization|api[_-]?key|apikey|key|private[_-]?key|sslpassword|signature|sig|"
                 r"credentials?|session|x-amz-signature|x-amz-credential|x-amz-security-token")
_SECRET_PARAMETER = re.compile(rf"(?i)(?<![\w-])({_SECRET_NAMES})(\s*=\s*)('[^']*'|[^&;\s#'\"]*)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@]+)@")


def redact_url(value: str) -> str:
    """``http://user:secret@host`` → ``http://user:***@host``; a lone user name (often a token) is masked whole,
    and so is the value of every secret-looking query parameter (``?password=…``, ``?api_key=…``).

    Anything that does not parse as a URL is returned with everything before an ``@`` masked, to be safe."""
    try:
        parts = urlsplit(value)
        password, username = parts.password, parts.username
    except ValueError:
        return redact_parameters(_mask_userinfo(value))
    if password is not None:
        value = value.replace(f":{password}@", f":{MASK}@", 1)
    elif username:
        value = value.replace(f"{username}@", f"{MASK}@", 1)
    return redact_parameters(value)


def redact_parameters(text: str) -> str:
    """Every ``name=value`` whose name says it is a secret, in a query string or a connection string."""
    return _SECRET_PARAMETER.sub(lambda match: f"{match[1]}{match[2]}{MASK}", text)


def redact_text(text: str) -> str:
    """A free-form message (an exception from a driver or an HTTP library, a log line) with every URL's
    credentials and every secret-looking parameter masked."""
    return redact_parameters(_URL_USERINFO.sub(lambda match: f"{match[1]}{MASK}@", text))


def _mask_userinfo(value: str) -> str:
    scheme, separator, rest = value.partition("://")
    if not separator or "@" not in rest:
        return value
    return f"{scheme}://{MASK}@{rest.rsplit('@', 1)[1]}"
