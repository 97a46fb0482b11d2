"""The flag table: every setting's flag, environment variable, check, default and help, and how they merge.

Precedence is flag > environment > default. Every flag has an environment variable named
``OLLAMA_METRICS_PROXY_<FLAG>``; Ollama's own ``OLLAMA_HOST`` is read only as a fallback for the upstream,
because it is also Ollama's bind address and the clients' target (see ``values.upstream_from_ollama_host``).
Validation never stops at the first problem: ``load_config`` returns every error it found, one line each.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ollama_metrics_proxy.config.settings import (
    DEFAULT_LISTEN,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_UPSTREAM,
    ENV_PREFIX,
    GPU_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    OPENAI_USAGE_MODES,
    Config,
    ConfigError,
)
from ollama_metrics_proxy.config.values import (
    choice,
    parse_connection_limit,
    parse_event_loop,
    parse_header_name,
    parse_host_list,
    parse_listen,
    parse_log_db,
    parse_metrics_listen,
    parse_models_dir,
    parse_non_negative_float,
    parse_optional_pid,
    parse_optional_seconds,
    parse_otlp_endpoint,
    parse_otlp_headers,
    parse_positive_float,
    parse_positive_int,
    parse_ratio,
    parse_secret,
    parse_switch,
    parse_upstream,
    parse_web_config_file,
    parse_workers,
    upstream_from_ollama_host,
)


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
    Option("event_loop", "--event-loop", parse_event_loop, "auto",
           "auto (uvloop when installed, the faster loop), asyncio (Python's own) or uvloop"),
    Option("slo_ttft", "--slo-ttft", parse_optional_seconds, "",
           "goodput: a generation meets its service level only if its time to first token is at most this many "
           "seconds (ollama_slo_requests_total; off by default)"),
    Option("slo_tpot", "--slo-tpot", parse_optional_seconds, "",
           "goodput: ... and its time per output token at most this many seconds (off by default)"),
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
    Option("otlp_trace_sample_ratio", "--otlp-trace-sample-ratio", parse_ratio, "1",
           "with --otlp-endpoint, the share of requests without a sampled flag of their own (an incoming "
           "traceparent's is respected) that become spans, 0 to 1"),
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
    "otlp_endpoint": "URL", "otlp_interval": "SECONDS", "otlp_headers": "HEADERS", "event_loop": "LOOP",
    "slo_ttft": "SECONDS", "slo_tpot": "SECONDS", "otlp_trace_sample_ratio": "RATIO",
}
SHOWN_DEFAULTS = {
    "slo_ttft": "off",
    "slo_tpot": "off",
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
