"""Local service discovery (BEP 14), the pure part: messages, schedule, intake limits.

An announce is an HTTP-like datagram multicast to 239.192.152.143:6771 (IPv4) or
[ff15::efc0:988f]:6771 (IPv6)::

    BT-SEARCH * HTTP/1.1\\r\\n
    Host: 239.192.152.143:6771\\r\\n
    Port: 9989\\r\\n
    Infohash: <40 hex digits>\\r\\n          (one or more)
    cookie: <ours>\\r\\n
    \\r\\n

A packet holds as many ``Infohash`` lines as fit in :data:`MAX_PACKET` (1,400) bytes;
more swarms take more packets. The cookie is random per daemon run, so a daemon hears
and ignores its own announces (multicast loops back to the sender's host, where other
daemons may listen too).

The socket side lives in :mod:`debtorrent.torrent.discovery`; here is what can be
tested as plain functions:

- :func:`announce_packets` and :func:`parse_announce` (strict: the request line, a
  valid port, 40-hex info hashes; unknown headers ignored; anything else raises
  :class:`~debtorrent.errors.ProtocolError`);
- :func:`is_lan_address` and :func:`is_local_source`: which senders count as local
  (private, link-local, loopback, unique-local, the benchmarking range, or a network
  of one of our interfaces); packets from anything else are dropped;
- :class:`Schedule`: every swarm at start and every 5 minutes, never more than one
  round a minute (a round is the packets of that moment, on every interface);
- :class:`Intake`: what a flood of announces may cost. Each source address gets a few
  announces a minute, new addresses to dial are capped per minute across all sources,
  and announces for swarms we do not (yet) have are remembered in a bounded table so
  that a swarm started a moment later finds the peers that announced it just before.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from debtorrent.errors import ProtocolError
from debtorrent.torrent.dht.ratelimit import RateLimiter

__all__ = [
    "ANNOUNCE_INTERVAL",
    "GROUP4",
    "GROUP6",
    "LSD_PORT",
    "MAX_PACKET",
    "MIN_INTERVAL",
    "Announce",
    "Intake",
    "Schedule",
    "announce_packets",
    "is_lan_address",
    "is_local_source",
    "parse_announce",
]

GROUP4 = "239.192.152.143"
GROUP6 = "ff15::efc0:988f"
LSD_PORT = 6771
#: Largest announce we send (BEP 14); we read up to an Ethernet payload.
MAX_PACKET = 1400
MAX_RECEIVED = 1500
#: Seconds between full rounds, and the least between any two rounds.
ANNOUNCE_INTERVAL = 300.0
MIN_INTERVAL = 60.0
#: Info hashes read from one packet (1,400 bytes hold about 25).
MAX_HASHES = 32

_REQUEST_LINE = b"BT-SEARCH * HTTP/1.1"
_HEX40 = re.compile(rb"^[0-9A-Fa-f]{40}$")

# Ranges that never leave a site: what "LAN" means for --lan-only and for LSD senders.
_LAN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",  # link-local
        "127.0.0.0/8",
        "198.18.0.0/15",  # benchmarking (RFC 2544): never routed; the test LAN uses it
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "::1/128",
    )
)


@dataclass(frozen=True, slots=True)
class Announce:
    """One heard announce: the sender's peer port, its info hashes, its cookie."""

    port: int
    info_hashes: tuple[bytes, ...]
    cookie: str | None


def _host_header(ipv6: bool) -> str:
    return f"[{GROUP6}]:{LSD_PORT}" if ipv6 else f"{GROUP4}:{LSD_PORT}"


def announce_packets(
    info_hashes: Iterable[bytes], port: int, cookie: str, ipv6: bool = False
) -> list[bytes]:
    """The datagrams announcing ``info_hashes`` on ``port``, each at most 1,400 bytes."""
    head = f"BT-SEARCH * HTTP/1.1\r\nHost: {_host_header(ipv6)}\r\nPort: {port}\r\n"
    tail = f"cookie: {cookie}\r\n\r\n\r\n"
    packets: list[bytes] = []
    lines: list[str] = []
    size = len(head) + len(tail)
    for info_hash in info_hashes:
        line = f"Infohash: {info_hash.hex()}\r\n"
        if lines and size + len(line) > MAX_PACKET:
            packets.append((head + "".join(lines) + tail).encode("ascii"))
            lines, size = [], len(head) + len(tail)
        lines.append(line)
        size += len(line)
    if lines:
        packets.append((head + "".join(lines) + tail).encode("ascii"))
    return packets


def parse_announce(data: bytes) -> Announce:
    """A received datagram as an :class:`Announce`; ProtocolError if it is not one."""
    if len(data) > MAX_RECEIVED:
        raise ProtocolError(f"LSD packet of {len(data)} bytes")
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines[0].strip() != _REQUEST_LINE:
        raise ProtocolError("not a BT-SEARCH announce")
    port: int | None = None
    hashes: list[bytes] = []
    cookie: str | None = None
    for line in lines[1:]:
        if not line.strip():
            break
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError("LSD header line without a colon")
        key, value = name.strip().lower(), value.strip()
        if key == b"port":
            if not value.isdigit() or len(value) > 5 or not 0 < int(value) < 65536:
                raise ProtocolError(f"LSD port {value[:16]!r} is not a port")
            port = int(value)
        elif key == b"infohash":
            if _HEX40.match(value) and len(hashes) < MAX_HASHES:
                digest = bytes.fromhex(value.decode("ascii"))
                if digest not in hashes:
                    hashes.append(digest)
        elif key == b"cookie":
            cookie = value[:64].decode("ascii", "replace")
    if port is None:
        raise ProtocolError("LSD announce without a port")
    if not hashes:
        raise ProtocolError("LSD announce without an info hash")
    return Announce(port, tuple(hashes), cookie)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def is_lan_address(ip: str) -> bool:
    """Private, link-local, loopback, unique-local or benchmarking: never routed outside."""
    addr = _ip(ip)
    return addr is not None and any(addr in net for net in _LAN_NETWORKS)


def is_local_source(
    ip: str, local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
) -> bool:
    """Whether a datagram from ``ip`` comes from this site (see :func:`is_lan_address`)
    or from a network one of our interfaces is on."""
    addr = _ip(ip)
    if addr is None or addr.is_multicast or addr.is_unspecified:
        return False
    return is_lan_address(ip) or any(addr in net for net in local_networks)


class Schedule:
    """When to send a round and which info hashes it holds (see the module docstring).

    :meth:`add` marks a new swarm; :meth:`due` answers, at ``now``, the info hashes of
    the round to send (all of them every :data:`ANNOUNCE_INTERVAL`, the new ones
    sooner), or None while nothing is due or the last round was under a minute ago.
    ``debounce`` gathers swarms that start together (a daemon loads its indexes in a
    burst) into one round.
    """

    def __init__(
        self,
        interval: float = ANNOUNCE_INTERVAL,
        min_interval: float = MIN_INTERVAL,
        debounce: float = 1.0,
    ) -> None:
        self.interval = interval
        self.min_interval = min_interval
        self.debounce = debounce
        self.last_round = float("-inf")
        self.last_full = float("-inf")
        self._new: dict[bytes, float] = {}

    def add(self, info_hash: bytes, now: float) -> None:
        self._new.setdefault(info_hash, now)

    def remove(self, info_hash: bytes) -> None:
        self._new.pop(info_hash, None)

    def next_time(self) -> float:
        """The earliest moment :meth:`due` may return a round."""
        earliest = self.last_round + self.min_interval
        wanted = self.last_full + self.interval
        if self._new:
            wanted = min(wanted, min(self._new.values()) + self.debounce)
        return max(earliest, wanted)

    def due(self, now: float, all_hashes: Sequence[bytes]) -> list[bytes] | None:
        if now < self.next_time():
            return None
        if now >= self.last_full + self.interval:
            chosen = list(all_hashes)
            self.last_full = now
        else:
            known = set(all_hashes)
            chosen = [h for h in self._new if h in known]
        self._new.clear()
        if not chosen:
            return None
        self.last_round = now
        return chosen


class Intake:
    """Bounded handling of heard announces (see the module docstring).

    :meth:`accept` decides, for one announce, which ``(info_hash, address)`` pairs may
    become connection attempts now: at most :attr:`per_source_burst` announces per
    source address, refilled at :attr:`per_source_rate` a second; at most
    :attr:`new_burst` new addresses, refilled at :attr:`new_rate` a second, across all
    sources. Announces for swarms we lack are remembered (at most :attr:`max_remembered`
    pairs, for :attr:`remember_for` seconds) and returned by :meth:`recall` when such a
    swarm starts. Counters say what was dropped.
    """

    per_source_rate = 6 / 60.0
    per_source_burst = 6.0
    new_rate = 1.0
    new_burst = 30.0
    max_sources = 256
    max_remembered = 512
    remember_for = 600.0

    def __init__(self) -> None:
        self._sources = RateLimiter(
            self.per_source_rate,
            self.per_source_burst,
            global_rate=self.new_rate * 10,
            global_burst=self.new_burst * 10,
            max_sources=self.max_sources,
        )
        self._new = RateLimiter(self.new_rate, self.new_burst, max_sources=1)
        self._remembered: OrderedDict[tuple[bytes, tuple[str, int]], float] = OrderedDict()
        self.dropped_rate = 0
        self.dropped_flood = 0

    def accept(
        self, announce: Announce, source: str, have: Iterable[bytes], now: float | None = None
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """The pairs of ``announce`` (from ``source``) to act on now, for swarms in ``have``."""
        now = time.monotonic() if now is None else now
        if not self._sources.allow(source, now):
            self.dropped_rate += 1
            return []
        address = (source, announce.port)
        wanted = set(have)
        out = []
        for info_hash in announce.info_hashes:
            if info_hash in wanted:
                if not self._new.allow("", now):
                    self.dropped_flood += 1
                    continue
                out.append((info_hash, address))
            else:
                self._remember((info_hash, address), now)
        return out

    def _remember(self, key: tuple[bytes, tuple[str, int]], now: float) -> None:
        self._remembered[key] = now
        self._remembered.move_to_end(key)
        while len(self._remembered) > self.max_remembered:
            self._remembered.popitem(last=False)

    def recall(self, info_hash: bytes, now: float | None = None) -> list[tuple[str, int]]:
        """Addresses that announced ``info_hash`` lately (forgotten once returned)."""
        now = time.monotonic() if now is None else now
        found = [
            (key, when)
            for key, when in self._remembered.items()
            if key[0] == info_hash and now - when < self.remember_for
        ]
        for key, _when in found:
            del self._remembered[key]
        return [key[1] for key, _when in found]

    def __len__(self) -> int:
        return len(self._remembered)
