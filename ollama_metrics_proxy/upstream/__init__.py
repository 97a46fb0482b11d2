"""The relay's connection to the upstream Ollama: a lean HTTP/1.1 client (``client``) and its wire format
(``http1``)."""

from ollama_metrics_proxy.upstream.client import (
    BodyFailed,
    ConnectFailed,
    ConnectTimeout,
    ResponseFailed,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)

__all__ = ["BodyFailed", "ConnectFailed", "ConnectTimeout", "ResponseFailed", "UpstreamClient", "UpstreamError",
           "UpstreamResponse"]
