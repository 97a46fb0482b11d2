"""The value checks: each turns one setting's text into its value or raises ``ConfigError`` with a message
that is shown to the user as is (after the flag or variable it came from).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from ollama_metrics_proxy.config.settings import (
    DEFAULT_LISTEN,
    DEFAULT_METRICS_LISTEN,
    EVENT_LOOPS,
    MAX_WORKERS,
    OLLAMA_DEFAULT_PORT,
    ConfigError,
    HostPort,
)
from ollama_metrics_proxy.config.webconfig import WebConfigError, load_web_config
from ollama_metrics_proxy.redact import redact_url


def parse_upstream(text: str) -> str:
    """An http(s) base URL; a path prefix is kept, a trailing slash dropped."""
    try:
        parts = urlsplit(text.strip())
    except ValueError as exc:  # an unclosed IPv6 bracket, …
        raise ConfigError(f"is not a URL ({exc}): {redact_url(text)!r}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"must be an http:// or https:// URL, got {redact_url(text)!r}")
    try:
        hostname = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"is not a URL ({exc}): {redact_url(text)!r}") from None
    if not hostname:
        raise ConfigError(f"has no host: {redact_url(text)!r}")
    try:
        parts.port  # noqa: B018 - property access validates the port
    except ValueError:
        raise ConfigError(f"has a bad port: {redact_url(text)!r}") from None
    if parts.query or parts.fragment:
        raise ConfigError(f"must not have a query or fragment: {redact_url(text)!r}")
    return text.strip().rstrip("/")


def upstream_from_ollama_host(value: str) -> str:
    """Interpret ``OLLAMA_HOST`` the way Ollama's clients do, mapping a wildcard bind address to loopback."""
    value = value.strip()
    scheme = "http"
    if "://" in value:
        scheme, value = value.split("://", 1)
    value = value.rstrip("/")
    host_port, _, path = value.partition("/")
    host, port = _split_host_port(host_port, default_port=OLLAMA_DEFAULT_PORT)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    shown_host = f"[{host}]" if ":" in host else host
    suffix = f"/{path}" if path else ""
    return parse_upstream(f"{scheme}://{shown_host}:{port}{suffix}")


def _split_host_port(text: str, default_port: int | None = None, example: str = "127.0.0.1:11435"
                     ) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"unclosed '[' in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ConfigError(f"write an IPv6 address in brackets, like [::1]:{example.rsplit(':', 1)[1]}, got "
                          f"{text!r}")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ConfigError(f"needs a port, like {example}, got {text!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"has a bad port {port_text!r} (0-65535)")
    return host, int(port_text)


def parse_listen(text: str, example: str = DEFAULT_LISTEN) -> HostPort:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6); port 0 picks a free port."""
    host, port = _split_host_port(text.strip(), example=example)
    if not host:
        raise ConfigError(f"needs a host, like 127.0.0.1:{port} or 0.0.0.0:{port}, got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" and not all(part.isalnum() or "-" in part for part in host.split(".")):
            raise ConfigError(f"has a bad host {host!r}") from None
    return HostPort(host, port)


def parse_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"must be greater than 0, got {text!r}")
    return value


def parse_non_negative_float(text: str) -> float:
    return _number_within(text, 0, 86_400, "a number of seconds", "from 0 to 86400 seconds")


def _number_within(text: str, low: float, high: float, kind: str, bounds: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"must be {kind}, got {text!r}") from None
    if not low <= value <= high:  # also false for nan
        raise ConfigError(f"must be {bounds}, got {text!r}")
    return value


def parse_metrics_listen(text: str) -> HostPort:
    return parse_listen(text, example=DEFAULT_METRICS_LISTEN)


def parse_otlp_endpoint(text: str) -> str | None:
    if not text.strip():
        return None
    try:
        parts = urlsplit(text.strip())
        hostname = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"is not a URL ({exc}): {redact_url(text)!r}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"must be an http:// or https:// URL of an OTLP collector, got {redact_url(text)!r}")
    return text.strip()


def parse_otlp_headers(text: str) -> tuple[tuple[str, str], ...]:
    """``name=value,name2=value2``, as OTEL_EXPORTER_OTLP_HEADERS."""
    headers = {}
    for number, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            # Never the entry itself: without its "=" a header's value is all there is of it.
            raise ConfigError(f"headers are name=value pairs separated by commas; entry {number} has no "
                              f"{'name' if equals else '='}")
        headers[name.strip()] = value.strip()
    return tuple(headers.items())


def parse_web_config_file(text: str) -> str | None:
    path = os.path.expanduser(text.strip())
    if not path:
        return None
    try:
        load_web_config(path)
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None
    return path


def parse_connection_limit(text: str) -> int:
    if text.strip().lower() == "auto":
        return 0
    return parse_positive_int(text)


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def parse_workers(text: str) -> int:
    workers = parse_positive_int(text)
    if workers > MAX_WORKERS:
        raise ConfigError(f"must be at most {MAX_WORKERS}, got {text!r}")
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("needs SO_REUSEPORT (Linux, BSD, macOS) to share the port between processes; use 1 here")
    return workers


def parse_switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"must be on or off, got {text!r}")


def parse_ratio(text: str) -> float:
    return _number_within(text, 0, 1, "a number from 0 to 1", "a number from 0 to 1")


def parse_optional_seconds(text: str) -> float | None:
    """Empty: off; else a positive number of seconds."""
    if not text.strip():
        return None
    return parse_positive_float(text)


def parse_optional_pid(text: str) -> int | None:
    if not text.strip():
        return None
    return parse_positive_int(text)


def parse_models_dir(text: str) -> str | None:
    """A directory to report disk usage for; empty means ~/.ollama/models when it exists."""
    if not text.strip():
        default = os.path.expanduser("~/.ollama/models")
        return default if os.path.isdir(default) else None
    path = os.path.expanduser(text.strip())
    if not os.path.isdir(path):
        raise ConfigError(f"is not a directory: {text!r}")
    return path


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "ollama-metrics-proxy")


def parse_log_db(text: str) -> str | None:
    """``off``, a ``postgresql://`` URL, or an SQLite file path (empty: requests.sqlite3 in the data directory)."""
    value = text.strip()
    if value.lower() == "off":
        return None
    if value.startswith(("postgresql://", "postgres://")):
        if not urlsplit(value).hostname and "host=" not in value:
            raise ConfigError(f"PostgreSQL URL has no host: {redact_url(value)!r}")
        return value
    if "://" in value:
        raise ConfigError(f"must be off, a file path or a postgresql:// URL, got {redact_url(value)!r}")
    if not value:  # the default: its directory is the proxy's own, made on first start
        path = os.path.join(default_data_dir(), "requests.sqlite3")
        _check_writable(_nearest_existing(os.path.dirname(path)), path)
        return path
    path = os.path.abspath(os.path.expanduser(value))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot hold a database: the directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"is a directory; name a file in it, like {os.path.join(path, 'requests.sqlite3')!r}")
    _check_writable(directory, path)
    return path


def _nearest_existing(directory: str) -> str:
    while not os.path.exists(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return directory


def _check_writable(directory: str, path: str) -> None:
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot hold a database: {directory!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot be written by this user: {path!r} (choose another path with --log-db, "
                          "or --log-db off)")


def parse_header_name(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    if not all(char.isalnum() or char in "-_" for char in value):
        raise ConfigError(f"must be an HTTP header name like X-User, got {text!r}")
    return value


def parse_host_list(text: str) -> tuple[str, ...]:
    """Comma-separated host names (``proxy.example.com``), domains (``.example.com``) or ``*``."""
    hosts = tuple(entry.strip() for entry in text.split(",") if entry.strip())
    for host in hosts:
        if "/" in host or "@" in host or " " in host:
            raise ConfigError(f"must be host names separated by commas (like ollama.example.com,.internal), "
                              f"got {host!r}")
    return hosts


def parse_secret(text: str) -> str | None:
    value = text.strip()
    if value and len(value) < 16:
        raise ConfigError("must be at least 16 characters (use a random token, e.g. `openssl rand -hex 24`)")
    return value or None


def parse_event_loop(text: str) -> str:
    value = choice(EVENT_LOOPS)(text)
    if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("uvloop is not installed (pip install 'ollama-metrics-proxy[fast]'), or use auto")
    return value


def choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ConfigError(f"must be one of {', '.join(options)}; got {text!r}")
        return value

    return parse
