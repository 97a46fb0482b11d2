"""Measuring: the Prometheus families and the OpenTelemetry instruments, and the recorder that turns one
finished ``Exchange`` into every figure the proxy keeps.

- ``families``: every request metric (names, help, labels and buckets together), on an injected registry;
- ``labels``: bounded label values (the model budget, the finish-reason set);
- ``otel``: the GenAI semantic-convention metrics pushed over OTLP; ``tracing``: a span per request, likewise;
- ``loads``: why a model load a request reports happened (not loaded, expired, options changed);
- ``slo``: goodput, whether a generation met ``--slo-ttft`` and ``--slo-tpot``;
- ``recorder``: one exchange recorded once, in metrics, the request log, live stats and OTLP.

May import: the top-level helpers, ``config``, ``observe`` and ``usage`` (the recorder writes the request log).
``relay`` and ``app`` import it.
"""
