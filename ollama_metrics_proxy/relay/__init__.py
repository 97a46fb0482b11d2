"""Relaying: the API port, where every client request streams through to Ollama and back byte for byte.

- ``front`` (the connection protocol on llhttp) and ``request`` (one request and its response on the socket);
- ``proxy``: one exchange end to end: classify the endpoint, forward, relay the reply while an observer reads it,
  hand the finished ``Exchange`` to the recorder;
- ``hosts`` (the Host check against DNS rebinding), ``listener`` (the connection cap and head deadline),
  ``openai_usage`` (``--openai-usage inject``), ``tracecontext`` (W3C ``traceparent`` in and out),
  ``api_port`` (the port put together), ``workers`` (the
  ``--workers`` processes that share it).

May import: the top-level helpers, ``config``, ``upstream``, ``observe``, ``usage`` and ``metrics``. Only ``app``
imports it.
"""
