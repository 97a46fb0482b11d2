"""No input to the metrics listener answers 500: each bad parameter is a 400 naming it, a bad token a 401.

The findings first, each as it was reported, then ``hypothesis`` throws query strings and headers at every
``/-/`` endpoint. The proxy runs on its own event loop in a thread, so the fuzzer can send raw bytes with
``http.client`` synchronously.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_metrics_proxy.app.server import RunningProxy, build_registry, start
from ollama_metrics_proxy.telemetry.collectors import Samplers
from tests.conftest import config_for

ADMIN_TOKEN = "fuzz-admin-token-0123456789"
ENDPOINTS = [("GET", "/-/logs"), ("DELETE", "/-/logs"), ("GET", "/-/stats"), ("GET", "/-/stats/history"),
             ("GET", "/-/models"), ("GET", "/-/clients"), ("GET", "/-/system"), ("GET", "/-/ready"),
             ("GET", "/-/healthy"), ("GET", "/metrics"), ("GET", "/-/dashboard"), ("GET", "/-/static/x.js")]
PARAMETERS = ["since", "until", "limit", "cursor", "model", "outcome", "client", "endpoint", "minutes", "step",
              "before", "page", "after"]


class ThreadedProxy:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = config_for("http://127.0.0.1:9", log_db=str(tmp / "log.db"), admin_token=ADMIN_TOKEN,
                            client_header="X-User", ollama_poll_interval=3600)
        self.running: RunningProxy = self._call(start(config, registry=build_registry(), samplers=Samplers()))
        assert self.running.metrics_address is not None
        self.port = self.running.metrics_address.port

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def request(self, method: str, target: str, headers: list[tuple[str, bytes]] | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers or []:
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self._call(self.running.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def metrics_listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedProxy]:
    proxy = ThreadedProxy(tmp_path_factory.mktemp("fuzz"))
    yield proxy
    proxy.stop()


@pytest.mark.parametrize(("method", "target", "status", "names"), [
    ("GET", "/-/logs?since=inf", 400, "since"),
    ("GET", "/-/logs?since=1e300", 400, "since"),
    ("GET", "/-/logs?until=-1e300", 400, "until"),
    ("GET", "/-/logs?since=nan", 400, "since"),
    ("GET", "/-/logs?limit=%C2%B2", 400, "limit"),  # "²": str.isdigit() says yes, int() says no
    ("GET", "/-/logs?cursor=" + "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OjE", 400, "cursor"),  # a 28-digit time
    ("GET", "/-/logs?cursor=" + "A" * 5000, 400, "cursor"),
    ("GET", "/-/stats/history?minutes=%C2%B2", 400, "minutes"),
    ("DELETE", "/-/logs?before=inf", 400, "before"),
])
def test_reported_inputs_are_400_naming_the_parameter(
    metrics_listener: ThreadedProxy, method: str, target: str, status: int, names: str,
) -> None:
    auth = [("Authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    got, body = metrics_listener.request(method, target, auth)
    assert got == status, body
    assert names.encode() in body and b"Traceback" not in body


@pytest.mark.parametrize("token", [b"Bearer \xff", b"Bearer \xff\xfe" + b"x" * 40, b"\x80", b"Bearer"])
def test_a_bad_token_is_a_401(metrics_listener: ThreadedProxy, token: bytes) -> None:
    status, body = metrics_listener.request("DELETE", "/-/logs", [("Authorization", token)])
    assert status == 401 and b"admin token" in body


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["inf", "-inf", "nan", "1e300", "-1", "0", "²", "1_000", " 5", "5 ", "0x10", "9" * 40, "2026-13-45T99:99Z",
     "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00Z", "MTox", "Og", "==", "%", ""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS),
       query=st.lists(st.tuples(st.sampled_from(PARAMETERS) | _text, _text), max_size=4),
       authorization=st.none() | st.binary(max_size=60) | st.just(f"Bearer {ADMIN_TOKEN}".encode()),
       user=st.none() | st.binary(max_size=30))
def test_no_input_answers_500(metrics_listener: ThreadedProxy, endpoint: tuple[str, str],
                              query: list[tuple[str, str]], authorization: bytes | None, user: bytes | None) -> None:
    method, path = endpoint
    target = path + ("?" + "&".join(f"{quote(key)}={quote(value)}" for key, value in query) if query else "")
    headers = []
    for name, value in (("Authorization", authorization), ("X-User", user)):
        if value is not None:
            headers.append((name, value.replace(b"\r", b"").replace(b"\n", b"")))
    status, body = metrics_listener.request(method, target, headers)
    assert status < 500 or (path == "/-/ready" and status == 503), (target, status, body[:300])
    assert b"Traceback" not in body
