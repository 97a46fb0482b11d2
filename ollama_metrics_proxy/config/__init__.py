"""Configuration: command-line flags with environment fallback, validated into a frozen ``Config``.

- ``settings``: the defaults and the frozen ``Config`` dataclass every other part reads;
- ``values``: one check per kind of value, each raising ``ConfigError`` with a message for the user;
- ``flags``: the table of flags (flag, variable, check, default, help) and ``load_config``, which merges flags,
  environment and defaults and returns every problem at once;
- ``webconfig``: the Prometheus exporter-toolkit web-config file (TLS and basic auth of the metrics port).

May import: the top-level helpers (``redact``) and nothing else of the package, so every layer can read it.
"""

from ollama_metrics_proxy.config.flags import OPTIONS, Option, build_arg_parser, environment, load_config
from ollama_metrics_proxy.config.settings import (
    DEFAULT_METRICS_PORT,
    ENV_PREFIX,
    Config,
    ConfigError,
    HostPort,
)
from ollama_metrics_proxy.config.values import default_data_dir, upstream_from_ollama_host

__all__ = [
    "DEFAULT_METRICS_PORT",
    "ENV_PREFIX",
    "OPTIONS",
    "Config",
    "ConfigError",
    "HostPort",
    "Option",
    "build_arg_parser",
    "default_data_dir",
    "environment",
    "load_config",
    "upstream_from_ollama_host",
]
