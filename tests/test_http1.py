"""The upstream response parser, fed the way a socket delivers bytes: split anywhere."""

from __future__ import annotations

import pytest

from ollama_metrics_proxy.upstream.http1 import (
    MAX_HEAD_BYTES,
    MalformedResponse,
    ResponseParser,
    request_head,
)
from tests.fake_ollama import NOT_FOUND, ROUTES, Recording

RECORDINGS = sorted({*ROUTES.values(), NOT_FOUND}, key=lambda recording: recording.name)


def chunked_wire(recording: Recording, trailers: bytes = b"") -> bytes:
    """What Go's net/http sends for a flushed stream: one chunk per flush, then the last chunk."""
    head = (f"HTTP/1.1 {recording.status} Status\r\nContent-Type: {recording.content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in recording.chunks)
    return head + chunks + b"0\r\n" + trailers + b"\r\n"


def length_wire(body: bytes, status: int = 200, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def parse(pieces: list[bytes], *, head_request: bool = False, eof: bool = False) -> tuple[ResponseParser, bytes]:
    parser = ResponseParser(head_request=head_request)
    body = b"".join(parser.feed(piece) for piece in pieces)
    if eof:
        parser.eof()
    return parser, body


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda recording: recording.name)
def test_chunked_recordings_decode_identically_at_every_split(recording: Recording) -> None:
    wire = chunked_wire(recording, trailers=b"X-Trailer: dropped\r\n")
    for split in range(len(wire) + 1):
        parser, body = parse([wire[:split], wire[split:]])
        assert body == recording.body, f"split at {split}"
        assert parser.complete and parser.keep_alive and not parser.extra_bytes
        assert parser.head is not None and parser.head.status == recording.status
        assert parser.head.get("content-type") == recording.content_type


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda recording: recording.name)
def test_recordings_decode_byte_by_byte(recording: Recording) -> None:
    for wire in (chunked_wire(recording), length_wire(recording.body)):
        parser, body = parse([wire[i:i + 1] for i in range(len(wire))])
        assert body == recording.body and parser.complete


def test_content_length_body_at_every_split() -> None:
    wire = length_wire(b'{"model":"llama3.2","done":true}')
    for split in range(len(wire) + 1):
        parser, body = parse([wire[:split], wire[split:]])
        assert body == b'{"model":"llama3.2","done":true}' and parser.complete and parser.keep_alive


def test_head_keeps_names_order_and_repeats() -> None:
    parser, _ = parse([b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Odd-Case: v \r\nset-cookie: b=2\r\n"
                       b"Content-Length: 0\r\n\r\n"])
    assert parser.head is not None
    assert parser.head.headers == [("Set-Cookie", "a=1"), ("X-Odd-Case", "v"), ("set-cookie", "b=2"),
                                   ("Content-Length", "0")]
    assert parser.head.reason == "OK" and parser.head.version == "1.1"


@pytest.mark.parametrize(("wire", "head_request"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", True),  # a reply to HEAD has no body
    (b"HTTP/1.1 204 No Content\r\n\r\n", False),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
])
def test_bodiless_responses_complete_with_the_head(wire: bytes, head_request: bool) -> None:
    parser, body = parse([wire], head_request=head_request)
    assert parser.complete and body == b"" and parser.keep_alive


GO_HEAD_REPLY = (b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Date: Thu, 03 Dec 2026 20:00:00 GMT\r\n\r\n")  # Go's answer to the CLI's `HEAD /`


def test_a_reply_to_head_ends_at_its_head_while_the_caller_handles_an_exception() -> None:
    """The program ran its event loop inside `except ImportError` (no uvloop): every exception raised meanwhile
    took that one as its context, and the stop at a HEAD reply's head read as a malformed response."""
    try:
        raise ImportError("uvloop")
    except ImportError:
        parser, body = parse([GO_HEAD_REPLY, GO_HEAD_REPLY], head_request=True)
    assert parser.complete and body == b"" and parser.extra_bytes
    assert parser.head is not None and parser.head.get("content-length") == "17"


def test_a_malformed_head_is_named_while_the_caller_handles_an_exception() -> None:
    try:
        raise ImportError("uvloop")
    except ImportError:
        with pytest.raises(MalformedResponse, match="transfer coding 'gzip'"):
            parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"])


def test_interim_responses_are_skipped() -> None:
    parser, body = parse([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
                          length_wire(b"ok")])
    assert parser.head is not None and parser.head.status == 200 and body == b"ok"


def test_body_until_close_ends_at_eof_and_is_not_reused() -> None:
    parser, body = parse([b"HTTP/1.1 200 OK\r\n\r\nsome ", b"bytes"], eof=True)
    assert body == b"some bytes" and parser.complete and not parser.keep_alive


@pytest.mark.parametrize("wire", [
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
])
def test_connections_the_upstream_will_close_are_not_reused(wire: bytes) -> None:
    parser, body = parse([wire])
    assert body == b"ok" and parser.complete and not parser.keep_alive


def test_bytes_after_the_response_are_flagged() -> None:
    parser, body = parse([length_wire(b"ok") + b"HTTP/1.1 200 OK\r\n"])
    assert body == b"ok" and parser.complete and parser.extra_bytes
    parser, _ = parse([b"HTTP/1.1 204 No Content\r\n\r\n", b"junk"])
    assert parser.extra_bytes


def test_chunk_extensions_are_ignored() -> None:
    parser, body = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;name=value\r\nok\r\n0\r\n\r\n"])
    assert body == b"ok" and parser.complete


@pytest.mark.parametrize(("wire", "message"), [
    (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "switched protocols"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk-size line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX", "not followed by CRLF"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000, "bad chunk-size line"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, "longer than"),
])
def test_malformed_responses_say_what_is_wrong(wire: bytes, message: str) -> None:
    with pytest.raises(MalformedResponse, match=message):
        parse([wire])


@pytest.mark.parametrize(("wire", "message"), [
    (b"", "before sending a complete response head"),
    (b"HTTP/1.1 200 OK\r\nContent-Len", "before sending a complete response head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "7 bytes of the body still to come"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", "before the end of the chunked body"),
])
def test_a_close_before_the_end_is_an_error(wire: bytes, message: str) -> None:
    with pytest.raises(MalformedResponse, match=message):
        parse([wire], eof=True)


def test_request_head_gives_back_the_clients_exact_bytes() -> None:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape; encoding the same way restores them.
    raw_value = "caf\xe9 \udcff".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    head = request_head("POST", "/api/chat?x=%2F", "127.0.0.1:11434", [("X-Name", raw_value)])
    assert head == (b"POST /api/chat?x=%2F HTTP/1.1\r\nHost: 127.0.0.1:11434\r\n"
                    b"X-Name: caf\xc3\xa9 \xff\r\n\r\n")


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("pieces", [
    [b"line %d\n" % i for i in range(200)],  # the usual: token lines, no CRLF inside
    [b"a\r\nb", b"\r\n", b"c\r\n\r\n", b"\r\n0\r\n"] * 40,  # CRLF inside chunk data, even a fake last chunk
    [bytes(range(256))] * 8,  # binary
])
def test_reads_of_whole_chunks_decode_exactly(pieces: list[bytes]) -> None:
    """Big reads of whole chunks take the split-at-CRLF path; compare with byte-by-byte feeding, which never
    does."""
    wire = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces)
    for read_size in (512, 700, 4096, len(wire)):
        parser = ResponseParser()
        parser.feed(CHUNKED_HEAD)
        body = b"".join(parser.feed(wire[i:i + read_size]) for i in range(0, len(wire), read_size))
        body += parser.feed(b"0\r\n\r\n")
        assert body == b"".join(pieces) and parser.complete, read_size


@pytest.mark.parametrize(("size_line", "accepted"), [
    # Whitespace after the size is not in RFC 9112's grammar; llhttp refuses it, as it should.
    (b"5;name=value", True), (b"5 ", False), (b"0x5", False), (b"+5", False), (b"5_0", False), (b" ", False),
])
def test_chunk_sizes_in_big_reads_are_read_strictly(size_line: bytes, accepted: bool) -> None:
    wire = b"".join(b"3\r\nabc\r\n" for _ in range(100)) + size_line + b"\r\nhello\r\n"
    parser = ResponseParser()
    parser.feed(CHUNKED_HEAD)
    if accepted:
        assert parser.feed(wire) == b"abc" * 100 + b"hello"
    else:
        with pytest.raises(MalformedResponse, match="bad chunk-size line") as failure:
            parser.feed(wire)
        assert failure.value.body == b"abc" * 100  # the valid chunks before the fault are still relayed
