"""Read the top-level members of one JSON object as it streams past, in bounded memory.

A non-streamed reply can be far larger than anything worth keeping: an embedding batch, or a generation whose
``context`` array runs to megabytes. The figures a proxy needs are small top-level members (``model``,
``done_reason``, ``eval_count``, ``usage``…) that may sit anywhere among the large ones, so this scanner keeps
each small member whole, parses it with a real JSON parser, and of a large member keeps only its key and how
many arrays or objects it holds directly (one per embedding vector). Any valid JSON spacing is accepted.

Only the structure is tracked (depth, strings and their escapes), with C-speed searches for the next character
that matters, so a long run of numbers or of plain text costs one search.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MAX_MEMBER_BYTES = 64 * 1024
_STRUCTURE_TOP = re.compile(rb'[{}\[\]",]')  # inside the top-level object: members end at its commas
_STRUCTURE_NESTED = re.compile(rb'[{}\[\]"]')  # deeper: commas do not matter
_STRING_END = re.compile(rb'["\\]')
_KEY = re.compile(rb'\s*("(?:[^"\\]|\\.)*")\s*:')
# A reason nested inside a large member (`choices` of a huge chat completion), read on the fly.
_NESTED_REASON = re.compile(rb'"(finish_reason|stop_reason)"\s*:\s*"([a-z_]{1,40})"')


class TopLevelMembers:
    """``feed(bytes)`` the body in pieces; then ``members`` holds the small top-level members, parsed, and
    ``container_counts`` the number of arrays or objects directly inside each large one."""

    def __init__(self, max_member: int = MAX_MEMBER_BYTES) -> None:
        self.members: dict[str, Any] = {}
        self.container_counts: dict[str, int] = {}
        self.nested_reason: str | None = None
        self.closed = False  # the top-level object ended
        self.invalid = False
        self._max_member = max_member
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the previous piece ended inside a string on a backslash
        self._member = bytearray()
        self._member_overflow = False
        self._member_key: str | None = None
        self._containers = 0
        self._reason_tail = b""

    def feed(self, chunk: bytes) -> None:
        if self.invalid or self.closed or not chunk:
            return
        position = 0
        member_start = 0 if self._depth >= 1 else None
        length = len(chunk)
        while position < length:
            if self._in_string:
                position = self._skip_string(chunk, position)
                continue
            if self._depth == 0:
                position = self._open(chunk, position)
                member_start = position if self._depth == 1 else None
                continue
            pattern = _STRUCTURE_TOP if self._depth == 1 else _STRUCTURE_NESTED
            found = pattern.search(chunk, position)
            if found is None:
                break
            at = found.start()
            char = chunk[at]
            if char == 0x22:  # "
                self._in_string = True
                position = at + 1
            elif char in (0x7B, 0x5B):  # { [
                if self._depth == 2:
                    self._containers += 1
                self._depth += 1
                position = at + 1
            elif self._depth == 1:  # , or } ends the current member
                self._keep(chunk, member_start, at)
                self._end_member()
                position = member_start = at + 1
                if char == 0x7D:  # }
                    self._depth = 0
                    self.closed = True
                    return
                if char == 0x5D:  # ] cannot close the object
                    self.invalid = True
                    return
            else:  # } or ] deeper down
                self._depth -= 1
                position = at + 1
        if member_start is not None and self._depth >= 1:
            self._keep(chunk, member_start, length)

    def _open(self, chunk: bytes, position: int) -> int:
        """Before the object: whitespace, then ``{``; anything else means the body is not a JSON object."""
        stripped = chunk[position:].lstrip()
        if not stripped:
            return len(chunk)
        if stripped[:1] != b"{":
            self.invalid = True
            return len(chunk)
        self._depth = 1
        return len(chunk) - len(stripped) + 1

    def _skip_string(self, chunk: bytes, position: int) -> int:
        if self._escaped:
            self._escaped = False
            return position + 1
        while True:
            found = _STRING_END.search(chunk, position)
            if found is None:
                return len(chunk)
            at = found.start()
            if chunk[at] == 0x22:
                self._in_string = False
                return at + 1
            if at + 1 >= len(chunk):
                self._escaped = True
                return len(chunk)
            position = at + 2

    def _keep(self, chunk: bytes, start: int | None, end: int) -> None:
        """Keep this piece of the current member while it is small; past the limit keep counting only."""
        if start is None or end <= start:
            return
        if not self._member_overflow:
            self._member += chunk[start:end]
            if len(self._member) > self._max_member:
                match = _KEY.match(self._member)
                self._member_key = _decode_key(match.group(1)) if match else None
                self._member_overflow = True
                self._look_for_reason(bytes(self._member))
                self._member = bytearray()
        else:
            self._look_for_reason(chunk[start:end])

    def _look_for_reason(self, piece: bytes) -> None:
        joined = self._reason_tail + piece
        for match in _NESTED_REASON.finditer(joined):
            self.nested_reason = match.group(2).decode()
        self._reason_tail = joined[-64:]

    def _end_member(self) -> None:
        if self._member_overflow:
            if self._member_key is not None:
                self.container_counts[self._member_key] = self._containers
        elif self._member.strip():
            try:
                value = orjson.loads(b"{" + bytes(self._member) + b"}")
            except orjson.JSONDecodeError:
                self.invalid = True
                return
            if isinstance(value, dict):
                self.members.update(value)
        self._member = bytearray()
        self._member_overflow = False
        self._member_key = None
        self._containers = 0
        self._reason_tail = b""

    def as_object(self) -> dict[str, Any]:
        """The members as one object, a large array standing in as a list of that many placeholders, so the
        same readers serve whole bodies and scanned ones."""
        obj: dict[str, Any] = dict(self.members)
        for key, count in self.container_counts.items():
            obj[key] = [None] * count
        return obj


def _decode_key(raw: bytes) -> str | None:
    try:
        key = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, str) else None
