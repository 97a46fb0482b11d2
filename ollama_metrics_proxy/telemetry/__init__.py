"""Telemetry: what the proxy samples beside the traffic: Ollama's state (``/api/ps``, ``/api/tags``), NVIDIA
GPUs through NVML, the Ollama processes and the host; each in its own sampler thread or task, read by
Prometheus collectors that only copy a snapshot at scrape time.

- ``sources``: the health of each source and the sampler thread they share;
- ``ollama_state``, ``gpu``, ``system``: the samplers;
- ``collectors``: the Prometheus collectors over their snapshots, and the waiting estimate.

May import: the top-level helpers, ``config`` and ``upstream`` (the poller is an HTTP client of Ollama). Only
``app`` imports it.
"""
