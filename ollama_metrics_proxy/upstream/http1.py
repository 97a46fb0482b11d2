"""HTTP/1.1 on the wire to the upstream: the request head, and an incremental parser for the response.

The parser is pure (no I/O): ``feed(bytes)`` returns the body bytes it decoded from them, ``head`` is set once
the status line and headers are in, ``complete`` once the body has ended, and ``eof()`` says the connection
closed. It makes no assumption about where reads split the stream, keeps bounded state, and raises
``MalformedResponse`` with a reason a user can act on. llhttp (through ``httptools``) reads the wire: the status
line, headers, a ``Content-Length`` body, a chunked body (decoded; trailers are dropped, as aiohttp's client
does), a body that runs to the connection's close, bodiless responses (``HEAD``, 1xx, 204, 304), and interim 1xx
responses, which are skipped. It costs a quarter of the hand-written decoder it replaced per relayed chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import httptools

from ollama_metrics_proxy.headers import encode_head, first_values

MAX_HEAD_BYTES: Final = 64 * 1024  # Go's net/http and aiohttp allow about this much; Ollama sends < 1 KiB
# field-vchar, SP and HTAB (RFC 9110 §5.5), and obs-text: every byte but the other control characters and DEL.
FIELD_VALUE_CHARS: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])

# Body framing, decided from the head (RFC 9112 §6.3).
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3


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
    # Each header's first value by lower-cased name (``headers.first_values``), made once with the head.
    first_values: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_values", first_values(self.headers))  # frozen: set once, here

    def get(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        return self.first_values.get(name.lower())

    def without(self, name: str) -> ResponseHead:
        name = name.lower()
        if name not in self.first_values:
            return self
        kept = [(key, value) for key, value in self.headers if key.lower() != name]
        return ResponseHead(self.version, self.status, self.reason, kept)

    def values(self, name: str) -> list[str]:
        """Every comma-separated element of every header with this name, lower-cased and stripped."""
        name = name.lower()
        if name not in self.first_values:
            return []
        return [item.strip().lower() for key, value in self.headers if key.lower() == name
                for item in value.split(",") if item.strip()]


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line, Host (the upstream's) and the forwarded headers."""
    return encode_head(f"{method} {target} HTTP/1.1", [("Host", host), *headers])


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp where this response ends (HEAD, bytes after it)."""


# Why a callback's own exception is kept on the parser rather than read back from the HttpParserCallbackError
# that llhttp's failure becomes: httptools chains it as ``__context__``, but a ``raise`` overwrites that with
# whatever exception the caller is handling, and on asyncio's own event loop a HEAD reply's stop then read as a
# malformed response (the `ollama` CLI's heartbeat got an empty reply).


class ResponseParser:
    """Parses one response (after any interim 1xx ones) from the bytes of one connection. llhttp does the
    framing and chunked decoding in C; this class adds what a relay needs on top: the head as a value, the rules
    of RFC 9112 §6.3 for what may be relayed, a bound on the head's size, HEAD replies, and messages a user can
    act on."""

    __slots__ = (
        "_body_seen",
        "_callback_error",
        "_head_bytes",
        "_head_only",
        "_headers",
        "_llhttp",
        "_pieces",
        "_reason",
        "_status_seen",
        "complete",
        "extra_bytes",
        "framing",
        "head",
        "keep_alive",
        "on_body",
    )

    def __init__(self, *, head_request: bool = False) -> None:
        self._head_only = head_request  # a reply to HEAD has no body, whatever its headers say
        self._pieces: list[bytes] = []
        # llhttp's body callback, once per piece of body (per token in a stream): the list's own append, so that
        # no Python function runs per piece. llhttp looks its callbacks up once, when the parser is made, so the
        # list is only ever cleared, never replaced.
        self.on_body = self._pieces.append
        self._llhttp = httptools.HttpResponseParser(self)
        # Chunked wins over a Content-Length beside it, which is then dropped (RFC 9112 §6.3 rule 3), instead of
        # failing the response; every other leniency stays off.
        self._llhttp.set_dangerous_leniencies(lenient_chunked_length=True)
        self._headers: list[tuple[str, str]] = []
        self._reason = b""
        self._status_seen = False
        self._head_bytes = 0
        self._body_seen = 0
        self._callback_error: Exception | None = None  # what a callback raised: _Stop or MalformedResponse
        self.framing = NO_BODY
        self.head: ResponseHead | None = None
        self.complete = False
        self.keep_alive = False
        self.extra_bytes = False  # bytes after the end of the response: the connection is not reusable

    def feed(self, data: bytes) -> bytes:
        """Consume bytes read from the connection; returns the body bytes among them (framing removed)."""
        if self.complete:
            self.extra_bytes = self.extra_bytes or bool(data)
            return b""
        if self.head is None:
            self._head_bytes += len(data)
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause, self._callback_error = self._callback_error, None
            if not isinstance(cause, _Stop):
                self._fail(cause if isinstance(cause, MalformedResponse) else exc, data)
        except httptools.HttpParserError as exc:
            self._fail(exc, data)
        finally:
            if self.complete:
                self._let_go_of_llhttp()
        if self.head is None and self._head_bytes > MAX_HEAD_BYTES:
            raise MalformedResponse(f"sent a response head longer than {MAX_HEAD_BYTES} bytes")
        pieces = self._pieces
        if not pieces:
            return b""
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._body_seen += len(body)
        return body

    def eof(self) -> None:
        """The upstream closed the connection. Raises unless that was a valid end of the response."""
        if self.complete:
            return
        if self.head is not None and self.framing == UNTIL_CLOSE:
            self.complete = True
            self._let_go_of_llhttp()
            return
        if self.head is None:
            raise MalformedResponse("closed the connection before sending a complete response head")
        if self.framing == LENGTH:
            left = (content_length(self.head) or 0) - self._body_seen
            raise MalformedResponse(f"closed the connection with {left} bytes of the body still to come")
        raise MalformedResponse("closed the connection before the end of the chunked body")

    # ---------------------------------------------------------------- llhttp's callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # the next response on this connection already: not this parser's to read
            self.extra_bytes = True
            raise self._raised(_Stop())
        self._headers, self._reason, self._status_seen = [], b"", False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._status_seen = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is None:  # trailers, after a chunked body, are dropped
            self._headers.append((name.decode("ascii"), value.strip(b" \t").decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        try:
            self._head_complete()
        except (_Stop, MalformedResponse) as exc:
            raise self._raised(exc) from None

    def _head_complete(self) -> None:
        self._status_seen = True
        status, version = self._llhttp.get_status_code(), self._llhttp.get_http_version()
        if (version not in ("1.1", "1.0") or not 100 <= status <= 599
                or self._reason.translate(None, FIELD_VALUE_CHARS)):
            raise MalformedResponse(f"sent a bad status line: HTTP/{version} {status} {self._reason[:80]!r}")
        if 100 <= status < 200:
            if status == 101:
                raise MalformedResponse("switched protocols (101), which this proxy does not relay")
            return  # interim response (103 Early Hints, a stray 100): the real one follows
        self._start_body(ResponseHead(version, status, self._reason.decode("latin-1"), self._headers))
        if self.complete and self._head_only:
            raise _Stop  # llhttp would wait for the body that a reply to HEAD never has

    def on_message_complete(self) -> None:
        if self.head is not None:
            self.complete = True

    # ---------------------------------------------------------------- internals

    def _raised(self, exc: Exception) -> Exception:
        self._callback_error = exc
        return exc

    def _let_go_of_llhttp(self) -> None:
        """The response is read: drop llhttp. It holds this parser's callbacks while this parser holds it, a
        reference cycle that only the garbage collector would free, about a dozen objects per request whose
        collection cost ~9 us of CPU per request. Only ``feed`` uses llhttp, and not once ``complete``."""
        if hasattr(self, "_llhttp"):
            del self._llhttp

    def _start_body(self, head: ResponseHead) -> None:
        """Decide the body's framing (RFC 9112 §6.3) before the head is accepted: a head whose framing is
        invalid fails as a whole, so the client gets a 502 and not a 200 followed by a cut connection."""
        transfer_codings = head.values("transfer-encoding")
        keep_alive = head.version == "1.1" and "close" not in head.values("connection")
        length = None  # read only where it decides the framing: a chunked or bodiless reply ignores it
        if self._head_only or head.status in (204, 304):
            framing = NO_BODY
        elif transfer_codings:
            if transfer_codings != ["chunked"]:
                raise MalformedResponse(f"used the transfer coding {', '.join(transfer_codings)!r}; "
                                        "only 'chunked' is supported")
            framing = CHUNKED
            # Chunked wins over Content-Length, which must then not reach the client, and the connection is not
            # reused (a sender that contradicts itself may be out of step).
            without_length = head.without("content-length")
            keep_alive = keep_alive and without_length is head
            head = without_length
        elif (length := content_length(head)) is not None:
            framing = LENGTH
        else:
            framing, keep_alive = UNTIL_CLOSE, False
        self.head, self.framing, self.keep_alive = head, framing, keep_alive
        if framing == NO_BODY or (framing == LENGTH and length == 0):
            self.complete = True

    def _fail(self, exc: BaseException, data: bytes) -> None:
        """Raise the fault as MalformedResponse, with the body decoded before it (valid, so relayed)."""
        failure = exc if isinstance(exc, MalformedResponse) else MalformedResponse(self._describe(str(exc), data))
        failure.body = b"".join(self._pieces)
        self._pieces.clear()
        raise failure from None

    def _describe(self, reason: str, data: bytes) -> str:
        """llhttp's reason, in the terms of the proxy's other messages."""
        lowered = reason.lower()
        if self.head is None and not self._status_seen:
            first_line = data.split(b"\r\n", 1)[0]
            return f"sent a bad status line: {first_line[:100]!r}"
        if "content-length" in lowered:
            return f"sent an invalid Content-Length ({reason})"
        if self.head is None:
            if "value char" in lowered or "expected lf" in lowered or "expected cr" in lowered:
                return f"sent a control character in a header ({reason})"
            return f"sent a bad header line ({reason})"
        if "chunk size" in lowered:
            return f"sent a bad chunk-size line ({reason})"
        if "chunk" in lowered:
            return f"sent a chunk whose data is not followed by CRLF ({reason})"
        return f"sent a malformed response ({reason})"


def content_length(head: ResponseHead) -> int | None:
    values = set(head.values("content-length"))
    if not values:
        return None
    value = next(iter(values))
    if len(values) > 1 or not (value.isascii() and value.isdigit()):
        raise MalformedResponse(f"sent an invalid Content-Length: {head.get('content-length')!r}")
    return int(value)
