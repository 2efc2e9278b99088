"""Which upstream addresses the daemon may connect to: no open door to its own machine.

A caching proxy that fetches whatever host a client names is a way into every service
that listens only on the proxy's machine or its link (a web admin on 127.0.0.1, a cloud
metadata service on 169.254.169.254). So a mirror, a redirect target or a CONNECT
tunnel is refused when its address is *internal* -- loopback, link-local, unspecified,
multicast or reserved, IPv4 spelled inside IPv6 (``::ffff:127.0.0.1``, NAT64, 6to4),
or one of this machine's own addresses -- unless ``--allowed-mirrors`` names it
explicitly: by a literal name (``localhost``, ``127.0.0.1``, ``mirror.lan:8080``) or
by a CIDR network (``127.0.0.0/8``) holding the address. Wildcard patterns, ``*``
included, never reach an internal address. Private LAN ranges (10/8, 192.168/16...)
are not internal: a mirror on the LAN is common; keep ``allowed-mirrors`` tight to
close those too.

The check runs on the addresses a name resolves to, at the moment of connecting, and
the connection goes to the address that was checked (not to the name again), so a
host name that resolves to 127.0.0.1, or changes its answer between two look-ups,
gains nothing. :func:`internal_reason` is pure; :func:`own_address` asks the kernel.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from debtorrent.errors import MirrorForbiddenError

__all__ = ["Reach", "internal_reason", "own_address", "split_netloc"]

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host" on Linux: reaches us
_IPV4_COMPAT = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_WILDCARDS = "*?["
_IPV6_LITERAL = re.compile(r"^\[[0-9a-f:.]+\](?::[0-9]+)?$")


def internal_reason(address: Address) -> str | None:
    """Why ``address`` is internal to this machine or its link, or None if it is not."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return internal_reason(embedded)
        if address in _SITE_LOCAL:
            return "a site-local address"
    elif address in _THIS_NETWORK:
        return "an address of this host (0.0.0.0/8)"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPAT and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def own_address(address: Address) -> bool:
    """Whether ``address`` is one of this machine's own (any interface).

    A UDP socket "connected" to an address of ours is routed through the local table,
    and the kernel then picks that very address as the source; nothing is sent.
    """
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(address), 9))
            return ipaddress.ip_address(probe.getsockname()[0]) == address
    except OSError:
        return False  # no route: not ours either


def split_netloc(netloc: str) -> tuple[str, int | None]:
    """``("host", port)`` of ``host``, ``host:port`` or ``[v6]:port`` (port may be None)."""
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if netloc.count(":") == 1:
        host, port = netloc.split(":")
        return host, int(port) if port.isdigit() else None
    return netloc, None


def _literal_ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass
class Reach:
    """``--allowed-mirrors`` as a policy: which names, and which of their addresses.

    ``patterns`` are the option's entries: shell patterns of ``host`` or
    ``host:port``, and CIDR networks. :meth:`allows` is the name check made for every
    request; :meth:`addresses` resolves a name and keeps the addresses it may reach.
    """

    patterns: Sequence[str]
    literals: set[str] = field(init=False)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(init=False)
    globs: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.literals, self.networks, self.globs = set(), [], []
        for pattern in self.patterns:
            if "/" in pattern:
                self.networks.append(ipaddress.ip_network(pattern, strict=False))
            elif any(c in pattern for c in _WILDCARDS) and not _IPV6_LITERAL.match(pattern):
                self.globs.append(pattern)
            else:
                self.literals.add(_canonical_literal(pattern))

    def allows(self, netloc: str) -> bool:
        """Whether a mirror ``host`` or ``host:port`` may be asked for at all."""
        host, _ = split_netloc(netloc)
        if netloc in self.literals or host in self.literals:
            return True
        address = _literal_ip(host)
        if address is not None and any(address in net for net in self.networks):
            return True
        return any(
            fnmatch.fnmatchcase(netloc, p) or fnmatch.fnmatchcase(host, p) for p in self.globs
        )

    def named(self, netloc: str, address: Address) -> bool:
        """Whether an entry names this mirror explicitly: literally, or by a network."""
        host, _ = split_netloc(netloc)
        if netloc in self.literals or host in self.literals:
            return True
        return any(address in net for net in self.networks)

    def refusal(self, netloc: str, address: Address) -> str | None:
        """Why ``netloc`` must not be reached at ``address``, or None when it may."""
        reason = internal_reason(address)
        if reason is None and own_address(address):
            reason = "an address of this machine"
        if reason is None or self.named(netloc, address):
            return None
        return f"{address} is {reason}, and allowed-mirrors does not name {netloc}"

    def check_literal(self, netloc: str, url: str) -> None:
        """Refuse at once a mirror written as an internal IP address (no look-up)."""
        host, _ = split_netloc(netloc)
        address = _literal_ip(host)
        if address is not None:
            reason = self.refusal(netloc, address)
            if reason is not None:
                raise MirrorForbiddenError(url, reason)

    def addresses(self, host: str, port: int, url: str) -> list[tuple[int, tuple]]:
        """``(family, sockaddr)`` of ``host`` that may be connected to, resolver order.

        Internal addresses not named explicitly are dropped; if nothing is left,
        :class:`MirrorForbiddenError` says why. ``socket.gaierror`` passes through.
        """
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        kept: list[tuple[int, tuple]] = []
        refused: list[str] = []
        for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        ):
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            reason = self.refusal(netloc, address)
            if reason is None:
                if (family, sockaddr) not in kept:
                    kept.append((family, sockaddr))
            else:
                refused.append(reason)
        if not kept:
            reason = refused[0] if refused else f"{host} has no address"
            log.warning("refusing to connect to %s: %s", netloc, reason)
            raise MirrorForbiddenError(url, reason)
        return kept


def _canonical_literal(pattern: str) -> str:
    """A literal entry as request targets spell it (IPv6 compressed in brackets)."""
    host, port = split_netloc(pattern)
    address = _literal_ip(host)
    if address is not None and address.version == 6:
        host = f"[{address.compressed}]"
    if port is None or port == 80:
        return host
    return f"{host}:{port}"
