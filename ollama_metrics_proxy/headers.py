"""Header lists as both sides of the relay keep them: (name, value) pairs in arrival order, names in their own
case, repeats kept. One lookup rule and one way to put a head on the wire, for requests and responses alike."""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[str, str]]


def first_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of a header, by case-insensitive name."""
    name = name.lower()
    return next((value for key, value in headers if key.lower() == name), None)


def first_values(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each header's first value by lower-cased name: made in one pass over a head, so that every lookup after
    it is a dict's instead of a scan of the list."""
    values: dict[str, str] = {}
    for name, value in headers:
        values.setdefault(name.lower(), value)
    return values


def encode_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A start line, its header lines and the blank line. Names and values come from llhttp, which has already
    refused CR and LF in them, or from the proxy itself; surrogateescape gives back the exact bytes received."""
    lines = [f"{start_line}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")
