"""The fixed set of ``endpoint`` label values, and which wire dialect each inference route speaks.

Raw paths never become labels: anything outside this table is ``other``, so the label stays bounded no matter
what clients send.
"""

from __future__ import annotations

import enum


class Dialect(enum.Enum):
    """How the response body of a route reports tokens and timings."""

    NONE = "none"  # nothing to measure beyond status and bytes
    NATIVE = "native"  # Ollama's own JSON / NDJSON (generate, chat, embed, pull progress)
    OPENAI = "openai"  # OpenAI chat/completions/embeddings JSON and SSE
    OPENAI_RESPONSES = "openai_responses"  # OpenAI Responses API: typed SSE events, usage on the response object
    ANTHROPIC = "anthropic"  # Anthropic Messages JSON and typed SSE events


OTHER = "other"

# endpoint label -> dialect. Order matters only for documentation.
INFERENCE_ENDPOINTS: dict[str, Dialect] = {
    "/api/generate": Dialect.NATIVE,
    "/api/chat": Dialect.NATIVE,
    "/api/embed": Dialect.NATIVE,
    "/api/embeddings": Dialect.NATIVE,
    "/v1/chat/completions": Dialect.OPENAI,
    "/v1/completions": Dialect.OPENAI,
    "/v1/embeddings": Dialect.OPENAI,
    "/v1/responses": Dialect.OPENAI_RESPONSES,
    "/v1/messages": Dialect.ANTHROPIC,
}
PROGRESS_ENDPOINTS = frozenset({"/api/pull", "/api/push", "/api/create"})
MANAGEMENT_ENDPOINTS = frozenset(
    {"/api/show", "/api/tags", "/api/ps", "/api/version", "/api/copy", "/api/delete"}
)
BLOBS = "/api/blobs"
ALL_ENDPOINTS: tuple[str, ...] = (
    *INFERENCE_ENDPOINTS, *sorted(PROGRESS_ENDPOINTS), *sorted(MANAGEMENT_ENDPOINTS), BLOBS, OTHER,
)


def classify(path: str, method: str = "POST") -> str:
    """Map a request path (no query string) to its endpoint label. A CORS preflight (``OPTIONS``) asks only
    whether the real request may be sent: it is never the route's own request, so it is ``other``."""
    if method == "OPTIONS":
        return OTHER
    if path in INFERENCE_ENDPOINTS or path in PROGRESS_ENDPOINTS or path in MANAGEMENT_ENDPOINTS:
        return path
    if path.startswith("/api/blobs/"):
        return BLOBS
    return OTHER


def dialect_of(endpoint: str) -> Dialect:
    if endpoint in PROGRESS_ENDPOINTS:
        return Dialect.NATIVE
    return INFERENCE_ENDPOINTS.get(endpoint, Dialect.NONE)


def is_inference(endpoint: str) -> bool:
    return endpoint in INFERENCE_ENDPOINTS
