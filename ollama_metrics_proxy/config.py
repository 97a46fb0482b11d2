"""Configuration: command-line flags with environment fallback, validated into a frozen dataclass.

Precedence is flag > environment > default. Every flag has an environment variable named
``OLLAMA_METRICS_PROXY_<FLAG>``; Ollama's own ``OLLAMA_HOST`` is read only as a fallback for the upstream,
because it is also Ollama's bind address and the clients' target (see ``upstream_from_ollama_host``).
Validation never stops at the first problem: ``load_config`` returns every error it found, one line each.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ollama_metrics_proxy.otel import parse_headers
from ollama_metrics_proxy.redact import redact_url
from ollama_metrics_proxy.webconfig import WebConfigError, load_web_config

ENV_PREFIX = "OLLAMA_METRICS_PROXY_"
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
DEFAULT_LISTEN = "127.0.0.1:11435"
# 9100-9999 is the exporters' range; 9100, 9400, 9497, 9835 and 9464 (OpenTelemetry) are taken by exporters
# an Ollama host is likely to run beside us.
DEFAULT_METRICS_PORT = 9934
DEFAULT_METRICS_LISTEN = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
MAX_WORKERS = 64
OLLAMA_DEFAULT_PORT = 11434
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
GPU_MODES = ("off", "auto", "on")
OPENAI_USAGE_MODES = ("off", "inject")


class ConfigError(ValueError):
    """One problem with one setting; the message is shown to the user as is."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    upstream: str = DEFAULT_UPSTREAM
    listen: HostPort = HostPort("127.0.0.1", 11435)
    metrics_listen: HostPort = HostPort("127.0.0.1", DEFAULT_METRICS_PORT)
    connect_timeout: float = 10.0
    max_models: int = 100
    ollama_poll_interval: float = 15.0
    log_level: str = "info"
    log_format: str = "text"
    gpu: str = "auto"
    gpu_interval: float = 5.0
    ollama_process: bool = True
    host_metrics: bool = True
    system_interval: float = 5.0
    ollama_pid: int | None = None
    models_dir: str | None = None
    log_db: str | None = None  # None: the request log is off; a file path (SQLite) or a postgresql:// URL
    log_retention_days: float = 30.0
    log_max_rows: int = 1_000_000
    log_content: bool = False
    log_content_max_bytes: int = 4096
    client_header: str | None = None
    admin_token: str | None = None
    openai_usage: str = "off"
    client_hash_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    shutdown_grace: float = 8.0
    max_connections: int = 0  # 0: from the open-file limit, two descriptors per request in flight
    idle_timeout: float = 75.0
    workers: int = 1
    request_head_timeout: float = 10.0
    web_config_file: str | None = None
    ollama_num_parallel: int | None = None
    otlp_endpoint: str | None = None
    otlp_interval: float = 60.0
    otlp_headers: tuple[tuple[str, str], ...] = ()

    def summary(self) -> dict[str, Any]:
        """The effective configuration, for the start-up log line and --check-config: switches as on/off."""
        return {key: _shown(value) for key, value in self._summary().items()}

    def _summary(self) -> dict[str, Any]:
        return {
            "upstream": redact_url(self.upstream),
            "listen": str(self.listen),
            "metrics_listen": str(self.metrics_listen),
            "connect_timeout": self.connect_timeout,
            "max_models": self.max_models,
            "ollama_poll_interval": self.ollama_poll_interval,
            "log_level": self.log_level,
            "log_format": self.log_format,
            "gpu": self.gpu,
            "gpu_interval": self.gpu_interval,
            "ollama_process": self.ollama_process,
            "host_metrics": self.host_metrics,
            "system_interval": self.system_interval,
            "ollama_pid": self.ollama_pid,
            "models_dir": self.models_dir,
            "log_db": redact_url(self.log_db) if self.log_db else "off",
            "log_retention_days": self.log_retention_days,
            "log_max_rows": self.log_max_rows,
            "log_content": self.log_content,
            "client_header": self.client_header,
            "admin_token": "set" if self.admin_token else "not set (mutating endpoints disabled)",
            "openai_usage": self.openai_usage,
            "client_hash_key": "set" if self.client_hash_key else "kept beside the request log",
            "allowed_hosts": ",".join(self.allowed_hosts) or "this machine's names and addresses",
            "shutdown_grace": self.shutdown_grace,
            "max_connections": self.max_connections or "from the open-file limit",
            "idle_timeout": self.idle_timeout,
            "workers": self.workers,
            "request_head_timeout": self.request_head_timeout,
            "web_config_file": self.web_config_file or "none (plain HTTP, no authentication)",
            "ollama_num_parallel": self.ollama_num_parallel or "from the Ollama process when visible",
            "otlp_endpoint": redact_url(self.otlp_endpoint) if self.otlp_endpoint else "off",
            "otlp_interval": self.otlp_interval,
            "otlp_headers": ",".join(f"{name}=***" for name, _ in self.otlp_headers) or "none",
        }


# ---------------------------------------------------------------- value parsers


def _shown(value: Any) -> Any:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else value


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
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"must be a number of seconds, got {text!r}") from None
    if not 0 <= value <= 86_400:
        raise ConfigError(f"must be from 0 to 86400 seconds, got {text!r}")
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
    try:
        return tuple(parse_headers(text).items())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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


def choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ConfigError(f"must be one of {', '.join(options)}; got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------- option table


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    parse: Callable[[str], Any]
    default: str
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("upstream", "--upstream", parse_upstream, DEFAULT_UPSTREAM,
           "Ollama base URL to forward to (OLLAMA_HOST is used when neither flag nor variable is set)"),
    Option("listen", "--listen", parse_listen, DEFAULT_LISTEN,
           "address for the Ollama API that clients connect to"),
    Option("metrics_listen", "--metrics-listen", parse_metrics_listen, DEFAULT_METRICS_LISTEN,
           "address for /metrics, /-/healthy and /-/ready"),
    Option("connect_timeout", "--connect-timeout", parse_positive_float, "10",
           "seconds to wait for a TCP connection to the upstream (there is no total or read timeout)"),
    Option("max_models", "--max-models", parse_positive_int, "100",
           "distinct model label values before new models are reported as 'other'"),
    Option("ollama_poll_interval", "--ollama-poll-interval", parse_positive_float, "15",
           "seconds between polls of the upstream's /api/version, /api/ps and /api/tags"),
    Option("log_level", "--log-level", choice(LOG_LEVELS), "info", "debug logs one line per request"),
    Option("log_format", "--log-format", choice(LOG_FORMATS), "text", "text or json (one object per line)"),
    Option("gpu", "--gpu", choice(GPU_MODES), "auto",
           "NVIDIA GPU metrics through NVML: auto (when a driver is found), on (fail without one), off"),
    Option("gpu_interval", "--gpu-interval", parse_positive_float, "5", "seconds between NVML samples"),
    Option("ollama_process", "--ollama-process", parse_switch, "on",
           "CPU and memory of the Ollama server and runner processes, when visible from here"),
    Option("host_metrics", "--host-metrics", parse_switch, "on",
           "host CPU and memory, and disk usage of the models directory"),
    Option("system_interval", "--system-interval", parse_positive_float, "5",
           "seconds between samples of the Ollama processes and the host"),
    Option("ollama_pid", "--ollama-pid", parse_optional_pid, "",
           "PID of the Ollama server (default: found by name)"),
    Option("models_dir", "--models-dir", parse_models_dir, "",
           "Ollama's models directory (default: OLLAMA_MODELS, else ~/.ollama/models when it exists)"),
    Option("log_db", "--log-db", parse_log_db, "",
           "request log: an SQLite file (default requests.sqlite3 under $XDG_DATA_HOME/ollama-metrics-proxy), "
           "a postgresql:// URL for a fleet, or off"),
    Option("log_retention_days", "--log-retention-days", parse_positive_float, "30",
           "delete request-log records older than this many days"),
    Option("log_max_rows", "--log-max-rows", parse_positive_int, "1000000",
           "keep at most this many request-log records (oldest deleted first)"),
    Option("log_content", "--log-content", parse_switch, "off",
           "also store prompt and response text in the request log (off: never stored)"),
    Option("log_content_max_bytes", "--log-content-max-bytes", parse_positive_int, "4096",
           "with --log-content, keep at most this many bytes of each prompt and response"),
    Option("client_header", "--client-header", parse_header_name, "",
           "request header naming the client (e.g. X-User set by a gateway); Authorization is stored as a hash"),
    Option("ollama_num_parallel", "--ollama-num-parallel", parse_optional_pid, "",
           "Ollama's OLLAMA_NUM_PARALLEL, for the estimate of requests waiting for a slot, when the proxy cannot "
           "read it from the Ollama server's environment"),
    Option("otlp_endpoint", "--otlp-endpoint", parse_otlp_endpoint, "",
           "push the OpenTelemetry GenAI metrics over OTLP/HTTP to this collector URL (off by default; "
           "/v1/metrics is added to a URL without a path)"),
    Option("otlp_interval", "--otlp-interval", parse_positive_float, "60", "seconds between OTLP pushes"),
    Option("otlp_headers", "--otlp-headers", parse_otlp_headers, "",
           "headers for the OTLP pushes, name=value pairs separated by commas (authentication). Prefer the "
           "variable"),
    Option("web_config_file", "--web-config-file", parse_web_config_file, "",
           "TLS and basic authentication for the metrics listener, in the Prometheus exporter-toolkit "
           "web-config format (tls_server_config, basic_auth_users with bcrypt hashes)"),
    Option("max_connections", "--max-connections", parse_connection_limit, "auto",
           "most client connections the API port holds at once; more are answered 503 and counted "
           "(auto: half the open-file limit left after a reserve, as each request uses two descriptors)"),
    Option("idle_timeout", "--idle-timeout", parse_positive_float, "75",
           "seconds a client connection may stay idle between requests (nginx's default keep-alive)"),
    Option("workers", "--workers", parse_workers, "1",
           "processes relaying on the API port (SO_REUSEPORT); this process also records every request, so "
           "metrics, the request log and the usage API stay one. More than 1 only pays on a machine whose "
           "relay saturates one core"),
    Option("request_head_timeout", "--request-head-timeout", parse_positive_float, "10",
           "seconds a new connection has to send its first request head (against slowloris)"),
    Option("shutdown_grace", "--shutdown-grace", parse_non_negative_float, "8",
           "seconds that requests in flight may take to finish after SIGTERM before they are cut (the whole "
           "stop takes at most this plus 2; the default fits docker stop's 10)"),
    Option("allowed_hosts", "--allowed-hosts", parse_host_list, "",
           "more Host names both listeners answer, comma-separated (.example.com for a domain, * for any); "
           "by default only this machine's names and addresses, against DNS rebinding"),
    Option("client_hash_key", "--client-hash-key", parse_secret, "",
           "secret key for hashing bearer tokens into client identities (default: a random key kept beside the "
           "request log); give every proxy of a fleet the same one. Prefer the variable"),
    Option("admin_token", "--admin-token", parse_secret, "",
           "bearer token for mutating endpoints (DELETE /-/logs); unset: they are disabled. Prefer the variable"),
    Option("openai_usage", "--openai-usage", choice(OPENAI_USAGE_MODES), "off",
           "inject: ask streamed /v1/chat/completions and /v1/completions requests for usage (include_usage) "
           "and remove what that adds to the reply, for exact token counts; off: count content chunks"),
)


# How --help names each value (as the README's configuration table does) and what it shows as the default where
# the default is worked out at start rather than written in the table above.
METAVARS = {
    "upstream": "URL", "listen": "HOST:PORT", "metrics_listen": "HOST:PORT", "connect_timeout": "SECONDS",
    "max_models": "N", "ollama_poll_interval": "SECONDS", "log_level": "LEVEL", "log_format": "FORMAT",
    "gpu": "MODE", "gpu_interval": "SECONDS", "ollama_process": "on|off", "host_metrics": "on|off",
    "system_interval": "SECONDS", "ollama_pid": "PID", "models_dir": "PATH", "log_db": "TARGET",
    "log_retention_days": "DAYS", "log_max_rows": "N", "log_content": "on|off", "log_content_max_bytes": "N",
    "client_header": "NAME", "admin_token": "TOKEN", "openai_usage": "MODE", "client_hash_key": "KEY",
    "allowed_hosts": "NAMES", "shutdown_grace": "SECONDS", "max_connections": "N", "idle_timeout": "SECONDS",
    "workers": "N",
    "request_head_timeout": "SECONDS", "web_config_file": "PATH", "ollama_num_parallel": "N",
    "otlp_endpoint": "URL", "otlp_interval": "SECONDS", "otlp_headers": "HEADERS",
}
SHOWN_DEFAULTS = {
    "ollama_pid": "found by name",
    "models_dir": "$OLLAMA_MODELS, else ~/.ollama/models if it exists",
    "log_db": "requests.sqlite3 under $XDG_DATA_HOME/ollama-metrics-proxy",
    "client_header": "none",
    "admin_token": "none: mutating endpoints off",
    "client_hash_key": "a random key beside the request log",
    "allowed_hosts": "none: this machine's names and addresses only",
    "web_config_file": "none: plain HTTP, no authentication",
    "ollama_num_parallel": "read from the Ollama server's environment",
    "otlp_endpoint": "off",
    "otlp_headers": "none",
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit status 2, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="ollama-metrics-proxy",
        description="Transparent metrics proxy for Ollama. Every flag can also be set through the environment "
        "variable shown in brackets; flags win.",
    )
    for option in OPTIONS:
        default = SHOWN_DEFAULTS.get(option.field, option.default)
        parser.add_argument(
            option.flag, dest=option.field, default=None, metavar=METAVARS[option.field],
            help=f"{option.help} [{option.env}, default {default}]",
        )
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print every problem, and exit (0 when valid)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Config | None, list[str]]:
    """Merge flags, environment and defaults; return the config, or None and every problem found."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for option in OPTIONS:
        raw, source = _raw_value(option, args, environ)
        try:
            values[option.field] = option.parse(raw)
        except ConfigError as exc:
            errors.append(f"{source} {exc}")
    if not errors and values["listen"] == values["metrics_listen"] and values["listen"].port != 0:
        errors.append(f"--listen and --metrics-listen are both {values['listen']}; give them different ports")
    if errors:
        return None, errors
    return Config(**values), []


def _raw_value(option: Option, args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    flag_value = getattr(args, option.field)
    if flag_value is not None:
        return flag_value, option.flag
    if option.env in environ:
        return environ[option.env], option.env
    if option.field == "upstream" and environ.get("OLLAMA_HOST"):
        return upstream_from_ollama_host_raw(environ["OLLAMA_HOST"]), "OLLAMA_HOST"
    if option.field == "models_dir" and environ.get("OLLAMA_MODELS"):
        return environ["OLLAMA_MODELS"], "OLLAMA_MODELS"
    return option.default, f"default for {option.flag}"


def upstream_from_ollama_host_raw(value: str) -> str:
    """Like ``upstream_from_ollama_host`` but returns the raw text on failure so the error names it."""
    try:
        return upstream_from_ollama_host(value)
    except ConfigError:
        return value


def environment() -> Mapping[str, str]:
    return os.environ
