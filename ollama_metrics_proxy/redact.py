"""Secrets never shown: credentials in URLs are replaced before a URL reaches a log line, a message or a page."""

from __future__ import annotations

from urllib.parse import urlsplit

MASK = "***"


def redact_url(value: str) -> str:
    """``http://user:secret@host`` → ``http://user:***@host``; a lone user name (often a token) is masked whole.

    Anything that does not parse as a URL is returned with everything before an ``@`` masked, to be safe."""
    try:
        parts = urlsplit(value)
        password, username = parts.password, parts.username
    except ValueError:
        return _mask_userinfo(value)
    if password is not None:
        return value.replace(f":{password}@", f":{MASK}@", 1)
    if username:
        return value.replace(f"{username}@", f"{MASK}@", 1)
    return value


def _mask_userinfo(value: str) -> str:
    scheme, separator, rest = value.partition("://")
    if not separator or "@" not in rest:
        return value
    return f"{scheme}://{MASK}@{rest.rsplit('@', 1)[1]}"
