"""Why models load: a request whose reply reports a real load, and what made Ollama load the model.

A reply reports a load in ``load_duration``; with the model already loaded that is a few milliseconds, so
``REAL_LOAD_SECONDS`` and up is a load (a wait in Ollama's scheduler queue also counts there, which makes this an
estimate). The cause comes from the model's state when the request arrived, as Ollama's state poller last saw it:

- ``not_loaded``: absent from ``/api/ps`` (never loaded, or evicted to make room for another);
- ``expired``: its keep-alive had run out (``expires_at`` passed): ``OLLAMA_KEEP_ALIVE`` is too short for the traffic;
- ``options_changed``: loaded, but the request asks ``num_ctx`` other than the loaded context length, which makes
  Ollama load it again: clients alternating ``num_ctx`` make it reload over and over;
- ``unknown``: loaded with the same options (evicted between two polls), or no poll has succeeded yet.
"""

from __future__ import annotations

from ollama_metrics_proxy.observe.exchange import Exchange

REAL_LOAD_SECONDS = 0.25
CAUSES = ("not_loaded", "expired", "options_changed", "unknown")


def load_cause(exchange: Exchange, state: tuple[str, int | None] | None) -> str | None:
    """The cause of the load this request's reply reports, or None when it reports none."""
    load = exchange.observation.load_seconds
    if load is None or load < REAL_LOAD_SECONDS:
        return None
    kind, context_length = state or ("unknown", None)
    if kind == "absent":
        return "not_loaded"
    if kind == "expired":
        return "expired"
    if kind == "loaded" and exchange.request_num_ctx is not None and exchange.request_num_ctx != context_length:
        return "options_changed"
    return "unknown"
