"""The session: one peer port, every swarm, the global limits, choking and trackers.

All swarms share one listening port (``--peer-port``): an incoming connection names
its swarm in the handshake. The session owns what is global: connection caps, the
ban list, the choker's upload slots (one round over every peer every 10 s, plus an
optimistic unchoke), tracker announcers, static peers, and the byte counters the
status page shows. When ``--peer-bind`` names an address, outgoing peer and tracker
connections leave from it too, so several daemons on one machine look like distinct
hosts.
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
from debtorrent.ratelimit import RateLimits
from debtorrent.torrent import wire
from debtorrent.torrent.choker import (
    ChokerSettings,
    OptimisticUnchoke,
    PeerSnapshot,
    free_slot_unchokes,
)
from debtorrent.torrent.peer import HANDSHAKE_TIMEOUT, PeerConnection
from debtorrent.torrent.swarm import Swarm
from debtorrent.torrent.tracker import Announcer

__all__ = ["Session", "SessionSettings"]

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 2.0
STATIC_RETRY = 15.0
CONNECT_TIMEOUT = 10.0
STRIKES_TO_BAN = 3
BAN_SECONDS = 3600.0


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
        self.limits = RateLimits()  # --upload-rate, --download-rate (the daemon sets them)

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Open the peer port and start the periodic work."""
        bind = self.settings.peer_bind or "0.0.0.0"
        self.server = StreamServer((bind, self.settings.peer_port), self._accept)
        self.server.start()
        self.listen_port = self.server.server_port
        self._greenlets = [gevent.spawn(self._choke_loop), gevent.spawn(self._maintenance)]
        log.info("peer side on %s port %d", bind, self.listen_port)

    def stop(self) -> None:
        """Tell trackers we leave (bounded), close every connection and the port."""
        stoppers = [gevent.spawn(a.stop, 5.0) for a in self.announcers.values()]
        gevent.joinall(stoppers, timeout=6)
        self.announcers.clear()
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
        log.info("swarm %s started (%s)", swarm.name, swarm.info_hash.hex())

    def remove_swarm(self, swarm: Swarm) -> None:
        self.swarms.pop(swarm.info_hash, None)
        announcer = self.announcers.pop(swarm.info_hash, None)
        if announcer is not None:
            gevent.spawn(announcer.stop, 5.0)
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
        """Whether peers may come (a tracker or static peers): worth a short wait."""
        return bool(self.settings.trackers or self.settings.peers)

    def _tracker_stats(self, swarm: Swarm) -> tuple[int, int, int]:
        left = swarm.picker.num_wanted * swarm.layout.piece_length
        return swarm.uploaded, swarm.downloaded, left

    def _on_tracker_peers(self, swarm: Swarm, peers: list[tuple[str, int]]) -> None:
        for address in peers:
            self.connect(swarm, address)

    def _dial_static(self, swarm: Swarm) -> None:
        now = time.monotonic()
        for address in self.settings.peers:
            key = (swarm.info_hash, address)
            if now - self._static_tried.get(key, -STATIC_RETRY) < STATIC_RETRY:
                continue
            if any(p.address == address for p in swarm.peers):
                continue
            self._static_tried[key] = now
            self.connect(swarm, address)

    # --- connections ---------------------------------------------------------------------

    def is_banned(self, ip: str) -> bool:
        until = self.banned.get(ip)
        if until is None:
            return False
        if until < time.monotonic():
            del self.banned[ip]
            return False
        return True

    def connect(self, swarm: Swarm, address: tuple[str, int]) -> None:
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
        gevent.spawn(self._dial, swarm, address, key)

    def _dial(self, swarm: Swarm, address: tuple[str, int], key: tuple[bytes, str, int]) -> None:
        try:
            source = (self.settings.peer_bind, 0) if self.settings.peer_bind else None
            sock = socket.create_connection(address, CONNECT_TIMEOUT, source_address=source)
        except OSError as exc:
            log.debug("cannot connect to %s:%d: %s", address[0], address[1], exc)
            return
        finally:
            self.dialing.discard(key)
        _nodelay(sock)
        PeerConnection(swarm, sock, address, outgoing=True).run()

    def _accept(self, sock: socket.socket, address: tuple) -> None:
        ip = address[0]
        if self.is_banned(ip) or len(self.connections) >= self.settings.max_peers:
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
        """Unchoke waiting interested peers while upload slots are free."""
        peers = [p for p in self.connections if not p.closed]
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
        peers = [p for p in self.connections if not p.closed]
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
