"""Reassemble lines from arbitrarily split chunks, with a bound on how much a single line may hold."""

from __future__ import annotations

# Ollama's own Go client refuses lines over 8 MB; a final /api/generate line with a long `context` array is the
# largest legitimate line we expect (well under that).
MAX_LINE_BYTES = 8 * 1024 * 1024


class LineBuffer:
    """``feed(chunk)`` returns the complete lines in it (without the newline), keeping the unfinished tail.

    A line longer than ``max_line`` is dropped whole and counted in ``oversized``, so memory stays bounded
    whatever the upstream sends.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line
        self._pending = bytearray()
        self._skipping = False
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return []
            self._skipping = False
            chunk = chunk[newline + 1 :]
        if self._pending:
            self._pending += chunk
            if b"\n" not in chunk:
                self._enforce_limit()
                return []
            data = bytes(self._pending)
            self._pending.clear()
        else:
            data = chunk
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending += tail
            self._enforce_limit()
        return lines

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
