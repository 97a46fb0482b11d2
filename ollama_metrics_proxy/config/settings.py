"""The settings: defaults, the frozen ``Config`` every part of the proxy reads, and how it is shown.

``Config`` is built only by ``flags.load_config`` (or directly, by tests and embedders), after every value has
passed the checks in ``values``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollama_metrics_proxy.redact import redact_url

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
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


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
    otlp_trace_sample_ratio: float = 1.0  # requests without a sampled flag of their own
    event_loop: str = "auto"  # auto: uvloop when installed
    slo_ttft: float | None = None  # --slo-ttft: a generation's time to first token must not exceed it
    slo_tpot: float | None = None  # --slo-tpot: nor its time per output token

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
            "otlp_trace_sample_ratio": self.otlp_trace_sample_ratio,
            "event_loop": self.event_loop,
            "slo_ttft": self.slo_ttft if self.slo_ttft is not None else "off",
            "slo_tpot": self.slo_tpot if self.slo_tpot is not None else "off",
        }


def _shown(value: Any) -> Any:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else value
