"""The DHT node on gevent: one UDP socket, a receive loop, queries with timeouts, lookups.

:class:`DhtNode` is a full BEP 5 node. It answers ``ping``, ``find_node``,
``get_peers`` and ``announce_peer`` (storing other nodes' announces in a bounded
:class:`~.peerstore.PeerStore`, with tokens from :class:`~.tokens.Tokens`), and
rate-limits queries per source (:class:`~.ratelimit.RateLimiter`). As a client it runs
iterative lookups (:class:`~.lookup.Lookup`, at most :attr:`DhtNode.alpha` queries in
flight, at most :attr:`DhtNode.max_lookups` lookups at once) to find peers of an info
hash and to announce our own peer port.

Malformed datagrams are counted and dropped (queries of a known method with bad
arguments get a 203 error, unknown methods a 204, both within the rate limit); a reply
is matched to our query by transaction id *and* source address, or dropped.

The routing table (:class:`~.routing.RoutingTable`) and our node id are saved in the
state directory (``dht.dat``: bencoded id and compact nodes) every 10 minutes and at
stop; at start the saved nodes are asked first, with the bootstrap nodes
(``--dht-bootstrap``), so a restart needs no bootstrap. Bootstrap host names are
resolved when used; a name that does not resolve (no network, no DNS) is logged once
and retried later. Only IPv4 is spoken (BEP 32's IPv6 DHT is not implemented).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import gevent
from gevent.event import AsyncResult, Event
from gevent.lock import BoundedSemaphore
from gevent.queue import Queue

from debtorrent.errors import BencodeError, KrpcError
from debtorrent.torrent import bencode
from debtorrent.torrent.dht import krpc
from debtorrent.torrent.dht.compact import ID_LEN, NodeInfo, decode_nodes, encode_nodes
from debtorrent.torrent.dht.lookup import ALPHA, Lookup
from debtorrent.torrent.dht.peerstore import PeerStore
from debtorrent.torrent.dht.ratelimit import RateLimiter
from debtorrent.torrent.dht.routing import K, RoutingTable, random_id_in_bucket
from debtorrent.torrent.dht.tokens import Tokens

__all__ = ["DhtNode"]

log = logging.getLogger(__name__)

STATE_FILE = "dht.dat"


class DhtNode:
    """A BEP 5 node on one UDP socket (see the module docstring)."""

    #: Seconds to wait for a reply.
    query_timeout = 3.0
    #: Our queries waiting for a reply at once.
    max_outstanding = 256
    #: Queries in flight per lookup, and lookups at once.
    alpha = ALPHA
    max_lookups = 4
    #: Unknown nodes that queried us, pinged at once (to add them to the table).
    max_pings = 16
    #: Seconds between maintenance rounds, bucket refreshes and saves.
    maintenance_interval = 60.0
    refresh_interval = 15 * 60.0
    save_interval = 10 * 60.0
    #: Seconds between bootstrap attempts while the table is empty (doubling up to 10 min).
    bootstrap_retry = 30.0

    def __init__(
        self,
        bind: str = "",
        port: int = 0,
        *,
        bootstrap: Iterable[tuple[str, int]] = (),
        state_dir: str | os.PathLike[str] | None = None,
        node_id: bytes | None = None,
        read_only: bool = False,
    ) -> None:
        self.bind = bind or "0.0.0.0"
        self.port = port
        self.bootstrap = list(bootstrap)
        self.state_path = Path(state_dir) / STATE_FILE if state_dir else None
        self.read_only = read_only
        self.id = node_id or os.urandom(ID_LEN)
        self.table = RoutingTable(self.id, now=time.monotonic())
        self.store = PeerStore()
        self.tokens = Tokens()
        self.limiter = RateLimiter()
        self.stats: Counter[str] = Counter()
        self.ready = Event()
        #: set (and replaced by a fresh one) whenever the routing table gains a node
        self.grown = Event()
        self.saved_nodes: list[NodeInfo] = []
        self.sock: socket.socket | None = None
        self._pending: dict[bytes, tuple[tuple[str, int], AsyncResult]] = {}
        self._next_t = random.randrange(1 << 16)
        self._slots = BoundedSemaphore(self.max_outstanding)
        self._lookup_slots = BoundedSemaphore(self.max_lookups)
        self._pinging: set[tuple[str, int]] = set()
        self._unresolved: set[str] = set()
        self._greenlets: list[gevent.Greenlet] = []
        self.running_lookups = 0

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket, load the saved table, start bootstrapping and maintenance."""
        self._load()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # room for a burst of datagrams (the kernel caps it at net.core.rmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((self.bind, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.port = sock.getsockname()[1]
        self._greenlets = [
            gevent.spawn(self._receive_loop),
            gevent.spawn(self._bootstrap_loop),
            gevent.spawn(self._maintenance_loop),
        ]
        log.info(
            "DHT node %s on %s:%d (%d saved nodes, %d bootstrap nodes)",
            self.id.hex()[:12],
            self.bind,
            self.port,
            len(self.saved_nodes),
            len(self.bootstrap),
        )

    def stop(self) -> None:
        """Save the table and close the socket; pending queries fail."""
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self._greenlets = []
        self.save()
        for _address, result in self._pending.values():
            if not result.ready():
                result.set(None)
        self._pending.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # --- saved state ----------------------------------------------------------------------

    def _load(self) -> None:
        if self.state_path is None:
            return
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.state_path, exc)
            return
        try:
            data = bencode.decode(raw)
            if not isinstance(data, dict):
                raise BencodeError("not a dictionary")
            node_id, nodes = data.get(b"id"), data.get(b"nodes", b"")
            if not isinstance(node_id, bytes) or len(node_id) != ID_LEN:
                raise BencodeError("no node id")
            if not isinstance(nodes, bytes):
                raise BencodeError("nodes are not compact node info")
            saved = decode_nodes(nodes, limit=10 * K * 160)
        except (BencodeError, KrpcError) as exc:
            log.warning(
                "%s is corrupt (%s); starting with an empty DHT table", self.state_path, exc
            )
            return
        self.id = node_id
        self.table = RoutingTable(node_id, now=time.monotonic())
        self.saved_nodes = [n for n in saved if n.id != node_id]

    def save(self) -> None:
        """Write our id and table atomically; failures are logged, not raised."""
        if self.state_path is None:
            return
        nodes = self.table.nodes() or self.saved_nodes  # never overwrite a table with nothing
        data = bencode.encode(
            {b"id": self.id, b"nodes": encode_nodes(nodes), b"saved": int(time.time())}
        )
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".dht-", dir=self.state_path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.state_path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_path, exc)

    # --- sending queries --------------------------------------------------------------------

    def _transaction_id(self) -> bytes:
        self._next_t = (self._next_t + 1) & 0xFFFF
        return self._next_t.to_bytes(2, "big")

    def query(
        self,
        address: tuple[str, int],
        method: str,
        *,
        target: bytes | None = None,
        info_hash: bytes | None = None,
        port: int | None = None,
        token: bytes | None = None,
        node_id: bytes = b"",
    ) -> krpc.Response | None:
        """Send one query and wait for its reply; None on timeout or error reply.

        ``node_id`` (when known) is the node we expect: a timeout counts against it in
        the routing table, and its reply confirms it.
        """
        if self.sock is None:
            return None
        with self._slots:
            t = self._transaction_id()
            while t in self._pending:
                t = self._transaction_id()
            message = krpc.Query(
                t, method, self.id, target=target, info_hash=info_hash, port=port, token=token
            )
            result: AsyncResult = AsyncResult()
            self._pending[t] = (address, result)
            try:
                self.sock.sendto(krpc.encode(message, read_only=self.read_only), address)
                self.stats["queries_out"] += 1
                reply = result.get(timeout=self.query_timeout)
            except gevent.Timeout:
                reply = None
                self.stats["timeouts"] += 1
            except OSError as exc:
                log.debug("DHT: cannot send to %s:%d: %s", address[0], address[1], exc)
                reply = None
            finally:
                self._pending.pop(t, None)
        if isinstance(reply, krpc.Response):
            self._confirmed(NodeInfo(reply.sender, address[0], address[1]))
            return reply
        if node_id:
            self.table.failed(node_id, address[0], address[1])
        return None

    def ping(self, address: tuple[str, int], node_id: bytes = b"") -> krpc.Response | None:
        return self.query(address, "ping", node_id=node_id)

    def _confirmed(self, node: NodeInfo) -> None:
        before = len(self.table)
        stale = self.table.confirmed(node, time.monotonic())
        if len(self.table) > before:
            grown, self.grown = self.grown, Event()
            grown.set()
        if stale is not None:
            self._ping_soon(stale.ip, stale.port, stale.id)

    def _ping_soon(self, ip: str, port: int, node_id: bytes = b"") -> None:
        address = (ip, port)
        if address in self._pinging or len(self._pinging) >= self.max_pings:
            return
        self._pinging.add(address)

        def ping() -> None:
            try:
                self.ping(address, node_id)
            finally:
                self._pinging.discard(address)

        gevent.spawn(ping)

    # --- lookups -------------------------------------------------------------------------

    def _seeds(self, target: bytes) -> list[NodeInfo]:
        known = self.table.closest(target, 2 * K)
        if len(known) >= K:
            return known
        extra = [NodeInfo(b"", ip, port) for ip, port in self._resolve_bootstrap()]
        return known + self.saved_nodes[: 4 * K] + extra

    def lookup(self, target: bytes, method: str = "find_node") -> Lookup:
        """An iterative ``find_node`` or ``get_peers`` lookup of ``target``, run to its end."""
        with self._lookup_slots:
            self.running_lookups += 1
            try:
                return self._run_lookup(target, method)
            finally:
                self.running_lookups -= 1
                self.stats[f"lookups_{method}"] += 1

    def _run_lookup(self, target: bytes, method: str) -> Lookup:
        lookup = Lookup(target, self._seeds(target), own_id=self.id, alpha=self.alpha)
        finished: Queue = Queue()
        in_flight = 0
        while True:
            for node in lookup.next_queries():
                in_flight += 1
                gevent.spawn(self._lookup_query, node, method, target, finished)
            if in_flight == 0:
                return lookup
            node, reply = finished.get()
            in_flight -= 1
            if reply is None:
                lookup.on_failure(node.address)
            else:
                lookup.on_reply(node.address, reply.sender, reply.nodes, reply.values, reply.token)

    def _lookup_query(self, node: NodeInfo, method: str, target: bytes, finished: Queue) -> None:
        reply = None
        try:
            if method == "get_peers":
                reply = self.query(node.address, method, info_hash=target, node_id=node.id)
            else:
                reply = self.query(node.address, method, target=target, node_id=node.id)
        finally:
            finished.put((node, reply))

    def get_peers(self, info_hash: bytes) -> tuple[list[tuple[str, int]], Lookup]:
        """Peers of ``info_hash`` the DHT knows (our own store included), and the lookup."""
        lookup = self.lookup(info_hash, "get_peers")
        peers = dict.fromkeys(lookup.peers)
        for peer in self.store.get(info_hash, time.monotonic(), limit=100):
            peers[peer] = None
        self.stats["peers_found"] += len(peers)
        return list(peers), lookup

    def announce(self, info_hash: bytes, port: int) -> list[tuple[str, int]]:
        """Look ``info_hash`` up, then announce our peer ``port`` to the closest nodes.

        Returns the peers the lookup found.
        """
        peers, lookup = self.get_peers(info_hash)
        if self.read_only:
            return peers
        targets = [(node, token) for node, token in lookup.closest(K) if token]
        jobs = [
            gevent.spawn(
                self.query,
                node.address,
                "announce_peer",
                info_hash=info_hash,
                port=port,
                token=token,
                node_id=node.id,
            )
            for node, token in targets
        ]
        gevent.joinall(jobs, timeout=self.query_timeout + 1)
        accepted = sum(1 for job in jobs if job.value is not None)
        self.stats["announces"] += accepted
        log.info(
            "DHT: announced %s to %d of %d nodes; %d peers",
            info_hash.hex()[:12],
            accepted,
            len(targets),
            len(peers),
        )
        return peers

    # --- bootstrap and maintenance -----------------------------------------------------------

    def _resolve_bootstrap(self) -> list[tuple[str, int]]:
        out = []
        for host, port in self.bootstrap:
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
            except (OSError, UnicodeError) as exc:
                if host not in self._unresolved:
                    self._unresolved.add(host)
                    log.info("DHT bootstrap node %s does not resolve: %s", host, exc)
                continue
            self._unresolved.discard(host)
            out.extend((info[4][0], info[4][1]) for info in infos[:2])
        return list(dict.fromkeys(out))

    def _bootstrap_loop(self) -> None:
        delay = self.bootstrap_retry
        while True:
            self.lookup(self.id, "find_node")
            self.stats["bootstraps"] += 1
            self.ready.set()
            if len(self.table):
                log.info("DHT: %d nodes in the routing table", len(self.table))
                return
            gevent.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 600.0)

    def _maintenance_loop(self) -> None:
        last_save = time.monotonic()
        while True:
            gevent.sleep(self.maintenance_interval)
            now = time.monotonic()
            self.store.expire(now)
            if len(self.table):
                for index in self.table.stale_buckets(now, self.refresh_interval)[:4]:
                    gevent.spawn(self.lookup, random_id_in_bucket(self.id, index))
                    self.table.changed[index] = now
            if now - last_save >= self.save_interval:
                self.save()
                last_save = now

    # --- receiving -------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        while self.sock is not None:
            try:
                data, address = self.sock.recvfrom(krpc.MAX_PACKET + 1)
            except OSError as exc:
                if self.sock is None:
                    return
                log.debug("DHT receive: %s", exc)
                gevent.sleep(0.01)
                continue
            self.handle_datagram(data, (address[0], address[1]))
            gevent.sleep(0)  # a flood must not starve the hub

    def handle_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        """One datagram from ``address``: answer, resolve a pending query, or drop it."""
        self.stats["datagrams_in"] += 1
        try:
            message = krpc.decode(data)
        except KrpcError as exc:
            self.stats["malformed"] += 1
            log.debug("DHT: malformed datagram from %s:%d: %s", address[0], address[1], exc)
            if exc.t is not None and self.limiter.allow(address[0], time.monotonic()):
                self._send(krpc.Error(exc.t, exc.code, str(exc)[:100]), address)
            return
        if isinstance(message, krpc.Query):
            self._on_query(message, address)
            return
        pending = self._pending.get(message.t)
        if pending is None or pending[0] != address:
            self.stats["unexpected_replies"] += 1
            return
        if isinstance(message, krpc.Error):
            self.stats["errors_in"] += 1
            pending[1].set(None)
            return
        self.stats["replies_in"] += 1
        pending[1].set(message)

    def _send(self, message: krpc.Message, address: tuple[str, int]) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(krpc.encode(message), address)
        except OSError as exc:
            log.debug("DHT: cannot answer %s:%d: %s", address[0], address[1], exc)

    def _on_query(self, query: krpc.Query, address: tuple[str, int]) -> None:
        now = time.monotonic()
        if not self.limiter.allow(address[0], now):
            self.stats["rate_limited"] += 1
            return
        self.stats["queries_in"] += 1
        if query.sender == self.id:
            return
        if not query.read_only and not self.table.seen(query.sender, *address, now):
            if self.table.would_take(query.sender, address[0], now):
                self._ping_soon(address[0], address[1], query.sender)
        self._send(self._answer(query, address, now), address)

    def _answer(self, query: krpc.Query, address: tuple[str, int], now: float) -> krpc.Message:
        t, ip = query.t, address[0]
        if query.method == "ping":
            return krpc.Response(t, self.id)
        if query.method == "find_node":
            assert query.target is not None
            return krpc.Response(t, self.id, nodes=tuple(self.table.closest(query.target)))
        if query.method == "get_peers":
            assert query.info_hash is not None
            return krpc.Response(
                t,
                self.id,
                nodes=tuple(self.table.closest(query.info_hash)),
                values=tuple(self.store.get(query.info_hash, now)),
                token=self.tokens.issue(ip, now),
            )
        if query.method == "announce_peer":
            assert query.info_hash is not None and query.token is not None
            if not self.tokens.check(query.token, ip, now):
                self.stats["bad_tokens"] += 1
                return krpc.Error(t, 203, "bad token")
            port = address[1] if query.implied_port else query.port
            assert port is not None
            self.store.announce(query.info_hash, (ip, port), now)
            self.stats["announces_stored"] += 1
            return krpc.Response(t, self.id)
        return krpc.Error(t, 204, "Method Unknown")

    # --- what the status page shows --------------------------------------------------------

    #: The fields of :meth:`snapshot` (the status page's DHT figures).
    SNAPSHOT_FIELDS = (
        "node_id",
        "port",
        "nodes",
        "good_nodes",
        "replacement_nodes",
        "stored_hashes",
        "stored_peers",
        "lookups",
        "lookups_running",
        "announces",
        "peers_found",
        "queries_in",
        "queries_out",
        "timeouts",
        "malformed",
        "rate_limited",
    )

    def snapshot(self) -> dict[str, int | str]:
        now = time.monotonic()
        return {
            "node_id": self.id.hex(),
            "port": self.port,
            "nodes": len(self.table),
            "good_nodes": self.table.good_count(now),
            "replacement_nodes": self.table.replacement_count(),
            "stored_hashes": self.store.hashes,
            "stored_peers": len(self.store),
            "lookups": self.stats["lookups_get_peers"] + self.stats["lookups_find_node"],
            "lookups_running": self.running_lookups,
            "announces": self.stats["announces"],
            "peers_found": self.stats["peers_found"],
            "queries_in": self.stats["queries_in"],
            "queries_out": self.stats["queries_out"],
            "timeouts": self.stats["timeouts"],
            "malformed": self.stats["malformed"],
            "rate_limited": self.stats["rate_limited"],
        }
