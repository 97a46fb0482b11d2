"""The connection to the upstream Ollama: a lean HTTP/1.1 client (``client``: the pool and requests;
``connection``: one connection; ``http1``: the wire format; ``errors``: how it fails).

May import: the top-level helpers (``headers``, ``redact``) only. The relay and the Ollama state poller use it.
"""

from ollama_metrics_proxy.upstream.client import UpstreamClient, UpstreamResponse
from ollama_metrics_proxy.upstream.errors import (
    BodyFailed,
    ConnectFailed,
    ConnectTimeout,
    ResponseFailed,
    UpstreamError,
)

__all__ = ["BodyFailed", "ConnectFailed", "ConnectTimeout", "ResponseFailed", "UpstreamClient", "UpstreamError",
           "UpstreamResponse"]
