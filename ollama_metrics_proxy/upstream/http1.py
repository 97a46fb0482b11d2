"""HTTP/1.1 on the wire to the upstream: the request head, and an incremental parser for the response.

The parser is pure (no I/O): ``feed(bytes)`` returns the body bytes it decoded from them, ``head`` is set once
the status line and headers are in, ``complete`` once the body has ended, and ``eof()`` says the connection
closed. It makes no assumption about where reads split the stream, keeps bounded state, and raises
``MalformedResponse`` with a reason a user can act on. It handles what an HTTP/1.1 origin sends: a
``Content-Length`` body, a chunked body (decoded; trailers are read and dropped, as aiohttp's client does), a
body that runs to the connection's close, bodiless responses (``HEAD``, 1xx, 204, 304), and interim 1xx
responses, which are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import Final

MAX_HEAD_BYTES: Final = 64 * 1024  # Go's net/http and aiohttp allow about this much; Ollama sends < 1 KiB
MAX_CHUNK_LINE_BYTES: Final = 4096  # a chunk-size line with extensions; real ones are a few bytes
# Reads from this size up (several token chunks) try ``whole_chunks``; below, the loop is cheaper.
WHOLE_CHUNKS_MIN_BYTES: Final = 512
HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
# field-vchar, SP and HTAB (RFC 9110 §5.5), and obs-text: every byte but the other control characters and DEL.
FIELD_VALUE_CHARS: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
TOKEN_CHARS: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Body framing, decided from the head (RFC 9112 §6.3).
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

# States of the chunked decoder.
_SIZE_LINE: Final = 0  # expecting "<hex>[;ext]\r\n"
_DATA: Final = 1  # inside a chunk's data
_DATA_END: Final = 2  # expecting the CRLF after a chunk's data
_TRAILERS: Final = 3  # after the last chunk: trailer lines until an empty one


class MalformedResponse(Exception):
    """The upstream's bytes are not a valid HTTP/1.1 response; the message says what was wrong.

    ``body`` holds the body bytes decoded from the same read before the fault: they were valid and are relayed.
    """

    body = b""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    version: str  # "1.1" or "1.0"
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as received: names keep their case, repeats and order are kept

    def get(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def without(self, name: str) -> ResponseHead:
        name = name.lower()
        kept = [(key, value) for key, value in self.headers if key.lower() != name]
        return self if len(kept) == len(self.headers) else ResponseHead(self.version, self.status, self.reason, kept)

    def values(self, name: str) -> list[str]:
        """Every comma-separated element of every header with this name, lower-cased and stripped."""
        name = name.lower()
        return [item.strip().lower() for key, value in self.headers if key.lower() == name
                for item in value.split(",") if item.strip()]


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers. Names and values come from aiohttp's request parser, which has already
    refused CR and LF in them; surrogateescape gives back the exact bytes the client sent."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class ResponseParser:
    """Parses one response (after any interim 1xx ones) from the bytes of one connection."""

    __slots__ = (
        "_head_only",
        "_left",
        "_pending",
        "_state",
        "complete",
        "extra_bytes",
        "framing",
        "head",
        "keep_alive",
    )

    def __init__(self, *, head_request: bool = False) -> None:
        self._head_only = head_request  # a reply to HEAD has no body, whatever its headers say
        self._pending = b""  # unparsed bytes carried to the next feed: part of a head or of a chunk line
        self._state = _SIZE_LINE
        self._left = 0  # bytes still expected: of the Content-Length body, or of the current chunk
        self.framing = NO_BODY
        self.head: ResponseHead | None = None
        self.complete = False
        self.keep_alive = False
        self.extra_bytes = False  # bytes after the end of the response: the connection is not reusable

    def feed(self, data: bytes) -> bytes:
        """Consume bytes read from the connection; returns the body bytes among them (framing removed)."""
        if self._pending:
            data, self._pending = self._pending + data, b""
        if self.complete:
            self.extra_bytes = self.extra_bytes or bool(data)
            return b""
        if self.head is None:
            data = self._feed_head(data)
            if self.head is None or not data:
                return b""
        if self.framing == CHUNKED:
            return self._feed_chunked(data)
        if self.framing == LENGTH:
            return self._feed_length(data)
        if self.framing == UNTIL_CLOSE:
            return data
        self.extra_bytes = True  # NO_BODY, yet more bytes came
        return b""

    def eof(self) -> None:
        """The upstream closed the connection. Raises unless that was a valid end of the response."""
        if self.complete:
            return
        if self.head is not None and self.framing == UNTIL_CLOSE:
            self.complete = True
            return
        if self.head is None:
            raise MalformedResponse("closed the connection before sending a complete response head")
        if self.framing == LENGTH:
            raise MalformedResponse(f"closed the connection with {self._left} bytes of the body still to come")
        raise MalformedResponse("closed the connection before the end of the chunked body")

    # ---------------------------------------------------------------- head

    def _feed_head(self, data: bytes) -> bytes:
        """Parse heads (skipping interim 1xx ones) from ``data``; returns what follows the final head."""
        while self.head is None:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    raise MalformedResponse(f"sent a response head longer than {MAX_HEAD_BYTES} bytes")
                self._pending = data
                return b""
            if end > MAX_HEAD_BYTES:
                raise MalformedResponse(f"sent a response head longer than {MAX_HEAD_BYTES} bytes")
            head = parse_head(data[:end])
            data = data[end + 4:]
            if 100 <= head.status < 200:
                if head.status == 101:
                    raise MalformedResponse("switched protocols (101), which this proxy does not relay")
                continue  # interim response (103 Early Hints, a stray 100): the real one follows
            self._start_body(head)
        return data

    def _start_body(self, head: ResponseHead) -> None:
        """Decide the body's framing (RFC 9112 §6.3) before the head is accepted: a head whose framing is
        invalid fails as a whole, so the client gets a 502 and not a 200 followed by a cut connection."""
        transfer_codings = head.values("transfer-encoding")
        keep_alive = head.version == "1.1" and "close" not in head.values("connection")
        left = 0
        if self._head_only or head.status in (204, 304):
            framing = NO_BODY
        elif transfer_codings:
            if transfer_codings != ["chunked"]:
                raise MalformedResponse(f"used the transfer coding {', '.join(transfer_codings)!r}; "
                                        "only 'chunked' is supported")
            framing = CHUNKED
            # Chunked wins over Content-Length, which must then not reach the client (§6.3 rule 3), and the
            # connection is not reused (a sender that contradicts itself may be out of step).
            without_length = head.without("content-length")
            keep_alive = keep_alive and without_length is head
            head = without_length
        elif (length := content_length(head)) is not None:
            framing, left = LENGTH, length
        else:
            framing, keep_alive = UNTIL_CLOSE, False
        self.head, self.framing, self._left, self.keep_alive = head, framing, left, keep_alive
        if framing == NO_BODY or (framing == LENGTH and left == 0):
            self.complete = True

    # ---------------------------------------------------------------- bodies

    def _feed_length(self, data: bytes) -> bytes:
        if len(data) < self._left:
            self._left -= len(data)
            return data
        body, rest = data[: self._left], data[self._left:]
        self._left = 0
        self.complete = True
        self.extra_bytes = bool(rest)
        return body

    def _feed_chunked(self, data: bytes) -> bytes:
        """Decode chunked framing. Called once per read, which in a fast stream carries dozens of chunks: the
        pieces are joined so the relay writes once per read. This is the relay's hottest Python code (one pass
        per token), hence the inner loop for the usual case of whole chunks."""
        if len(data) >= WHOLE_CHUNKS_MIN_BYTES and self._state == _SIZE_LINE and data.endswith(b"\r\n"):
            body = whole_chunks(data)
            if body is not None:
                return body
        pieces: list[bytes] = []
        try:
            self._decode_chunks(data, pieces)
        except MalformedResponse as exc:
            exc.body = b"".join(pieces)
            raise
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _decode_chunks(self, data: bytes, pieces: list[bytes]) -> None:
        position, size = 0, len(data)
        find, append = data.find, pieces.append
        while position < size:
            state = self._state
            if state == _SIZE_LINE:
                while True:  # whole chunks, one after another
                    line_end = find(b"\r\n", position)
                    if line_end < 0:
                        self._keep_partial_line(data, position)
                        return
                    digits = data[position:line_end]
                    if 0 < len(digits) <= 16 and not digits.translate(None, HEX_DIGITS):
                        chunk_size = int(digits, 16)
                    else:
                        chunk_size = parse_chunk_size(digits)
                    position = line_end + 2
                    if not chunk_size:
                        self._state = _TRAILERS
                        break
                    end = position + chunk_size
                    if end + 2 > size:  # the chunk goes on in the next read
                        self._state, self._left = _DATA, chunk_size
                        break
                    if data[end:end + 2] != b"\r\n":
                        raise MalformedResponse("sent a chunk whose data is not followed by CRLF")
                    append(data[position:end])
                    position = end + 2
                    if position == size:
                        return
            elif state == _DATA:
                end = min(position + self._left, size)
                append(data[position:end] if position or end < size else data)
                self._left -= end - position
                position = end
                if not self._left:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if size - position < 2:
                    self._pending = data[position:]
                    return
                if data[position:position + 2] != b"\r\n":
                    raise MalformedResponse("sent a chunk whose data is not followed by CRLF")
                position += 2
                self._state = _SIZE_LINE
            else:  # _TRAILERS: lines until an empty one; their fields are dropped
                line_end = find(b"\r\n", position)
                if line_end < 0:
                    self._keep_partial_line(data, position)
                    return
                if line_end == position:  # the empty line that ends the message
                    self.complete = True
                    self.extra_bytes = line_end + 2 < size
                    return
                position = line_end + 2

    def _keep_partial_line(self, data: bytes, position: int) -> None:
        if len(data) - position > MAX_CHUNK_LINE_BYTES:
            raise MalformedResponse("sent a chunk-size or trailer line that never ends")
        self._pending = data[position:]


def whole_chunks(data: bytes) -> bytes | None:
    """Decode a read made of whole chunks, none of them the last, in a few C-speed calls; None when the read is
    anything else, for the exact decoder to handle.

    What a streaming Ollama sends: one chunk per token, whose data (a JSON line, an SSE event) holds no CRLF.
    Splitting at CRLF then alternates size lines and data, and the split is known to be right when every size
    is plain hex and equals the length of the piece after it: a chunk whose data held a CRLF would show up as a
    piece shorter than its size.
    """
    parts = data.split(b"\r\n")
    parts.pop()  # the empty piece after the final CRLF
    if len(parts) % 2:
        return None
    sizes, pieces = parts[0::2], parts[1::2]
    try:
        declared = list(map(int, sizes, repeat(16)))
    except ValueError:  # an extension, whitespace, or no size at all
        return None
    if declared != list(map(len, pieces)) or 0 in declared or b"".join(sizes).translate(None, HEX_DIGITS):
        return None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def parse_head(block: bytes) -> ResponseHead:
    lines = block.split(b"\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if (version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit()
            or not 100 <= int(code) <= 599 or reason.translate(None, FIELD_VALUE_CHARS)):
        raise MalformedResponse(f"sent a bad status line: {status_line[:100]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not TOKEN_CHARS.issuperset(name):
            raise MalformedResponse(f"sent a bad header line: {line[:100]!r}")
        if value.translate(None, FIELD_VALUE_CHARS):  # CR, LF, NUL or another control character
            raise MalformedResponse(f"sent a control character in the header {name.decode('ascii')!r}: "
                                    f"{line[:100]!r}")
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("utf-8", "surrogateescape")))
    return ResponseHead(version[5:].decode("ascii"), int(code), reason.decode("latin-1"), headers)


def content_length(head: ResponseHead) -> int | None:
    values = set(head.values("content-length"))
    if not values:
        return None
    value = next(iter(values))
    if len(values) > 1 or not (value.isascii() and value.isdigit()):
        raise MalformedResponse(f"sent an invalid Content-Length: {head.get('content-length')!r}")
    return int(value)


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunk-size line with extensions (";name=value", ignored) or optional whitespace."""
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not 0 < len(digits) <= 16 or digits.translate(None, HEX_DIGITS):
        raise MalformedResponse(f"sent a bad chunk-size line: {line[:100]!r}")
    return int(digits, 16)
