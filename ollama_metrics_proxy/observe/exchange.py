"""One proxied request as the proxy saw it, and the fixed set of ways it can end."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ollama_metrics_proxy.endpoints import Dialect, dialect_of
from ollama_metrics_proxy.observe import Observation
from ollama_metrics_proxy.observe.extract import is_cloud_model
from ollama_metrics_proxy.pickling import pickled_by_fields


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # Ollama answered 4xx
    SERVER_ERROR = "server_error"  # Ollama answered 5xx
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # no connection to Ollama; the client got our 502
    UPSTREAM_ERROR = "upstream_error"  # an in-band error, a cut connection, or a stream without its final object
    ABORTED = "aborted"  # the client went away first
    TIMEOUT = "timeout"  # connecting to Ollama took longer than --connect-timeout; the client got our 504
    BUSY = "busy"  # Ollama answered 503 "server busy": its load queue (OLLAMA_MAX_QUEUE) was full


class Phase(enum.StrEnum):
    BEFORE_FIRST_TOKEN = "before_first_token"
    STREAMING = "streaming"


@pickled_by_fields
@dataclass(slots=True)
class Exchange:
    endpoint: str
    method: str
    path: str
    started: float
    request_model: str | None = None
    status: int = 0
    content_type: str = ""
    streaming: bool = False
    outcome: Outcome | None = None
    ended: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    client: str = ""
    client_identity: str | None = None
    wall_started: float = 0.0  # unix time, for the request log
    usage_injected: bool = False  # --openai-usage inject added include_usage to this request
    request_num_ctx: int | None = None  # options.num_ctx, when the request's first bytes name it
    # The model's state in Ollama when the request arrived (Ollama's state poller): loaded (and its context length),
    # expired, absent or unknown; decides why a load the reply reports happened.
    model_state: tuple[str, int | None] | None = None
    # --otlp-endpoint: (trace id, span id, the caller's span id or 0, sampled), settled at arrival.
    trace: tuple[int, int, int, bool] | None = None
    # The time the proxy itself added: head received to request written upstream, and upstream response head
    # to the response head written to the client (None when the request never got that far).
    overhead_request: float | None = None
    overhead_response: float | None = None
    # Bounded copies of the bodies, kept only with --log-content.
    captured_request: bytearray | None = None
    captured_response: bytearray | None = None
    observation: Observation = field(default_factory=Observation)

    def finish(self, outcome: Outcome, ended: float) -> None:
        """Set the outcome unless an earlier, more specific one was already set."""
        if self.outcome is None:
            self.outcome = outcome
        self.ended = ended

    @property
    def model(self) -> str | None:
        """The model the response names, else the one the request named."""
        return self.observation.model or self.request_model

    def time_to_first_token(self) -> float | None:
        """Streamed: arrival to the first content chunk; not streamed: to the whole reply (nothing shows sooner)."""
        obs = self.observation
        if self.streaming:
            return None if obs.first_content_at is None else max(obs.first_content_at - self.started, 0.0)
        return max(self.ended - self.started, 0.0) if self.ended else None

    def time_per_output_token(self) -> float | None:
        """Streamed: the time between the first and last content chunks over the chunks after the first (one
        token each, as Ollama sends them); not streamed: Ollama's eval_duration over eval_count."""
        obs = self.observation
        if self.streaming:
            if obs.content_chunks > 1 and obs.first_content_at is not None and obs.last_content_at is not None:
                return (obs.last_content_at - obs.first_content_at) / (obs.content_chunks - 1)
            return None
        if obs.eval_seconds is not None and obs.generation_tokens:
            return obs.eval_seconds / obs.generation_tokens
        return None

    @property
    def location(self) -> str:
        """``cloud`` for a cloud model (run on ollama.com: its tokens cost this GPU nothing), else ``local``."""
        return "cloud" if self.observation.remote or is_cloud_model(self.model) else "local"

    @property
    def disconnect_phase(self) -> Phase:
        started = self.observation.first_content_at is not None
        return Phase.STREAMING if started else Phase.BEFORE_FIRST_TOKEN


def outcome_for_response(exchange: Exchange) -> Outcome:
    """How a response that was relayed to the end went."""
    obs = exchange.observation
    if exchange.status == 503 and obs.error is not None and "server busy" in obs.error:
        return Outcome.BUSY
    if exchange.status >= 500:
        return Outcome.SERVER_ERROR
    if exchange.status >= 400:
        return Outcome.CLIENT_ERROR
    if obs.error is not None:
        return Outcome.UPSTREAM_ERROR
    if exchange.streaming and dialect_of(exchange.endpoint) is not Dialect.NONE and not obs.complete:
        return Outcome.UPSTREAM_ERROR
    return Outcome.SUCCESS


def client_left(exchange: Exchange) -> Outcome:
    """How a request went when its client disconnected. Once the response's terminal event (``[DONE]``,
    ``"done":true``, ``message_stop``, ``response.completed``, the end of a JSON body) or an in-band error had
    been relayed, the response had said how it went, whatever the client does afterwards: the OpenAI SDK closes
    right after ``[DONE]``, before the chunked terminator arrives, and ollama-python right after an
    ``{"error": ...}`` line. Otherwise the client left first: aborted."""
    obs = exchange.observation
    if exchange.status and (obs.complete or obs.error is not None):
        return outcome_for_response(exchange)
    return Outcome.ABORTED
