"""The API port of one relaying process: its listener, its HTTP server and the relay behind it.

The process the user started opens one, and so does each relay worker of ``--workers N`` (``workers``), on the
same address; only what they report to differs (the ``Recorder`` itself, or a worker's ``RemoteRecorder``).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ollama_metrics_proxy.config import Config, HostPort, default_data_dir
from ollama_metrics_proxy.metrics.recorder import RequestRecorder
from ollama_metrics_proxy.relay.front import FrontServer
from ollama_metrics_proxy.relay.hosts import AllowedHosts, is_loopback, remembered
from ollama_metrics_proxy.relay.listener import ConnectionGuard, default_max_connections, refusal_response
from ollama_metrics_proxy.relay.proxy import Proxy
from ollama_metrics_proxy.relay.tracecontext import TraceStarter
from ollama_metrics_proxy.upstream import UpstreamClient
from ollama_metrics_proxy.usage.identity import ClientIdentity, load_key

# After the grace of a stop, how long cancelled handlers get to record their requests.
CANCEL_WAIT_SECONDS: Final = 0.5


class StartupError(Exception):
    """A problem the user must fix (a port in use); shown as one line, exit status 2."""


def api_connection_limit(config: Config) -> int:
    return config.max_connections or default_max_connections()


def api_guard(config: Config, on_refused: Callable[[str], None]) -> ConnectionGuard:
    limit = api_connection_limit(config)
    return ConnectionGuard(limit, config.request_head_timeout,
                           refusal_response(f"ollama-metrics-proxy: too many connections (--max-connections "
                                            f"{limit}); try again"),
                           on_refused=on_refused)


@dataclass
class ApiPort:
    proxy: Proxy
    server: FrontServer
    listener: asyncio.Server
    address: HostPort

    def stop_accepting(self) -> None:
        """No new connections; those open finish their current request, then close."""
        self.listener.close()
        self.server.close_idle()

    async def finish(self, grace: float) -> None:
        """Wait up to ``grace`` for the requests in flight, cut the rest, close every connection."""
        await self.proxy.drain(grace, CANCEL_WAIT_SECONDS)
        self.server.close_all()


async def open_api_port(config: Config, recorder: RequestRecorder, upstream: UpstreamClient,
                        guard: ConnectionGuard, address: HostPort, *, reuse_port: bool = False) -> ApiPort:
    """Listen on ``address`` (``reuse_port``: beside the other relaying processes of ``--workers``)."""
    proxy = Proxy(upstream, recorder, client_identity=build_client_identity(config),
                  capture_content=config.log_content and config.log_db is not None,
                  inject_openai_usage=config.openai_usage == "inject",
                  host_allowed=api_host_check(config),
                  tracing=TraceStarter(config.otlp_trace_sample_ratio) if config.otlp_endpoint else None)
    # One handler for every path, on the proxy's own lean HTTP/1.1 server (``front``).
    server = FrontServer(proxy.handle, config.idle_timeout)
    try:
        listener = await asyncio.get_running_loop().create_server(
            guard.wrap(server.protocol), address.host, address.port, backlog=1024, reuse_address=True,
            reuse_port=reuse_port or None)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"cannot listen on {address} (--listen): {reason}") from None
    sockets = listener.sockets
    bound = HostPort(address.host, sockets[0].getsockname()[1] if sockets else address.port)
    return ApiPort(proxy, server, listener, bound)


def api_host_check(config: Config) -> Callable[[str | None], bool] | None:
    """Ollama's Host rule on the API port when it listens on loopback, as Ollama itself does; elsewhere the
    proxy is deliberately reachable and, like Ollama bound to 0.0.0.0, checks nothing."""
    if not is_loopback(config.listen.host):
        return None
    hosts = AllowedHosts(config.allowed_hosts, bound=config.listen.host)
    return None if hosts.everything else remembered(hosts.allows_like_ollama)


def build_client_identity(config: Config) -> ClientIdentity | None:
    if config.client_header is None or config.log_db is None:
        return None  # identities are only ever stored in the request log
    directory = default_data_dir()
    if not config.log_db.startswith(("postgresql://", "postgres://")):
        directory = os.path.dirname(os.path.abspath(config.log_db))
    key = load_key(config.client_hash_key, directory) if config.client_header.lower() == "authorization" else b""
    return ClientIdentity(config.client_header, key)
