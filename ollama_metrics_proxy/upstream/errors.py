"""How the relay's upstream client fails; each message is shown to the user after the upstream's address."""

from __future__ import annotations

import os
import ssl


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange; ``str()`` is a message for the user."""


class ConnectFailed(UpstreamError):
    """No TCP (or TLS) connection could be made."""


class ConnectTimeout(UpstreamError):
    """Connecting took longer than the connect timeout."""


class ResponseFailed(UpstreamError):
    """The upstream closed the connection or sent something invalid before a complete response head."""


class BodyFailed(UpstreamError):
    """The response head was fine, but the body broke off or was invalid."""


def describe_os_error(exc: BaseException) -> str:
    """'Connection refused' rather than '[Errno 111] Connect call failed ('127.0.0.1', 11434)'."""
    if isinstance(exc, ssl.SSLCertVerificationError):  # its errno is OpenSSL's, not the OS's
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return str(exc) or type(exc).__name__
