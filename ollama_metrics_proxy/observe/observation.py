"""What an observer learned from one response body, in base units (seconds, tokens)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, fields

from ollama_metrics_proxy.pickling import pickled_by_fields

# Gaps between generated chunks, seconds. Local Ollama decodes at roughly 5-200 tokens/s, so most gaps sit
# between 5 ms and 200 ms; the tail catches stalls (a busy GPU, a slow tool call parser).
INTER_TOKEN_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)


# done_reason of a request that only loaded a model (empty prompt) or unloaded it (keep_alive 0).
LIFECYCLE_REASONS = frozenset({"load", "unload"})


@pickled_by_fields
@dataclass(slots=True)
class GapCounts:
    """A per-request histogram of inter-token gaps, merged into the shared metric once at the end.

    Recording a gap is one bisect and one increment, so the relay loop never calls into prometheus_client.
    ``counts[i]`` counts gaps <= ``INTER_TOKEN_BUCKETS[i]``; the extra last slot is +Inf.
    """

    counts: list[int] = field(default_factory=lambda: [0] * (len(INTER_TOKEN_BUCKETS) + 1))
    total: float = 0.0
    observations: int = 0

    def add(self, gap: float) -> None:
        self.counts[bisect_left(INTER_TOKEN_BUCKETS, gap)] += 1
        self.total += gap
        self.observations += 1

    def add_zeros(self, count: int) -> None:
        """Pieces that arrived in the same read as the one before them: no gap as the client saw it."""
        self.counts[0] += count
        self.observations += count


@pickled_by_fields
@dataclass(slots=True)
class Observation:
    model: str | None = None
    remote: bool = False  # the reply names a remote_host: a cloud model, run on ollama.com, not on this GPU
    complete: bool = False  # the final object arrived: done:true, [DONE], message_stop, response.completed
    error: str | None = None  # an in-band error (an NDJSON error line, response.failed, an SSE error event)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    generation_tokens: int | None = None
    cached_tokens: int | None = None
    embedding_inputs: int | None = None
    load_seconds: float | None = None
    prompt_eval_seconds: float | None = None
    eval_seconds: float | None = None
    total_seconds: float | None = None
    content_chunks: int = 0  # relayed pieces carrying generated text, thinking or a tool call
    thinking_chunks: int = 0  # of those, the ones carrying only thinking (reasoning before the answer)
    tool_calls: int = 0  # tool calls the reply carried
    first_content_at: float | None = None
    first_answer_at: float | None = None  # the first piece of the answer: text or a tool call after any thinking
    last_content_at: float | None = None
    gaps: GapCounts = field(default_factory=GapCounts)
    parse_errors: int = 0

    def note_content(self, now: float, count: int = 1, *, thinking: bool = False, tool_call: bool = False) -> None:
        """``count`` pieces carrying generated text, thinking or a tool call reached the client at ``now``.

        A piece with a tool call adds no inter-token gap: Ollama streams nothing while it assembles a call (on
        its llama-server path the call rides on the done line), so the silence before it is the whole call's
        generation, not the latency between two tokens."""
        if self.last_content_at is None:
            self.first_content_at = now
        elif not tool_call:
            self.gaps.add(now - self.last_content_at)
        if thinking:
            self.thinking_chunks += count
        elif self.first_answer_at is None:
            self.first_answer_at = now
        if count > 1:
            self.gaps.add_zeros(count - 1)
        self.last_content_at = now
        self.content_chunks += count

    def evaluated_prompt_tokens(self) -> int | None:
        """The prompt tokens Ollama evaluated, which its prompt_eval_duration times: the prompt less what its
        cache served, where the reply says (prompt_eval_cached_count, Ollama 0.33+); else the whole prompt."""
        if self.prompt_tokens is None or self.cached_tokens is None:
            return self.prompt_tokens
        return max(self.prompt_tokens - self.cached_tokens, 0)

    def generated(self) -> tuple[int | None, bool]:
        """Generated tokens and whether the figure is an estimate.

        The figure the reply reported wins. Without one (an OpenAI stream that did not ask for usage, a stream
        cut short before its final object), each relayed content chunk counts as one token: Ollama sends one
        chunk per generated token, holding pieces back only around incomplete UTF-8 and stop sequences.
        """
        if self.generation_tokens is not None:
            return self.generation_tokens, False
        if self.content_chunks:
            return self.content_chunks, True
        return None, False

    def queue_wait_estimate(self) -> float | None:
        """Time Ollama spent outside compute on this request: ``total - load - prompt_eval - eval``, the wait
        for a parallel slot plus templating and tokenisation (../shared/reference/ollama-api.md §3.4, citing
        ollama:server/routes.go: total_duration starts at handler entry, load_duration already holds the
        scheduler's queue). Needs the final object's total_duration (native routes) and a reply that reports its
        compute phases: a phase Ollama omitted from a generation was zero (its fields are omitempty), but an
        embedding reply never carries prompt-eval or eval durations, so there the difference would be the whole
        embedding compute (2.3 s on a 3,000-input embed), not a wait: no figure."""
        if self.total_seconds is None or (self.prompt_eval_seconds is None and self.eval_seconds is None):
            return None
        compute = (self.load_seconds or 0.0) + (self.prompt_eval_seconds or 0.0) + (self.eval_seconds or 0.0)
        return max(self.total_seconds - compute, 0.0)

    @property
    def lifecycle(self) -> bool:
        """A request that only loaded or unloaded a model (``done_reason`` load or unload), not a generation."""
        return self.finish_reason in LIFECYCLE_REASONS

    def comparable(self) -> dict[str, object]:
        """Everything but timing, for tests that compare results across chunk splits."""
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name not in ("first_content_at", "last_content_at", "gaps")
        }
