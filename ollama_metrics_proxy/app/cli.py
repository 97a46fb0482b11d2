"""Command-line entry point: ``ollama-metrics-proxy`` and ``python -m ollama_metrics_proxy``."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from ollama_metrics_proxy import __version__
from ollama_metrics_proxy.app.logs import setup_logging
from ollama_metrics_proxy.app.server import StartupError, probe_listen, run
from ollama_metrics_proxy.config import build_arg_parser, environment, load_config

PROG = "ollama-metrics-proxy"
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
    config, errors = load_config(args, environ if environ is not None else environment())
    notes = []
    if config is not None and args.check_config:
        # A port in use is not a configuration error: it is what a check next to the running service finds.
        for flag, address in (("--listen", config.listen), ("--metrics-listen", config.metrics_listen)):
            problem = probe_listen(address)
            if problem == "address already in use":
                notes.append(f"{flag} {address} is in use now (the running proxy?); starting another would fail "
                             "until it is free")
            elif problem is not None:
                errors.append(f"{flag} cannot listen on {address}: {problem}")
    if errors or config is None:
        for problem in errors:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"{PROG}: configuration is valid")
        for note in notes:
            print(f"{PROG}: note: {note}")
        for key, value in config.summary().items():
            print(f"  {key} = {value}")
        return 0
    setup_logging(config.log_level, config.log_format)
    try:
        run(config)
    except StartupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        pass
    return 0
