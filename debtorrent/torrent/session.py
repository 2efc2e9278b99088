"""The session: one peer port, every swarm, the global limits, choking and trackers.

All swarms share one listening port (``--peer-port``): an incoming connection names
its swarm in the handshake. The session owns what is global: connection caps, the
ban list, the choker's upload slots (one round over every peer every 10 s, plus an
optimistic unchoke), tracker announcers, the peer lists, and the byte counters the
status page shows. When ``--peer-bind`` names an address, the peer side listens there
only and outgoing peer and tracker connections leave from it too, so several daemons
on one machine look like distinct hosts; without it, the port is dual-stack (IPv6 and
IPv4 on one socket) and peers of either family are dialled.

Addresses to dial come from the sources through :meth:`Session.add_candidates` into
each swarm's :class:`~debtorrent.torrent.peer_list.PeerList`; a dialler greenlet dials
the candidates that are due whenever a connection slot frees up, a candidate arrives,
or a back-off ends.

Discovery (LSD, the DHT, PEX) is run by :class:`~debtorrent.torrent.discovery.
Discovery`, which feeds :meth:`Session.add_candidates` too; ``--lan-only`` keeps every
source (and incoming connections) to LAN addresses. With no discovery, no tracker and
no static peer, nothing could ever connect, so the peer port does not listen at all.

Misbehaviour is judged per address. A protocol error is a strike; ``strikes`` of them
ban the address for ``ban`` seconds (:class:`~debtorrent.policy.BanPolicy`). Strikes
decay, one every ``strike_decay`` seconds, and a ban expires and takes its strikes
with it, so a rare quirk of an honest client never adds up to a ban.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import gevent
import gevent.socket
from gevent.event import Event
from gevent.server import StreamServer

from debtorrent.config import default
from debtorrent.errors import DebtorrentError, ProtocolError
from debtorrent.mirror import Mirror
from debtorrent.policy import Policy
from debtorrent.ratelimit import RateLimits
from debtorrent.torrent import wire
from debtorrent.torrent.choker import (
    ChokerSettings,
    OptimisticUnchoke,
    PeerSnapshot,
    free_slot_unchokes,
)
from debtorrent.torrent.discovery import Discovery
from debtorrent.torrent.peer import PeerConnection
from debtorrent.torrent.peer_list import CANDIDATE_SOURCES, Candidate, PeerList
from debtorrent.torrent.swarm import Swarm
from debtorrent.torrent.swarmkey import SwarmKey
from debtorrent.torrent.tracker import Announcer
from debtorrent.torrent.webseed import MirrorHealth

__all__ = ["NOTE_LOGGER", "Session", "SessionSettings", "plain_ip"]

log = logging.getLogger(__name__)

#: The logger of :meth:`Session.note` (bans): the status page keeps those from
#: :attr:`Session.events` and skips them in its log-record handler.
NOTE_LOGGER = "debtorrent.torrent.session.notes"
_notes = logging.getLogger(NOTE_LOGGER)


def _table(name: str):
    """A default from the option table (the only place defaults are written)."""
    return field(default_factory=lambda: default(name))


@dataclass
class SessionSettings:
    """The peer side's tunables (from the option table, whose defaults they take)."""

    peer_port: int = _table("peer-port")
    peer_bind: str = _table("peer-bind")
    trackers: list[str] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    max_peers: int = _table("max-peers")
    max_peers_per_swarm: int = _table("max-peers-per-swarm")
    upload_slots: int = _table("upload-slots")
    choke_interval: float = _table("choke-interval")
    http_seed_delay: float = _table("http-seed-delay")
    connect_grace: float = _table("connect-grace")
    http_seed_min_rate: float = _table("http-seed-min-rate")
    http_timeout: float = _table("http-timeout")
    policy: Policy = field(default_factory=Policy)
    # Discovery is off unless the caller asks (the daemon passes the option table's
    # values): a Session made in a test or a tool never reaches the public DHT.
    discovery: tuple[str, ...] = ()
    lan_only: bool = False
    swarm_key: bytes | None = None  # the secret derived from --swarm-key
    dht_bootstrap: list[tuple[str, int]] = field(default_factory=list)
    dht_port: int = 0
    state_dir: str = ""
    always_listen: bool = False  # open the peer port even when nothing could find it


def plain_ip(ip: str) -> str:
    """An address as one spelling: IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what a
    dual-stack socket reports for an IPv4 peer) becomes IPv4, scope ids go."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class Session:
    """Everything BitTorrent in one process (see the module docstring)."""

    def __init__(self, settings: SessionSettings, mirror: Mirror | None = None) -> None:
        self.settings = settings
        self.policy = settings.policy
        #: the clock of strikes, bans and the peer lists (tests step their own)
        self.clock = time.monotonic
        self.mirror = mirror
        #: per-mirror back-off of the HTTP seeds (a dead mirror is not hammered)
        self.mirror_health = MirrorHealth(self.policy.mirror_backoff, self.policy.mirror_log_period)
        self.peer_id = wire.peer_id()
        self.swarms: dict[bytes, Swarm] = {}
        self.connections: set[PeerConnection] = set()
        self.dialing: set[tuple[bytes, str, int]] = set()
        self.peer_lists: dict[bytes, PeerList] = {}
        self.strikes: Counter[str] = Counter()
        self._struck: dict[str, float] = {}  # ip -> when its strikes last decayed
        self.banned: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.events: deque[tuple[float, str]] = deque(maxlen=50)
        self.announcers: dict[bytes, Announcer] = {}
        self.listen_port = settings.peer_port
        self.server: StreamServer | None = None
        self._choker = ChokerSettings(upload_slots=settings.upload_slots)
        self._optimistic = OptimisticUnchoke(self._choker)
        self._dial_wakeup = Event()
        self._greenlets: list[gevent.Greenlet] = []
        self.file_listeners: list = []
        # --upload-rate, --download-rate, all swarms (the daemon sets them)
        self.rate_limits = RateLimits()
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
        self._greenlets = [
            gevent.spawn(self._choke_loop),
            gevent.spawn(self._maintenance),
            gevent.spawn(self._dialer),
        ]
        if not self.listening:
            self.listen_port = 0
            log.info("no discovery, tracker or peer configured: the peer port stays closed")
            return
        listener = self._listener()
        self.server = StreamServer(listener, self._accept)
        self.server.start()
        self.listen_port = self.server.server_port
        bind = self.settings.peer_bind or "all interfaces (IPv6 and IPv4)"
        log.info("peer side on %s port %d", bind, self.listen_port)
        self.discovery.start()

    def _listener(self) -> gevent.socket.socket:
        """The listening socket: the bind address only, or dual-stack on ``::``
        (IPV6_V6ONLY off), or IPv4 only where the host has no IPv6."""
        bind = self.settings.peer_bind
        port = self.settings.peer_port
        if bind:
            family = gevent.socket.AF_INET6 if ":" in bind else gevent.socket.AF_INET
            return _listen(family, (bind, port))
        try:
            return _listen(gevent.socket.AF_INET6, ("::", port), dual_stack=True)
        except OSError as exc:
            log.info("no IPv6 on this host (%s): the peer side is IPv4 only", exc)
            return _listen(gevent.socket.AF_INET, ("0.0.0.0", port))

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

    def add_swarm(self, swarm: Swarm, trackers: list[list[str]] | None = None) -> None:
        """Make a swarm reachable: accept its peers, announce it, dial static peers.

        *trackers* are BEP 12 tiers for this swarm (a ``.torrent``'s own); by default
        each ``--tracker`` is a tier of its own.
        """
        self.swarms[swarm.info_hash] = swarm
        self.peer_lists[swarm.info_hash] = PeerList(self.policy.dial)
        tiers = trackers if trackers is not None else [[url] for url in self.settings.trackers]
        if any(tiers):
            announcer = Announcer(
                swarm.info_hash,
                self.peer_id,
                self.listen_port,
                tiers,
                stats_callback=lambda s=swarm: self._tracker_stats(s),
                on_peers=lambda peers, s=swarm: self.add_candidates(s, peers, "tracker"),
                source_address=self.settings.peer_bind or None,
                http_timeout=self.policy.http_timeout,
            )
            self.announcers[swarm.info_hash] = announcer
            announcer.start()
        self.add_candidates(swarm, self.settings.peers, "static")
        if self.server is not None:
            self.discovery.add_swarm(swarm)
        log.info("swarm %s started (%s)", swarm.name, swarm.info_hash.hex())

    def remove_swarm(self, swarm: Swarm) -> None:
        self.swarms.pop(swarm.info_hash, None)
        self.peer_lists.pop(swarm.info_hash, None)
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

    # --- the peer list ---------------------------------------------------------------------

    def add_candidates(
        self, swarm: Swarm, addresses: Iterable[tuple[str, int]], source: str
    ) -> int:
        """Addresses of possible peers of *swarm* from *source* (one of "tracker",
        "dht", "lsd", "pex", "static"); they are dialled as slots allow. Returns how
        many were new. Our own address, banned ones, ones we cannot reach (another
        address family than ``--peer-bind``) and, with ``--lan-only``, ones outside the
        LAN are left out."""
        if source not in CANDIDATE_SOURCES:
            raise ValueError(f"unknown peer source {source!r}")
        peers = self.peer_lists.get(swarm.info_hash)
        if peers is None or swarm.closed:
            return 0
        now = self.clock()
        added = 0
        for ip, port in addresses:
            ip = plain_ip(ip)
            if self._is_self(ip, port) or self.is_banned(ip) or not self._reachable(ip):
                continue
            if not 0 < port < 65536:
                continue
            if not self.discovery.allowed(ip) or self.discovery.is_own((ip, port)):
                continue
            self.candidates[source] += 1
            added += peers.add((ip, port), source, now)
        if added or source == "static":
            self._dial_wakeup.set()
        return added

    def connect(self, swarm: Swarm, address: tuple[str, int], source: str = "static") -> None:
        """Dial one address for a swarm (a candidate from *source*) as soon as allowed."""
        self.add_candidates(swarm, [address], source)

    def _is_self(self, ip: str, port: int) -> bool:
        if port != self.listen_port:
            return False
        bind = self.settings.peer_bind
        return ip == bind if bind else ip in ("127.0.0.1", "::1")

    def _reachable(self, ip: str) -> bool:
        """Whether we can dial *ip*: any family when unbound, else the bind's family."""
        bind = self.settings.peer_bind
        return not bind or (":" in bind) == (":" in ip)

    def _dialer(self) -> None:
        """Dial due candidates when woken (a slot freed, candidates came) or every
        maintenance interval (back-offs end)."""
        while True:
            self._dial_wakeup.wait(self.policy.maintenance_interval)
            self._dial_wakeup.clear()
            try:
                self.fill()
            except DebtorrentError as exc:
                log.warning("dialling failed: %s", exc)

    def fill(self) -> None:
        """Dial candidates of every swarm, within the caps on connections and dials."""
        for swarm in list(self.swarms.values()):
            self._fill(swarm)

    def _fill(self, swarm: Swarm) -> None:
        peers = self.peer_lists.get(swarm.info_hash)
        if peers is None or swarm.closed:
            return
        dialing_here = sum(1 for key in self.dialing if key[0] == swarm.info_hash)
        room = min(
            self.settings.max_peers - len(self.connections) - len(self.dialing),
            swarm.max_peers - len(swarm.peers) - dialing_here,
            self.policy.dial.max_dialing - len(self.dialing),
        )
        if room <= 0:
            return
        connected = {p.address for p in swarm.peers}
        connected |= {(p.address[0], p.listen_port) for p in swarm.peers if p.listen_port}

        def skip(address: tuple[str, int]) -> bool:
            return address in connected or self.is_banned(address[0])

        for candidate in peers.pick(room, self.clock(), skip):
            key = (swarm.info_hash, *candidate.address)
            self.dialing.add(key)
            gevent.spawn(self._dial, swarm, candidate, key)

    def _dial(self, swarm: Swarm, candidate: Candidate, key: tuple[bytes, str, int]) -> None:
        address = candidate.address
        peers = self.peer_lists.get(swarm.info_hash)
        try:
            bind = self.settings.peer_bind
            local = (bind, 0) if bind and bind not in ("::", "0.0.0.0") else None
            sock = gevent.socket.create_connection(
                address, self.policy.timeouts.connect, source_address=local
            )
        except OSError as exc:
            log.debug("cannot connect to %s:%d: %s", address[0], address[1], exc)
            if peers is not None:
                peers.failed(address, self.clock())
            return
        finally:
            self.dialing.discard(key)
        _nodelay(sock)
        peer = PeerConnection(swarm, sock, address, outgoing=True, source=candidate.source)
        try:
            if peers is not None:
                peers.connected(address)
            peer.run()
        finally:
            if peers is not None and not self.is_banned(address[0]):
                if peer.attached:
                    peers.disconnected(address, self.clock())
                else:
                    peers.failed(address, self.clock())
            self._dial_wakeup.set()

    def peer_listens(self, peer: PeerConnection) -> None:
        """An incoming peer told us its listen port: that candidate is connected."""
        peers = self.peer_lists.get(peer.swarm.info_hash)
        if peers is not None and peer.listen_port and not peer.outgoing:
            peers.connected((peer.address[0], peer.listen_port))

    # --- connections ---------------------------------------------------------------------

    def is_banned(self, ip: str) -> bool:
        until = self.banned.get(ip)
        if until is None:
            return False
        if until < self.clock():
            del self.banned[ip]
            self.strikes.pop(ip, None)  # a ban served clears the record
            self._struck.pop(ip, None)
            return False
        return True

    def _accept(self, sock: gevent.socket.socket, address: tuple) -> None:
        ip = plain_ip(address[0])
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
        timeout = self.policy.timeouts.handshake
        try:
            with gevent.Timeout(timeout, OSError("handshake not complete in time")):
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
        peer = PeerConnection(swarm, sock, (ip, address[1]), outgoing=False, source="incoming")
        peer.run(handshake, decoder)

    def admit(self, peer: PeerConnection) -> bool:
        """Count a handshaken connection against the global cap."""
        if len(self.connections) >= self.settings.max_peers:
            return False
        self.connections.add(peer)
        self.peers_seen += 1
        return True

    def release(self, peer: PeerConnection) -> None:
        """A connection ended: its slot is free, so the dialler looks for the next peer."""
        self.connections.discard(peer)
        self._dial_wakeup.set()
        if not peer.am_choking:  # its upload slot is free now
            self.fill_free_slots()

    # --- misbehaviour ----------------------------------------------------------------------

    def strike_count(self, ip: str) -> int:
        """The strikes *ip* holds now, one forgiven per ``strike_decay`` seconds."""
        count = self.strikes.get(ip, 0)
        if not count:
            return 0
        decay = self.policy.bans.strike_decay
        since = self._struck.get(ip, self.clock())
        forgiven = int((self.clock() - since) // decay) if decay > 0 else 0
        if forgiven:
            count = max(0, count - forgiven)
            self._struck[ip] = since + forgiven * decay
            if count:
                self.strikes[ip] = count
            else:
                del self.strikes[ip]
                self._struck.pop(ip, None)
        return count

    def strike(self, ip: str, reason: str) -> None:
        """A protocol violation: counted; repeated ones (within the decay) ban the address."""
        self.counters["protocol_errors"] += 1
        count = self.strike_count(ip) + 1
        self.strikes[ip] = count
        self._struck.setdefault(ip, self.clock())
        log.info("peer %s: %s (strike %d of %d)", ip, reason, count, self.policy.bans.strikes)
        if count >= self.policy.bans.strikes:
            self.ban(ip, f"{count} protocol errors")

    def ban(self, ip: str, reason: str) -> None:
        """Refuse an address for ``ban`` seconds, drop its connections and candidates."""
        if self.is_banned(ip):
            return
        self.banned[ip] = self.clock() + self.policy.bans.ban
        self.counters["bans"] += 1
        self.note(f"banned peer {ip}: {reason}")
        for peers in self.peer_lists.values():
            peers.remove_ip(ip)
        for peer in [p for p in self.connections if p.address[0] == ip]:
            peer.close(f"banned: {reason}")

    def note(self, text: str) -> None:
        """A line for the status page's recent errors, and the log."""
        _notes.warning("%s", text)
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
            gevent.sleep(self.policy.maintenance_interval)
            now = time.monotonic()
            for peer in list(self.connections):
                peer.check_snubbed(now)


def _listen(family: int, address: tuple[str, int], dual_stack: bool = False):
    """A listening TCP socket; ``dual_stack`` accepts IPv4 on an IPv6 socket too."""
    sock = gevent.socket.socket(family, gevent.socket.SOCK_STREAM)
    try:
        sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(gevent.socket.IPPROTO_IPV6, gevent.socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _nodelay(sock) -> None:
    try:
        sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
    except OSError:
        pass
