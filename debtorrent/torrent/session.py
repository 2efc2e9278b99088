"""The session: one peer port, every swarm, the global limits, choking and trackers.

All swarms share one listening port (``--peer-port``): an incoming connection names
its swarm in the handshake. The session owns what is global: connection caps, the
ban list, the choker's upload slots (one round over every peer every 10 s, plus an
optimistic unchoke), tracker announcers, static peers, and the byte counters the
status page shows. When ``--peer-bind`` names an address, outgoing peer and tracker
connections leave from it too, so several daemons on one machine look like distinct
hosts.

Every address to dial comes in through :meth:`Session.add_candidates` with its source
(``tracker``, ``dht``, ``lsd``, ``pex`` or ``static``; the connection keeps it as
``peer.source``, accepted ones are ``incoming``). Discovery (LSD, the DHT, PEX) is run
by :class:`~debtorrent.torrent.discovery.Discovery`. With no discovery, no tracker and no
static peer, nothing could ever connect, so the peer port does not listen at all.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import gevent
from gevent.server import StreamServer

from debtorrent.errors import DebtorrentError, ProtocolError
from debtorrent.mirror import Mirror
from debtorrent.torrent import wire
from debtorrent.torrent.choker import (
    ChokerSettings,
    OptimisticUnchoke,
    PeerSnapshot,
    free_slot_unchokes,
)
from debtorrent.torrent.discovery import Discovery
from debtorrent.torrent.peer import HANDSHAKE_TIMEOUT, PeerConnection
from debtorrent.torrent.swarm import Swarm
from debtorrent.torrent.swarmkey import SwarmKey
from debtorrent.torrent.tracker import Announcer

__all__ = ["SOURCES", "Session", "SessionSettings"]

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 2.0
STATIC_RETRY = 15.0
CONNECT_TIMEOUT = 10.0
STRIKES_TO_BAN = 3
BAN_SECONDS = 3600.0
#: Where a dialled address came from (``add_candidates``); accepted peers are "incoming".
SOURCES = ("tracker", "dht", "lsd", "pex", "static")


@dataclass
class SessionSettings:
    """The peer side's tunables (from the option table)."""

    peer_port: int = 9989
    peer_bind: str = ""
    trackers: list[str] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    max_peers: int = 200
    max_peers_per_swarm: int = 50
    upload_slots: int = 8
    choke_interval: float = 10.0
    http_seed_delay: float = 10.0
    connect_grace: float = 3.0
    http_seed_min_rate: float = 0.0
    http_timeout: float = 30.0
    discovery: tuple[str, ...] = ()
    lan_only: bool = False
    swarm_key: bytes | None = None  # the secret derived from --swarm-key
    dht_bootstrap: list[tuple[str, int]] = field(default_factory=list)
    dht_port: int = 0
    state_dir: str = ""
    always_listen: bool = False  # open the peer port even when nothing could find it


class Session:
    """Everything BitTorrent in one process (see the module docstring)."""

    def __init__(self, settings: SessionSettings, mirror: Mirror | None = None) -> None:
        self.settings = settings
        self.mirror = mirror
        self.peer_id = wire.peer_id()
        self.swarms: dict[bytes, Swarm] = {}
        self.connections: set[PeerConnection] = set()
        self.dialing: set[tuple[bytes, str, int]] = set()
        self.strikes: Counter[str] = Counter()
        self.banned: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.events: deque[tuple[float, str]] = deque(maxlen=50)
        self.announcers: dict[bytes, Announcer] = {}
        self.listen_port = settings.peer_port
        self.server: StreamServer | None = None
        self._choker = ChokerSettings(upload_slots=settings.upload_slots)
        self._optimistic = OptimisticUnchoke(self._choker)
        self._greenlets: list[gevent.Greenlet] = []
        self._static_tried: dict[tuple[bytes, tuple[str, int]], float] = {}
        self.file_listeners: list = []
        self.swarm_key = SwarmKey(settings.swarm_key) if settings.swarm_key else None
        self.discovery = Discovery(self)
        #: addresses offered per source (add_candidates), and peers connected ever
        self.candidates: Counter[str] = Counter()
        self.peers_seen = 0

    # --- life cycle -----------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether peers can come at all: discovery, a tracker or a static peer."""
        settings = self.settings
        return bool(
            settings.always_listen or settings.discovery or settings.trackers or settings.peers
        )

    @property
    def optional_extensions(self) -> list[str]:
        """The optional BEP 10 extensions we advertise (PEX, the swarm key proof)."""
        out = [wire.UT_PEX] if self.discovery.use_pex else []
        return out + ([wire.DT_SWARMKEY] if self.swarm_key is not None else [])

    def start(self) -> None:
        """Open the peer port (when peers can come at all), start discovery and the
        periodic work."""
        self._greenlets = [gevent.spawn(self._choke_loop), gevent.spawn(self._maintenance)]
        if not self.listening:
            self.listen_port = 0
            log.info("no discovery, tracker or peer configured: the peer port stays closed")
            return
        bind = self.settings.peer_bind or "0.0.0.0"
        self.server = StreamServer((bind, self.settings.peer_port), self._accept)
        self.server.start()
        self.listen_port = self.server.server_port
        log.info("peer side on %s port %d", bind, self.listen_port)
        self.discovery.start()

    def stop(self) -> None:
        """Tell trackers we leave (bounded), close every connection and the port."""
        stoppers = [gevent.spawn(a.stop, 5.0) for a in self.announcers.values()]
        gevent.joinall(stoppers, timeout=6)
        self.announcers.clear()
        self.discovery.stop()
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        if self.server is not None:
            self.server.stop(timeout=1)
        for swarm in list(self.swarms.values()):
            swarm.close()

    # --- swarms -----------------------------------------------------------------------

    def add_swarm(self, swarm: Swarm) -> None:
        """Make a swarm reachable: accept its peers, announce it, dial static peers."""
        self.swarms[swarm.info_hash] = swarm
        if self.settings.trackers:
            announcer = Announcer(
                swarm.info_hash,
                self.peer_id,
                self.listen_port,
                [[url] for url in self.settings.trackers],
                stats_callback=lambda s=swarm: self._tracker_stats(s),
                on_peers=lambda peers, s=swarm: self._on_tracker_peers(s, peers),
                source_address=self.settings.peer_bind or None,
                http_timeout=self.settings.http_timeout,
            )
            self.announcers[swarm.info_hash] = announcer
            announcer.start()
        self._dial_static(swarm)
        if self.server is not None:
            self.discovery.add_swarm(swarm)
        log.info("swarm %s started (%s)", swarm.name, swarm.info_hash.hex())

    def remove_swarm(self, swarm: Swarm) -> None:
        self.swarms.pop(swarm.info_hash, None)
        announcer = self.announcers.pop(swarm.info_hash, None)
        if announcer is not None:
            gevent.spawn(announcer.stop, 5.0)
        self.discovery.remove_swarm(swarm)
        swarm.close()
        log.info("swarm %s stopped", swarm.name)

    def swarm_completed(self, swarm: Swarm) -> None:
        announcer = self.announcers.get(swarm.info_hash)
        if announcer is not None:
            announcer.completed()

    def file_completed(self, swarm: Swarm, file_index: int) -> None:
        for listener in self.file_listeners:
            listener(swarm, file_index)

    def expects_peers(self) -> bool:
        """Whether peers may come (a tracker, static peers, LSD or the DHT): worth a
        short wait."""
        found = self.discovery.lsd is not None or self.discovery.dht is not None
        return bool(self.settings.trackers or self.settings.peers or found)

    def _tracker_stats(self, swarm: Swarm) -> tuple[int, int, int]:
        left = swarm.picker.num_wanted * swarm.layout.piece_length
        return swarm.uploaded, swarm.downloaded, left

    def _on_tracker_peers(self, swarm: Swarm, peers: list[tuple[str, int]]) -> None:
        self.add_candidates(swarm, peers, "tracker")

    def add_candidates(self, swarm: Swarm, addresses, source: str) -> None:
        """Addresses that may be peers of ``swarm``, learnt from ``source`` (one of
        :data:`SOURCES`): dialled within the caps, unless banned, ourselves, or outside
        the LAN under ``--lan-only``."""
        for address in addresses:
            ip, port = address[0], address[1]
            if not self.discovery.allowed(ip) or self.discovery.is_own((ip, port)):
                continue
            self.candidates[source] += 1
            self.connect(swarm, (ip, port), source)

    def _dial_static(self, swarm: Swarm) -> None:
        now = time.monotonic()
        for address in self.settings.peers:
            key = (swarm.info_hash, address)
            if now - self._static_tried.get(key, -STATIC_RETRY) < STATIC_RETRY:
                continue
            if any(p.address == address for p in swarm.peers):
                continue
            self._static_tried[key] = now
            self.add_candidates(swarm, [address], "static")

    # --- connections ---------------------------------------------------------------------

    def is_banned(self, ip: str) -> bool:
        until = self.banned.get(ip)
        if until is None:
            return False
        if until < time.monotonic():
            del self.banned[ip]
            return False
        return True

    def connect(self, swarm: Swarm, address: tuple[str, int], source: str = "static") -> None:
        """Dial a peer for a swarm unless banned, ourselves, known, or over the caps."""
        ip, port = address
        if self.is_banned(ip) or swarm.closed:
            return
        if (ip, port) == (self.settings.peer_bind, self.listen_port):
            return
        key = (swarm.info_hash, ip, port)
        if key in self.dialing or any(p.address == (ip, port) for p in swarm.peers):
            return
        if len(self.connections) + len(self.dialing) >= self.settings.max_peers:
            return
        if len(swarm.peers) >= swarm.max_peers:
            return
        self.dialing.add(key)
        gevent.spawn(self._dial, swarm, address, key, source)

    def _dial(
        self, swarm: Swarm, address: tuple[str, int], key: tuple[bytes, str, int], source: str
    ) -> None:
        try:
            bind = self.settings.peer_bind
            local = (bind, 0) if bind and bind not in ("::", "0.0.0.0") else None
            sock = socket.create_connection(address, CONNECT_TIMEOUT, source_address=local)
        except OSError as exc:
            log.debug("cannot connect to %s:%d: %s", address[0], address[1], exc)
            return
        finally:
            self.dialing.discard(key)
        _nodelay(sock)
        peer = PeerConnection(swarm, sock, address, outgoing=True)
        peer.source = source
        peer.run()

    def _accept(self, sock: socket.socket, address: tuple) -> None:
        ip = address[0]
        if (
            self.is_banned(ip)
            or len(self.connections) >= self.settings.max_peers
            or not self.discovery.allowed(ip)
        ):
            self.counters["refused_connections"] += 1
            sock.close()
            return
        _nodelay(sock)
        decoder = wire.Decoder(None, handshake=True)
        try:
            with gevent.Timeout(HANDSHAKE_TIMEOUT, OSError("handshake not complete in time")):
                handshake = None
                while handshake is None:
                    data = sock.recv(65536)
                    if not data:
                        sock.close()
                        return
                    for message in decoder.feed(data):
                        handshake = message
        except ProtocolError as exc:
            # not struck: an encrypted (MSE) handshake looks like this, and libtorrent
            # tries one first by default before falling back to plain BitTorrent
            self.counters["bad_handshakes"] += 1
            log.debug("peer %s: %s", ip, exc)
            sock.close()
            return
        except OSError:
            sock.close()
            return
        swarm = self.swarms.get(handshake.info_hash)
        if swarm is None:
            self.counters["unknown_swarm"] += 1
            sock.close()
            return
        PeerConnection(swarm, sock, (ip, address[1]), outgoing=False).run(handshake, decoder)

    def admit(self, peer: PeerConnection) -> bool:
        """Count a handshaken connection against the global cap."""
        if len(self.connections) >= self.settings.max_peers:
            return False
        self.connections.add(peer)
        self.peers_seen += 1
        return True

    def release(self, peer: PeerConnection) -> None:
        self.connections.discard(peer)
        if not peer.am_choking:  # its upload slot is free now
            self.fill_free_slots()

    # --- misbehaviour ----------------------------------------------------------------------

    def strike(self, ip: str, reason: str) -> None:
        """A protocol violation: counted; repeated ones ban the address."""
        self.counters["protocol_errors"] += 1
        self.strikes[ip] += 1
        log.info("peer %s: %s", ip, reason)
        if self.strikes[ip] >= STRIKES_TO_BAN:
            self.ban(ip, f"{self.strikes[ip]} protocol errors")

    def ban(self, ip: str, reason: str) -> None:
        """Refuse an address for an hour and drop its connections."""
        if self.is_banned(ip):
            return
        self.banned[ip] = time.monotonic() + BAN_SECONDS
        self.counters["bans"] += 1
        self.note(f"banned peer {ip}: {reason}")
        for peer in [p for p in self.connections if p.address[0] == ip]:
            peer.close(f"banned: {reason}")

    def note(self, text: str) -> None:
        """A line for the status page's recent errors, and the log."""
        log.warning("%s", text)
        self.events.append((time.time(), text))

    def count(self, kind: str, amount: int) -> None:
        self.counters[kind] += amount

    def on_pex(self, peer: PeerConnection, payload: object) -> None:
        """A ``ut_pex`` message (see :class:`~debtorrent.torrent.discovery.Discovery`)."""
        self.discovery.on_pex(peer, payload)

    # --- periodic work -----------------------------------------------------------------------

    def interest_changed(self, peer: PeerConnection) -> None:
        """A peer became (not) interested: answer now, not at the next round.

        An interested peer gets a free upload slot at once; one that lost interest is
        choked and its slot goes to whoever waits. Waiting for the periodic round here
        cost apt up to a round per file whenever its requests moved between swarms.
        """
        if not peer.peer_interested and not peer.am_choking:
            peer.set_choking(True)
        self.fill_free_slots()

    def fill_free_slots(self) -> None:
        """Unchoke waiting interested peers while upload slots are free (peers that
        have not proven the swarm key are left out: they may see nothing yet)."""
        peers = [p for p in self.connections if not p.closed and p.proven]
        for peer in free_slot_unchokes(
            self._snapshots(peers), seeding=self._seeding(), settings=self._choker
        ):
            peer.set_choking(False)

    def _choke_loop(self) -> None:
        while True:
            gevent.sleep(self.settings.choke_interval)
            try:
                self._choke_round()
            except DebtorrentError as exc:
                log.warning("choke round failed: %s", exc)

    def _snapshots(self, peers: list[PeerConnection]) -> list[PeerSnapshot]:
        now = time.monotonic()
        return [
            PeerSnapshot(
                peer=p,
                interested=p.peer_interested,
                download_rate=p.down.rate,
                upload_rate=p.up.rate,
                choked=p.am_choking,
                snubbed=p.snubbed,
                new=now - p.connected_at < 30.0,
            )
            for p in peers
        ]

    def _seeding(self) -> bool:
        return all(s.seeding for s in self.swarms.values())

    def _choke_round(self) -> None:
        """Tit-for-tat over every connection, and the optimistic unchoke's rotation."""
        self.counters["choke_rounds"] += 1
        peers = [p for p in self.connections if not p.closed and p.proven]
        unchoked = self._optimistic.run(self._snapshots(peers), seeding=self._seeding())
        for peer in peers:
            peer.optimistic = peer is self._optimistic.current
            peer.set_choking(peer not in unchoked)

    def _maintenance(self) -> None:
        while True:
            gevent.sleep(MAINTENANCE_INTERVAL)
            now = time.monotonic()
            for peer in list(self.connections):
                peer.check_snubbed(now)
            for swarm in list(self.swarms.values()):
                if self.settings.peers:
                    self._dial_static(swarm)


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
