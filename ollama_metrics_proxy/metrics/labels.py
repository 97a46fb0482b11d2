"""Bounded label values: the model-name guard and the finish-reason set."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ollama_metrics_proxy.observe.extract import normalize_model

OTHER = "other"
NO_MODEL = "none"  # requests that name no model (/api/tags, /api/version, ...)
# Real model names are short (`hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M` is 48 characters); a longer one
# would make every series that carries it heavy (100 names of 512 characters made /metrics 15.7 MB).
MAX_MODEL_LABEL_LENGTH = 128

# Reasons Ollama's three dialects report; anything else is folded into "other".
FINISH_REASONS = frozenset({
    "stop", "length", "load", "unload",  # native done_reason
    "tool_calls", "content_filter",  # OpenAI finish_reason
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",  # Anthropic stop_reason
    "max_output_tokens", "incomplete",  # OpenAI Responses incomplete_details.reason
})


def finish_reason_label(reason: str) -> str:
    return reason if reason in FINISH_REASONS else OTHER


class ModelLabels:
    """Hands out at most ``limit`` distinct model label values; later names become ``other``.

    A name only earns its own value from a successful response (``may_add``), so typos and models Ollama
    rejected with 404 never use up the budget. Installed models (``admit``) always get their own value.
    """

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self._limit = limit
        self._on_overflow = on_overflow
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def resolve(self, name: str | None, *, may_add: bool) -> str:
        if not name:
            return NO_MODEL
        label = normalize_model(name)
        if label in self._known:
            return label
        if not may_add:
            return OTHER
        if len(label) > MAX_MODEL_LABEL_LENGTH:
            self._on_overflow()
            return OTHER
        with self._lock:
            if label in self._known:
                return label
            if len(self._known) < self._limit:
                self._known.add(label)
                return label
        self._on_overflow()
        return OTHER

    def admit(self, names: Iterable[str]) -> None:
        """Give these names their own values even past the limit (they are installed, so bounded by disk)."""
        with self._lock:
            self._known.update(label for label in map(normalize_model, filter(None, names))
                               if len(label) <= MAX_MODEL_LABEL_LENGTH)

    def __len__(self) -> int:
        return len(self._known)
