"""The program: the command line, the process that wires every part together, and the metrics port.

- ``cli``: ``ollama-metrics-proxy`` and ``python -m ollama_metrics_proxy``: flags, ``--check-config``, start;
- ``server``: builds the registry, the samplers, the request log, the API port and the metrics port, and stops
  them in order;
- ``admin``: the metrics port's own routes (``/metrics``, health, readiness) with the web config's TLS and auth;
- ``logs``, ``eventloop``: the process's logging and its event loop (uvloop when installed);
- ``relay_worker``: the entry point of each ``--workers`` process.

May import: everything. Nothing imports it (``relay.workers`` starts ``relay_worker`` as a process by name).
"""
