"""Reassemble lines from arbitrarily split chunks, with a bound on how much a single line may hold."""

from __future__ import annotations

# Ollama's own Go client refuses lines over 8 MB; a final /api/generate line with a long `context` array is the
# largest legitimate line we expect (well under that).
MAX_LINE_BYTES = 8 * 1024 * 1024


class LineBuffer:
    """``feed(chunk)`` returns the complete lines in it as one block (ending with a newline, or ``b""``),
    keeping the unfinished tail for the next chunk.

    Returning a block rather than a list lets callers test the whole block with C-speed substring searches and
    split it only when something in it needs a closer look. A line longer than ``max_line`` that is still
    incomplete is dropped whole and counted in ``oversized``, so memory stays bounded whatever the upstream
    sends.
    """

    __slots__ = ("_max_line", "_pending", "_skipping", "oversized")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line
        self._pending = bytearray()
        self._skipping = False
        self.oversized = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return b""
            self._skipping = False
            chunk = chunk[newline + 1 :]
        if self._pending:
            self._pending += chunk
            end = self._pending.rfind(b"\n")
            if end < 0:
                self._enforce_limit()
                return b""
            block = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            self._enforce_limit()
            return block
        end = chunk.rfind(b"\n")
        if end == len(chunk) - 1:
            return chunk  # the usual case: the chunk is whole lines, nothing to copy
        self._pending += chunk[end + 1 :]
        self._enforce_limit()
        return chunk[: end + 1] if end >= 0 else b""

    def close(self) -> bytes:
        """The unterminated last line, if any."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest

    def _enforce_limit(self) -> None:
        if len(self._pending) > self._max_line:
            self._pending.clear()
            self._skipping = True
            self.oversized += 1
