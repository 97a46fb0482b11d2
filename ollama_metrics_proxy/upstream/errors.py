"""How the relay's upstream client fails; each message is shown to the user after the upstream's address."""

from __future__ import annotations


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
