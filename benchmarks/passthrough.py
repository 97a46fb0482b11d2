"""The floor for this stack: a bare aiohttp passthrough that streams bytes both ways and measures nothing.

    python -m benchmarks.passthrough LISTEN_PORT UPSTREAM_URL

The textbook aiohttp relay: aiohttp's server, one ClientSession (no timeouts, no connection limit, bytes
verbatim) and ``iter_any()``, on the same event loop as the proxy (uvloop when installed), with none of the
observing, metrics, logging or request log. The proxy's relay talks to the upstream through its own leaner
HTTP/1.1 client (``ollama_metrics_proxy/upstream``) instead of ClientSession, which is why it can come out
ahead of this floor on small requests.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web
from yarl import URL

from benchmarks import use_uvloop

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
              "proxy-authorization", "proxy-authenticate"}


def build(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        yield
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content.iter_any() if request.body_exists else None
        async with request.app["session"].request(
            request.method, URL(upstream + request.raw_path, encoded=True), headers=headers, data=body,
            allow_redirects=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status,
                headers={k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    use_uvloop()
    web.run_app(build(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
                handler_cancellation=True)


if __name__ == "__main__":
    main()
