"""Which ``Host`` values each listener answers: the defence against DNS rebinding.

A web page on ``evil.example`` whose name the attacker re-points at 127.0.0.1 can make the victim's browser send
requests to the proxy, with ``Host: evil.example``. A name in ``Host`` that does not name this machine is
therefore refused before anything else happens. IP literals cannot be rebound (a browser sends one only to the
address it names), so the rules are about names.

- The metrics listener answers loopback names and addresses, this machine's names and interface addresses, the
  address it is bound to, and ``--allowed-hosts``.
- The API port, when it listens on loopback (as Ollama does by default), applies Ollama's own rule
  (``ollama:server/routes.go`` ``allowedHostsMiddleware``, ../shared/reference/ollama-api.md §7.1): the proxy
  rewrites ``Host`` to the upstream's, which would otherwise switch Ollama's check off.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable

import psutil

OLLAMA_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower-cased, without port or IPv6 brackets."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    return {name for name in names if name}


def interface_addresses() -> set[str]:
    try:
        return {address.address.split("%", 1)[0].lower() for addresses in psutil.net_if_addrs().values()
                for address in addresses if address.family in (socket.AF_INET, socket.AF_INET6)}
    except OSError:
        return set()


MAX_REMEMBERED_HOSTS = 1024


def remembered(decide: Callable[[str], bool]) -> Callable[[str | None], bool]:
    """A decision per ``Host`` value, remembered: clients send a handful of values, checked on every request.
    The memory is cleared when full, so a client cycling through names cannot grow it."""
    decisions: dict[str, bool] = {}

    def allows(header: str | None) -> bool:
        if not header:
            return True
        decision = decisions.get(header)
        if decision is None:
            if len(decisions) >= MAX_REMEMBERED_HOSTS:
                decisions.clear()
            decision = decisions[header] = decide(header)
        return decision

    return allows


class AllowedHosts:
    """``allows(host_header)``; ``*`` in ``extra`` allows every host, a leading dot allows a whole domain."""

    def __init__(self, extra: Iterable[str] = (), bound: str = "") -> None:
        entries = [host_name(entry) if not entry.startswith(".") else entry.lower() for entry in extra]
        self.everything = "*" in entries
        self._domains = tuple(entry for entry in entries if entry.startswith("."))
        self._names = {entry for entry in entries if not entry.startswith(".")} | machine_names() | {"localhost"}
        self._addresses = interface_addresses() | {host_name(bound)} if bound else interface_addresses()

    def allows(self, header: str | None) -> bool:
        """The metrics listener's rule."""
        return self._allows(header, like_ollama=False)

    def allows_like_ollama(self, header: str | None) -> bool:
        """The API port's rule: Ollama's own, which also takes private addresses and names ending in .local and
        .internal, plus ``--allowed-hosts``."""
        return self._allows(header, like_ollama=True)

    def _allows(self, header: str | None, *, like_ollama: bool) -> bool:
        if self.everything or not header:
            return True
        host = host_name(header)
        address = _ip(host)
        if address is not None:
            return (address.is_loopback or address.is_unspecified or str(address) in self._addresses
                    or (like_ollama and address.is_private))
        suffixes = OLLAMA_LOCAL_SUFFIXES if like_ollama else (".localhost",)
        return host in self._names or host.endswith(suffixes) or self._in_allowed_domain(host)

    def _in_allowed_domain(self, host: str) -> bool:
        return bool(self._domains) and host.endswith(self._domains)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback
