"""The objects the relay makes for every request carry no instance dict (they have ``__slots__``): paired A/B
runs measured 5-7% less CPU per non-streamed request and about 290 bytes less per stream with them
(benchmarks/RESULTS.md, 2026-11-29 session 5). A class that loses them, such as a new observer or a subclass
declared without ``__slots__``, or a dataclass without ``slots=True``, fails here."""

from __future__ import annotations

import pytest

from ollama_metrics_proxy.observe import GapCounts, Observation, Observer
from ollama_metrics_proxy.observe.exchange import Exchange
from ollama_metrics_proxy.observe.lines import LineBuffer
from ollama_metrics_proxy.relay.front import FrontConnection
from ollama_metrics_proxy.relay.proxy import BodySink, RequestBody
from ollama_metrics_proxy.relay.request import IncomingBody, Request
from ollama_metrics_proxy.upstream.client import UpstreamResponse
from ollama_metrics_proxy.upstream.connection import Connection
from ollama_metrics_proxy.upstream.http1 import ResponseHead, ResponseParser


def with_subclasses(cls: type) -> list[type]:
    found = [cls]
    for subclass in cls.__subclasses__():
        found += with_subclasses(subclass)
    return found


OBSERVERS = with_subclasses(Observer)
PER_REQUEST: list[type] = [
    FrontConnection, Request, IncomingBody, Exchange, RequestBody, Connection, ResponseParser, ResponseHead,
    UpstreamResponse, BodySink, *OBSERVERS, LineBuffer, Observation, GapCounts,
]


def test_every_observer_is_covered() -> None:
    names = {cls.__name__ for cls in OBSERVERS}
    assert {"NdjsonObserver", "OpenAiSseObserver", "AnthropicSseObserver", "JsonBodyObserver"} <= names


@pytest.mark.parametrize("cls", PER_REQUEST, ids=lambda cls: cls.__name__)
def test_made_per_request_without_an_instance_dict(cls: type) -> None:
    assert cls.__dictoffset__ == 0, f"{cls.__name__} instances carry a __dict__: declare __slots__ in it and its bases"
