"""A fast stand-in for Ollama, built on bare asyncio protocols so that it is never the bottleneck.

    python -m benchmarks.upstream PORT

Routes (the query string sets the shape; the request body is read and ignored, as Ollama would parse it):
- POST /api/chat?tokens=N&delay=S&stream=1   NDJSON, one chunk per token, then Ollama's final done:true line
- POST /api/chat?tokens=N&stream=0           one JSON object
- POST /v1/chat/completions?tokens=N&delay=S OpenAI SSE with a usage chunk and [DONE]
- POST /api/blobs/sha256:...                 consumes the upload, answers 201
Responses are precomputed bytes; chunks are written with one transport.write each, chunked encoding as Ollama.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

from benchmarks import serve_forever, use_uvloop

TOKEN_LINE = (b'{"model":"bench","created_at":"2026-11-23T12:00:00.000000Z",'
              b'"message":{"role":"assistant","content":" word"},"done":false}\n')


def reply(tokens: int, content: bytes) -> bytes:
    """Ollama's done:true object: the final stream line (empty content) or a whole non-streamed reply."""
    return (b'{"model":"bench","created_at":"2026-11-23T12:00:01.000000Z","message":{"role":"assistant","content":"'
            + content + b'"},"done":true,"done_reason":"stop","total_duration":1000000000,"load_duration":1000000,'
            b'"prompt_eval_count":12,"prompt_eval_duration":10000000,"eval_count":' + str(tokens).encode()
            + b',"eval_duration":900000000}')


SSE_TOKEN = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1760700847,"model":"bench",'
             b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"content":" word"},'
             b'"finish_reason":null}]}\n\n')
SSE_FINISH = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1760700847,"model":"bench",'
              b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')


def sse_usage(tokens: int) -> bytes:
    return (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1760700847,"model":"bench",'
            b'"system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":'
            + str(tokens).encode() + b',"total_tokens":' + str(tokens + 12).encode() + b'}}\n\n')


STATE = {
    "/api/version": b'{"version":"0.33.0"}',
    "/api/ps": b'{"models":[{"name":"bench:latest","model":"bench:latest","size":1000,"size_vram":1000,'
               b'"expires_at":"2099-01-01T00:00:00Z","context_length":4096,"details":{}}]}',
    "/api/tags": b'{"models":[{"name":"bench:latest","model":"bench:latest","size":1000,"details":{}}]}',
}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def head(status: str, content_type: bytes, length: int | None) -> bytes:
    framing = b"Content-Length: %d\r\n" % length if length is not None else b"Transfer-Encoding: chunked\r\n"
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type + b"\r\n" + framing
            + b"Date: Mon, 23 Nov 2026 12:00:00 GMT\r\n\r\n")


class OllamaStandIn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.body_left = 0
        self.chunked_body = False
        self.request: tuple[str, str] | None = None
        self.busy = False
        self.responding: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.process()

    def process(self) -> None:
        while not self.busy:
            if self.request is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                header = bytes(self.buffer[:end]).decode("latin-1")
                del self.buffer[: end + 4]
                lines = header.split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                fields = {key.strip().lower(): value.strip()
                          for key, value in (line.split(":", 1) for line in lines[1:] if ":" in line)}
                self.request = (method, target)
                self.chunked_body = fields.get("transfer-encoding", "").lower() == "chunked"
                self.body_left = int(fields.get("content-length", "0"))
            if not self.consume_body():
                return
            _, target = self.request
            self.request = None
            self.busy = True
            self.responding = asyncio.ensure_future(self.respond(target))

    def consume_body(self) -> bool:
        """Discard the request body; True once all of it arrived."""
        if self.chunked_body:
            while True:
                line_end = self.buffer.find(b"\r\n")
                if line_end < 0:
                    return False
                size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
                if len(self.buffer) < line_end + 2 + size + 2:
                    return False
                del self.buffer[: line_end + 2 + size + 2]
                if size == 0:
                    self.chunked_body = False
                    return True
        take = min(self.body_left, len(self.buffer))
        del self.buffer[:take]
        self.body_left -= take
        return self.body_left == 0

    async def respond(self, target: str) -> None:
        transport = self.transport
        assert transport is not None
        parts = urlsplit(target)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        tokens = int(query.get("tokens", "100"))
        delay = float(query.get("delay", "0"))
        try:
            if parts.path in STATE:  # what the proxy polls in the background
                body = STATE[parts.path]
                transport.write(head("200 OK", b"application/json; charset=utf-8", len(body)) + body)
            elif parts.path.startswith("/api/blobs/"):
                transport.write(head("201 Created", b"text/plain", 0))
            elif parts.path == "/v1/chat/completions":
                await self.stream(transport, b"text/event-stream", SSE_TOKEN, tokens, delay,
                                  SSE_FINISH + sse_usage(tokens) + b"data: [DONE]\n\n")
            elif query.get("stream", "1") == "0":
                body = reply(tokens, b" word" * tokens)
                transport.write(head("200 OK", b"application/json; charset=utf-8", len(body)) + body)
            else:
                await self.stream(transport, b"application/x-ndjson", TOKEN_LINE, tokens, delay,
                                  reply(tokens, b"") + b"\n")
        except ConnectionError:
            return
        self.busy = False
        if not transport.is_closing():
            self.process()

    async def stream(self, transport: asyncio.Transport, content_type: bytes, piece: bytes, tokens: int,
                     delay: float, tail: bytes) -> None:
        transport.write(head("200 OK", content_type, None))
        framed = chunk(piece)
        for _ in range(tokens):
            if delay:
                await asyncio.sleep(delay)
            if transport.is_closing():
                raise ConnectionError
            transport.write(framed)
        transport.write(chunk(tail) + b"0\r\n\r\n")


def main() -> None:
    use_uvloop()
    asyncio.run(serve_forever(OllamaStandIn, int(sys.argv[1])))


if __name__ == "__main__":
    main()
