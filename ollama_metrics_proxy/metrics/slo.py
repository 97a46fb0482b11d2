"""Goodput: whether a finished generation met the service level set by ``--slo-ttft`` and ``--slo-tpot``.

Judged once per inference request that asked for a generation: a success within both limits is ``met``; a
success over either, or a failure on the server's side (an error, a cut stream), is ``missed``. A client's own
mistake (4xx) and a client that left are not judged: neither says how fast the server was. A limit the request
gives no figure for (a time per token with a single chunk) is not held against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ollama_metrics_proxy.endpoints import is_inference
from ollama_metrics_proxy.observe.exchange import Exchange, Outcome

NOT_JUDGED = frozenset({Outcome.CLIENT_ERROR, Outcome.ABORTED})


@dataclass(frozen=True, slots=True)
class ServiceLevel:
    ttft: float | None = None  # seconds
    tpot: float | None = None  # seconds per output token

    @property
    def enabled(self) -> bool:
        return self.ttft is not None or self.tpot is not None

    def judge(self, exchange: Exchange) -> str | None:
        """``met``, ``missed``, or None when this request is not judged."""
        outcome = exchange.outcome or Outcome.SUCCESS
        if not self.enabled or not is_inference(exchange.endpoint) or exchange.observation.lifecycle:
            return None
        if outcome in NOT_JUDGED:
            return None
        if outcome is not Outcome.SUCCESS:
            return "missed"
        return "met" if _within(exchange.time_to_first_token(), self.ttft) and _within(
            exchange.time_per_output_token(), self.tpot) else "missed"


def _within(value: float | None, limit: float | None) -> bool:
    return limit is None or value is None or value <= limit
