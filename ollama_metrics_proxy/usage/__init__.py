"""Keeping usage: who used which model, kept per request and read back.

- ``store``: the request log's database (SQLite, or PostgreSQL for a fleet) behind one interface;
- ``request_log``: the writer thread that turns finished exchanges into rows;
- ``content``: the opt-in prompt and response text (``--log-content``);
- ``identity``: the client of a request (a header, or a keyed hash of its bearer token);
- ``live_stats``: rolling totals for the live page;
- ``analytics``: the JSON usage API and the live page on the metrics port.

May import: the top-level helpers, ``config`` and ``observe``. ``metrics``, ``relay`` and ``app`` import it.
"""
