"""Finding peers with no configuration: local service discovery, the DHT, peer exchange.

One :class:`Discovery` per session starts what ``--discovery`` names and feeds every
address it learns to :meth:`Session.add_candidates <debtorrent.torrent.session.Session.
add_candidates>` with its source (``"lsd"``, ``"dht"``, ``"pex"``), so the normal
connection caps decide what is dialled:

- **LSD** (BEP 14, :class:`LocalDiscovery`): announces every swarm when it starts and
  every 5 minutes (never more than one round a minute) on every interface that can
  carry multicast (only the one holding ``--peer-bind`` when that is set: a daemon
  bound to a loopback address therefore sends nothing), hop limit 1; hears others'
  announces, drops those from non-local sources and its own (by cookie), and bounds
  what a flood may cost (:class:`~debtorrent.torrent.lsd.Intake`). IPv6 (the
  ff15::efc0:988f group) is used when the peer side listens on IPv6 (``--peer-bind
  ::`` or an IPv6 address).
- **DHT** (BEP 5, :class:`~debtorrent.torrent.dht.node.DhtNode`): a full node on the UDP
  port of the peer port's number (``--dht-port``); every swarm is looked up when it
  starts and announced again every 15 to 30 minutes. While the routing table holds
  fewer than 8 nodes (a new fleet, a DHT of its own), a swarm is looked up again each
  time a node joins (within a minute, doubling up to 15), so the first machines find
  the later ones without waiting a quarter of an hour.
- **PEX** (BEP 11, :mod:`debtorrent.torrent.pex`): every minute, each peer speaking
  ``ut_pex`` hears of the peers we have in that swarm; what peers tell us is bounded.

``--lan-only`` keeps the DHT off and admits only LAN addresses
(:func:`~debtorrent.torrent.lsd.is_lan_address`) from any source, incoming ones
included. Nothing here opens a socket unless its mechanism is enabled.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
import struct
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from debtorrent.errors import ProtocolError
from debtorrent.torrent import lsd, netif, pex, wire
from debtorrent.torrent.dht.node import DhtNode
from debtorrent.torrent.dht.routing import K

if TYPE_CHECKING:
    from debtorrent.torrent.peer import PeerConnection
    from debtorrent.torrent.session import Session
    from debtorrent.torrent.swarm import Swarm

__all__ = ["Discovery", "LocalDiscovery"]

log = logging.getLogger(__name__)

#: Seconds between DHT announces of one swarm (a random point in this range).
DHT_ANNOUNCE_INTERVAL = (15 * 60.0, 30 * 60.0)
#: Seconds before a swarm's DHT lookup is retried while the routing table is near empty.
DHT_RETRY = 60.0
#: Seconds a lookup waits after a node joined a small routing table (joins come in bursts).
DHT_SETTLE = 2.0
#: Seconds between two looks at what PEX has to tell (each peer still hears at most
#: once a minute, BEP 11).
PEX_TICK = 5.0
#: Seconds a swarm waits for the DHT's first bootstrap before its first lookup.
DHT_READY_WAIT = 30.0
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)


def _family_of(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


class LocalDiscovery:
    """BEP 14 on the sockets (see the module docstring and :mod:`debtorrent.torrent.lsd`)."""

    def __init__(self, discovery: Discovery, bind: str) -> None:
        self.discovery = discovery
        self.bind = bind
        self.cookie = os.urandom(6).hex()
        self.schedule = lsd.Schedule()
        self.intake = lsd.Intake()
        self.stats: Counter[str] = Counter()
        self.interfaces: list[str] = []
        self.local_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._senders: list[tuple[socket.socket, tuple, bool]] = []
        self._receivers: list[socket.socket] = []
        self._wake = Event()
        self._greenlets: list[gevent.Greenlet] = []

    # --- sockets ---------------------------------------------------------------------

    def start(self) -> bool:
        """Open the sockets; False (and nothing open) when no interface can multicast."""
        family = _family_of(self.bind) if self.bind else None
        use4 = family in (None, 4) or self.bind == "::"
        use6 = family == 6
        found = netif.interfaces()
        self.local_networks = [i.network for f in found for i in (*f.ipv4, *f.ipv6)]
        chosen = [f for f in found if f.multicast]
        if self.bind and self.bind != "::":
            bound = ipaddress.ip_address(self.bind)  # however it was spelt
            chosen = [f for f in chosen if any(i.ip == bound for i in (*f.ipv4, *f.ipv6))]
        try:
            if use4 and any(f.ipv4 for f in chosen):
                self._open4([f for f in chosen if f.ipv4])
            if use6 and any(f.ipv6 for f in chosen):
                self._open6([f for f in chosen if f.ipv6])
        except OSError as exc:
            log.warning("local service discovery unavailable: %s", exc)
            self.stop()
            return False
        if not self._senders:
            log.info(
                "local service discovery: no multicast interface%s; it stays off",
                f" holds {self.bind}" if self.bind else "",
            )
            self.stop()
            return False
        self.interfaces = sorted({f.name for f in chosen})
        self._greenlets = [gevent.spawn(self._receive_loop, s) for s in self._receivers]
        self._greenlets.append(gevent.spawn(self._announce_loop))
        log.info("local service discovery on %s", ", ".join(self.interfaces))
        return True

    @staticmethod
    def _receiver(family: int, group: str) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # capped by rmem_max
        try:
            sock.bind((group, lsd.LSD_PORT))  # only datagrams sent to the group
        except OSError:
            sock.bind(("" if family == socket.AF_INET else "::", lsd.LSD_PORT))
        return sock

    def _open4(self, interfaces: list[netif.Interface]) -> None:
        group = socket.inet_aton(lsd.GROUP4)
        receiver = self._receiver(socket.AF_INET, lsd.GROUP4)
        self._receivers.append(receiver)
        receiver.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        for iface in interfaces:
            mreqn = struct.pack("=4s4si", group, socket.inet_aton("0.0.0.0"), iface.index)
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sender.bind((str(iface.ipv4[0].ip), 0))
            self._senders.append((sender, (lsd.GROUP4, lsd.LSD_PORT), False))

    def _open6(self, interfaces: list[netif.Interface]) -> None:
        group = socket.inet_pton(socket.AF_INET6, lsd.GROUP6)
        receiver = self._receiver(socket.AF_INET6, lsd.GROUP6)
        self._receivers.append(receiver)
        for iface in interfaces:
            mreq = group + struct.pack("@I", iface.index)
            receiver.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface.index)
            sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            self._senders.append((sender, (lsd.GROUP6, lsd.LSD_PORT, 0, iface.index), True))

    def stop(self) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self._greenlets = []
        for sock in [s for s, _a, _v6 in self._senders] + self._receivers:
            sock.close()
        self._senders, self._receivers = [], []

    # --- announcing ------------------------------------------------------------------

    def add(self, info_hash: bytes) -> None:
        self.schedule.add(info_hash, time.monotonic())
        self._wake.set()

    def remove(self, info_hash: bytes) -> None:
        self.schedule.remove(info_hash)

    def _announce_loop(self) -> None:
        while True:
            delay = self.schedule.next_time() - time.monotonic()
            if delay > 0:
                self._wake.clear()
                self._wake.wait(min(delay, lsd.ANNOUNCE_INTERVAL))
                continue
            hashes = self.schedule.due(time.monotonic(), self.discovery.swarm_hashes())
            if hashes is None:
                # nothing to say yet: wait for a swarm, or the next full round
                self._wake.clear()
                self._wake.wait(lsd.MIN_INTERVAL)
                continue
            self._send_round(hashes)

    def _send_round(self, hashes: list[bytes]) -> None:
        port = self.discovery.session.listen_port
        for sock, group, v6 in self._senders:
            for packet in lsd.announce_packets(hashes, port, self.cookie, ipv6=v6):
                try:
                    sock.sendto(packet, group)
                    self.stats["sent"] += 1
                except OSError as exc:
                    self.stats["send_errors"] += 1
                    log.debug("LSD: cannot send on %s: %s", sock.getsockname(), exc)
        self.stats["rounds"] += 1
        log.debug("LSD: announced %d swarms", len(hashes))

    # --- hearing ---------------------------------------------------------------------

    def _receive_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                data, address = sock.recvfrom(lsd.MAX_RECEIVED + 1)
            except OSError as exc:
                log.debug("LSD receive: %s", exc)
                return
            self.heard(data, address[0])
            gevent.sleep(0)

    def heard(self, data: bytes, source: str) -> None:
        """One datagram from ``source``: dial its sender for the swarms we have."""
        self.stats["received"] += 1
        if not lsd.is_local_source(source, self.local_networks):
            self.stats["dropped_nonlocal"] += 1
            return
        try:
            announce = lsd.parse_announce(data)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.debug("LSD: bad announce from %s: %s", source, exc)
            return
        if announce.cookie == self.cookie:
            self.stats["own"] += 1
            return
        swarms = self.discovery.session.swarms
        accepted = self.intake.accept(announce, source, swarms.keys())
        self.stats["dropped_flood"] = self.intake.dropped_rate + self.intake.dropped_flood
        for info_hash, peer in accepted:
            swarm = swarms.get(info_hash)
            if swarm is not None:
                log.debug("LSD: %s announces %s on port %d", source, swarm, peer[1])
                self.stats["heard"] += 1
                self.discovery.session.add_candidates(swarm, [peer], "lsd")

    def recall(self, info_hash: bytes) -> list[tuple[str, int]]:
        return self.intake.recall(info_hash)


class Discovery:
    """The discovery services of one session (see the module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        settings = session.settings
        self.lan_only = settings.lan_only
        mechanisms = set(settings.discovery)
        self.use_lsd = "lsd" in mechanisms
        self.use_dht = "dht" in mechanisms and not self.lan_only
        self.use_pex = "pex" in mechanisms
        self.lsd: LocalDiscovery | None = None
        self.dht: DhtNode | None = None
        self.stats: Counter[str] = Counter()
        self._pex: weakref.WeakKeyDictionary[PeerConnection, pex.PexState] = (
            weakref.WeakKeyDictionary()
        )
        self._swarm_loops: dict[bytes, gevent.Greenlet] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self._own: set[tuple[str, int]] = set()

    @property
    def mechanisms(self) -> list[str]:
        """What is running: ``lsd``, ``dht``, ``pex``."""
        out = []
        if self.lsd is not None:
            out.append("lsd")
        if self.dht is not None:
            out.append("dht")
        if self.use_pex:
            out.append("pex")
        return out

    def start(self) -> None:
        """Start the enabled services (the session's peer port is open by now)."""
        settings = self.session.settings
        port = self.session.listen_port
        self._own = {(str(i.ip), port) for f in netif.interfaces() for i in (*f.ipv4, *f.ipv6)}
        if self.use_lsd:
            service = LocalDiscovery(self, settings.peer_bind)
            if service.start():
                self.lsd = service
        if self.use_dht:
            bind = settings.peer_bind
            if bind and _family_of(bind) == 6 and bind != "::":
                log.warning("the DHT speaks IPv4 only; with --peer-bind %s it stays off", bind)
            else:
                node = DhtNode(
                    "" if bind == "::" else bind,
                    settings.dht_port or port,
                    bootstrap=settings.dht_bootstrap,
                    state_dir=settings.state_dir or None,
                )
                try:
                    node.start()
                except OSError as exc:
                    log.warning("the DHT cannot start: %s", exc)
                else:
                    self.dht = node
        if self.use_pex:
            self._greenlets.append(gevent.spawn(self._pex_loop))
        for swarm in list(self.session.swarms.values()):
            self.add_swarm(swarm)

    def stop(self) -> None:
        for greenlet in [*self._greenlets, *self._swarm_loops.values()]:
            greenlet.kill(block=False)
        self._greenlets, self._swarm_loops = [], {}
        if self.lsd is not None:
            self.lsd.stop()
            self.lsd = None
        if self.dht is not None:
            self.dht.stop()
            self.dht = None

    # --- swarms ------------------------------------------------------------------------

    def swarm_hashes(self) -> list[bytes]:
        return list(self.session.swarms)

    def add_swarm(self, swarm: Swarm) -> None:
        if self.lsd is not None:
            self.lsd.add(swarm.info_hash)
            remembered = self.lsd.recall(swarm.info_hash)
            if remembered:
                self.session.add_candidates(swarm, remembered, "lsd")
        if self.dht is not None and swarm.info_hash not in self._swarm_loops:
            self._swarm_loops[swarm.info_hash] = gevent.spawn(self._dht_swarm_loop, swarm)

    def remove_swarm(self, swarm: Swarm) -> None:
        if self.lsd is not None:
            self.lsd.remove(swarm.info_hash)
        loop = self._swarm_loops.pop(swarm.info_hash, None)
        if loop is not None:
            loop.kill(block=False)

    def _dht_swarm_loop(self, swarm: Swarm) -> None:
        dht = self.dht
        assert dht is not None
        dht.ready.wait(DHT_READY_WAIT)
        retry = DHT_RETRY
        while not swarm.closed:
            grown = dht.grown  # taken first: a node joining during the lookup counts
            peers = dht.announce(swarm.info_hash, self.session.listen_port)
            self.session.add_candidates(swarm, peers, "dht")
            if len(dht.table) < K:
                # a small DHT (a new fleet): look again when a node joins, or later
                grown.wait(retry * random.uniform(0.8, 1.2))
                gevent.sleep(DHT_SETTLE)
                retry = min(retry * 2, DHT_ANNOUNCE_INTERVAL[0])
            else:
                retry = DHT_RETRY
                gevent.sleep(random.uniform(*DHT_ANNOUNCE_INTERVAL))

    # --- who may be dialled ------------------------------------------------------------

    def allowed(self, ip: str) -> bool:
        """Whether an address may be dialled or accepted (``--lan-only``)."""
        return not self.lan_only or lsd.is_lan_address(ip)

    def is_own(self, address: tuple[str, int]) -> bool:
        return address in self._own

    # --- PEX -------------------------------------------------------------------------------

    def on_pex(self, peer: PeerConnection, payload: Any) -> None:
        """A ``ut_pex`` message from ``peer``: its added peers become candidates."""
        if not self.use_pex:
            return
        state = self._pex.setdefault(peer, pex.PexState())
        now = time.monotonic()
        if now - state.last_received < pex.MIN_RECEIVE_GAP:
            self.stats["pex_ignored"] += 1
            return
        state.last_received = now
        message = pex.decode_pex(payload)
        self.stats["pex_received"] += 1
        added = [(ip, port) for ip, port, _flags in message.added]
        if added:
            self.session.add_candidates(peer.swarm, added, "pex")

    def _pex_loop(self) -> None:
        while True:
            gevent.sleep(PEX_TICK)  # a new peer hears of the others within seconds
            now = time.monotonic()
            for swarm in list(self.session.swarms.values()):
                try:
                    self._pex_round(swarm, now)
                except ProtocolError as exc:  # pragma: no cover - our own payloads
                    log.warning("PEX: %s", exc)

    def _pex_round(self, swarm: Swarm, now: float) -> None:
        peers = [p for p in list(swarm.peers) if not p.closed and p.proven]
        current: dict[tuple[str, int], int] = {}
        for peer in peers:
            if peer.listen_port:
                flags = (pex.FLAG_SEED if peer.seed else 0) | (
                    pex.FLAG_REACHABLE if peer.outgoing else 0
                )
                current[(peer.address[0], peer.listen_port)] = flags
        for peer in peers:
            if wire.UT_PEX not in peer.extensions:
                continue
            state = self._pex.setdefault(peer, pex.PexState())
            if now - state.last_sent < pex.PEX_INTERVAL:
                continue
            own = (peer.address[0], peer.listen_port)
            diff = state.update({a: f for a, f in current.items() if a != own})
            if diff is None:
                continue  # nothing new: the minute between two messages has not begun
            state.last_sent = now
            if peer.send_extended(wire.UT_PEX, pex.encode_pex(*diff)):
                self.stats["pex_sent"] += 1

    # --- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What runs and what it did; the same fields whether a mechanism runs or not."""
        lsd_stats = self.lsd.stats if self.lsd is not None else Counter()
        lan = {key: lsd_stats[key] for key in ("rounds", "sent", "received", "heard", "own")}
        lan["malformed"] = lsd_stats["malformed"]
        lan["dropped"] = lsd_stats["dropped_nonlocal"] + lsd_stats["dropped_flood"]
        lan["running"] = self.lsd is not None
        lan["interfaces"] = list(self.lsd.interfaces) if self.lsd is not None else []
        if self.dht is not None:
            dht: dict[str, Any] = {"running": True, **self.dht.snapshot()}
        else:
            dht = {"running": False, **dict.fromkeys(DhtNode.SNAPSHOT_FIELDS, 0)}
            dht["node_id"] = dht["port"] = None
        return {
            "enabled": self.mechanisms,
            "lan_only": self.lan_only,
            "lsd": lan,
            "dht": dht,
            "pex": {
                "sent": self.stats["pex_sent"],
                "received": self.stats["pex_received"],
                "ignored": self.stats["pex_ignored"],
            },
        }
