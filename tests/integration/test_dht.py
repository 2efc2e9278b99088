"""The DHT (BEP 5) between real daemons on loopback, and against hostile datagrams.

Every daemon here runs ``--discovery dht`` with an explicit loopback bootstrap node (or
none at all), so no datagram goes anywhere but 127.0.0.0/8. A daemon's DHT node listens
on UDP at its peer port's number.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
import urllib.request

import pytest

from debtorrent.torrent import bencode
from debtorrent.torrent.dht import krpc
from debtorrent.torrent.dht.compact import NodeInfo, encode_nodes
from debtorrent.torrent.dht.routing import BUCKETS, K
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import wait_until
from tests.fixtures.net import free_port_tcp_udp, loopback_aliases_usable
from tests.fixtures.repo import Repo

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)


def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=5) as r:
        return json.loads(r.read())


def dht_of(d: Daemon) -> dict:
    return status(d)["discovery"]["dht"]


def logs(*daemons: Daemon) -> str:
    return "\n".join(f"===== {d.name}\n{d.log_tail(40)}" for d in daemons)


def dht_daemon(daemon_factory, host: str, bootstrap: str | None, *extra: str) -> Daemon:
    port = free_port_tcp_udp(host)  # the DHT takes UDP on the peer port's number
    args = ["--discovery", "dht", "--dht-bootstrap", bootstrap or "none", *extra]
    return daemon_factory(*args, bind=host, peer_port=port)


class Krpc:
    """A test-side KRPC client on its own loopback address."""

    def __init__(self, host: str = "127.0.0.99") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(2)
        self.id = os.urandom(20)
        self.n = 0

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    def ask(self, to: tuple[str, int], method: str, **args) -> krpc.Message | None:
        self.n += 1
        t = self.n.to_bytes(2, "big")
        self.send(krpc.encode(krpc.Query(t, method, self.id, **args)), to)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(4096)
            except TimeoutError:
                return None
            message = krpc.decode(data)
            if message.t == t:
                return message
        return None

    def close(self) -> None:
        self.sock.close()


# --- a DHT of daemons --------------------------------------------------------------------


def test_five_daemons_knowing_one_bootstrap_node_find_every_peer(
    repo: Repo, mirror, daemon_factory, apt_factory
) -> None:
    """Five daemons, each told only of the first one's DHT node, load the same index:
    every one ends up connected to the four others, found through DHT lookups."""
    hosts = [f"127.0.0.{41 + i}" for i in range(5)]
    first = dht_daemon(daemon_factory, hosts[0], None)
    boot = f"{hosts[0]}:{first.peer_port}"
    daemons = [first] + [dht_daemon(daemon_factory, h, boot) for h in hosts[1:]]
    for d in daemons:
        apt_factory.path_form(d, mirror).update()

    def connected() -> bool:
        return all(status(d)["connections"] >= 4 for d in daemons)

    try:
        wait_until(connected, 90, "every daemon connected to the 4 others", every=0.5)
    except TimeoutError:
        raise AssertionError(
            f"{[status(d)['discovery'] for d in daemons]}\n{logs(*daemons)}"
        ) from None
    for d in daemons:
        snap = status(d)
        found = snap["discovery"]["peers_by_source"]
        assert found["dht"] + found["incoming"] == 4, found
        assert snap["discovery"]["addresses_learnt"]["dht"] >= 1 or found["incoming"] == 4
        assert snap["discovery"]["dht"]["nodes"] >= 1
        peers = {p["address"] for p in snap["swarms"][0]["peer_list"]}
        assert len(peers) == 4
    # every daemon's node was asked by the others and stores their announces
    assert sum(dht_of(d)["stored_peers"] for d in daemons) >= 4
    assert all(dht_of(d)["lookups"] >= 1 for d in daemons)


def test_saved_routing_table_is_used_after_a_restart(
    repo: Repo, mirror, daemon_factory, apt_factory
) -> None:
    """A daemon that knew the DHT restarts with no bootstrap node at all: the table it
    saved in its state directory is enough to find its peers again."""
    a = dht_daemon(daemon_factory, "127.0.0.51", None)
    boot = f"127.0.0.51:{a.peer_port}"
    b = dht_daemon(daemon_factory, "127.0.0.52", boot)
    c = dht_daemon(daemon_factory, "127.0.0.53", boot)
    for d in (a, b, c):
        apt_factory.path_form(d, mirror).update()
    wait_until(lambda: status(c)["connections"] >= 2, 60, "C connected to A and B", every=0.5)
    wait_until(lambda: dht_of(c)["nodes"] >= 2, 30, "A and B in C's table", every=0.5)
    c.stop()
    saved = c.workdir / "state" / "dht.dat"
    assert saved.is_file()
    data = bencode.decode(saved.read_bytes())
    assert len(data[b"nodes"]) >= 2 * 26  # A and B, compact
    c.restart(["--discovery", "dht", "--dht-bootstrap", "none"])
    wait_until(lambda: status(c)["connections"] >= 2, 60, "C found A and B again", every=0.5)
    snap = status(c)
    assert snap["discovery"]["dht"]["nodes"] >= 2
    assert snap["discovery"]["peers_by_source"]["dht"] >= 1, snap["discovery"]
    assert "0 bootstrap nodes" in c.log_text() and "(2 saved nodes" in c.log_text()


def test_without_any_bootstrap_or_saved_node_nothing_is_found(
    repo: Repo, mirror, daemon_factory, apt_factory
) -> None:
    """The control for the test above: no bootstrap, nothing saved, so no node."""
    d = dht_daemon(daemon_factory, "127.0.0.54", None)
    apt_factory.path_form(d, mirror).update()
    wait_until(lambda: dht_of(d)["lookups"] >= 1, 30, "a lookup ran")
    snap = status(d)
    assert snap["discovery"]["dht"]["nodes"] == 0 and snap["connections"] == 0
    assert "No peer seen yet" in snap["discovery"]["hint"]


# --- hostile datagrams -------------------------------------------------------------------


HOSTILE = [
    b"",
    b"\x00" * 100,
    b"d1:t2:aa1:y1:q1:q4:ping1:ad2:id3:abcee",  # short id
    b"d1:ad2:id20:" + b"x" * 20 + b"e1:q4:ping1:t2:aa1:y1:qe" + b"trailing",
    bencode.encode({"t": b"aa", "y": b"q", "q": b"find_node", "a": {"id": b"x" * 20}}),
    bencode.encode(
        {"t": b"aa", "y": b"q", "q": b"get_peers", "a": {"id": b"x" * 20, "info_hash": [1]}}
    ),
    bencode.encode(
        {
            "t": b"ab",
            "y": b"q",
            "q": b"announce_peer",
            "a": {"id": b"x" * 20, "info_hash": b"y" * 20, "port": 1, "token": b"forged"},
        }
    ),
    bencode.encode({"t": b"aa", "y": b"r", "r": {"id": b"x" * 20, "values": [b"v"] * 1000}}),
    bencode.encode({"t": b"aa", "y": b"r", "r": {"id": b"x" * 20, "nodes": b"n" * 26 * 100}}),
    bencode.encode({"t": b"aa", "y": b"e", "e": {"what": 1}}),
    b"l" * 500 + b"e" * 500,
    b"d" + b"1:a" * 2000,
    b"i" + b"9" * 1000 + b"e",
    os.urandom(1400),
    b"x" * 60_000,
]


def test_hostile_krpc_is_dropped_and_counted_and_the_node_still_answers(daemon_factory) -> None:
    d = dht_daemon(daemon_factory, "127.0.0.55", None)
    node = ("127.0.0.55", d.peer_port)
    client = Krpc("127.0.0.98")
    try:
        before = dht_of(d)["malformed"]
        for data in HOSTILE:
            client.send(data, node)
        bad_token = client.ask(node, "announce_peer", info_hash=b"y" * 20, port=1, token=b"forged")
        assert isinstance(bad_token, krpc.Error) and bad_token.code == 203
        unknown = krpc.decode(
            bencode.encode({"t": b"zz", "y": b"q", "q": b"vote", "a": {"id": client.id}})
        )
        client.send(krpc.encode(unknown), node)
        reply = client.ask(node, "ping")
        assert isinstance(reply, krpc.Response) and len(reply.sender) == 20
        wait_until(lambda: dht_of(d)["malformed"] >= before + 10, 10, "malformed counted")
        assert status(d)["discovery"]["dht"]["stored_peers"] == 0
    finally:
        client.close()
    assert d.running


def test_routing_table_and_peer_store_stay_bounded_under_a_flood(daemon_factory) -> None:
    """1,000 distinct source addresses each ping, answer the node's pings, fetch a token
    and announce three info hashes; one info hash is announced by all of them. The
    routing table stays within its buckets, the store within its caps, and one source
    that floods is rate-limited."""
    d = dht_daemon(daemon_factory, "127.0.0.56", None)
    node = ("127.0.0.56", d.peer_port)
    popular = b"P" * 20
    socks = []
    try:
        for i in range(1000):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.77.{i // 200}.{1 + i % 200}", 0))
            s.setblocking(False)
            socks.append((s, os.urandom(20)))
        by_fd = {s.fileno(): (s, nid) for s, nid in socks}
        tokens: dict[int, bytes] = {}

        def pump(seconds: float) -> None:
            """Answer whatever the node sends (its pings: we are live nodes)."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ready, _, _ = select.select(list(by_fd), [], [], 0.05)
                for fd in ready:
                    s, nid = by_fd[fd]
                    try:
                        data, _ = s.recvfrom(4096)
                    except BlockingIOError:
                        continue
                    msg = krpc.decode(data)
                    if isinstance(msg, krpc.Query):
                        s.sendto(krpc.encode(krpc.Response(msg.t, nid)), node)
                    elif isinstance(msg, krpc.Response) and msg.token:
                        tokens[fd] = msg.token

        # in batches: a socket buffer holds a few hundred datagrams, not a whole flood
        for n, (s, nid) in enumerate(socks):
            s.sendto(krpc.encode(krpc.Query(b"p1", "ping", nid)), node)
            s.sendto(krpc.encode(krpc.Query(b"g1", "get_peers", nid, info_hash=popular)), node)
            if n % 50 == 49:
                pump(0.2)
        pump(3)
        assert len(tokens) >= 900, len(tokens)
        for n, (s, nid) in enumerate(socks):
            token = tokens.get(s.fileno())
            if token is None:
                continue
            for h in (popular, os.urandom(20), os.urandom(20)):
                q = krpc.Query(b"a1", "announce_peer", nid, info_hash=h, port=6881, token=token)
                s.sendto(krpc.encode(q), node)
            if n % 30 == 29:
                pump(0.2)
        pump(3)
        # one source floods pings
        flooder, fid = socks[0]
        for _ in range(500):
            flooder.sendto(krpc.encode(krpc.Query(b"fl", "ping", fid)), node)
        pump(2)
        dht = dht_of(d)
    finally:
        for s, _nid in socks:
            s.close()
    print(f"after the flood: {dht}")
    assert 0 < dht["nodes"] <= BUCKETS * K
    assert dht["replacement_nodes"] <= BUCKETS * 8
    assert dht["stored_hashes"] <= 2000 and dht["stored_peers"] <= 20_000
    assert dht["stored_peers"] >= 1000  # it is a citizen: it stored what it was told
    assert dht["rate_limited"] > 0
    client = Krpc("127.0.0.97")
    try:
        reply = client.ask(node, "get_peers", info_hash=popular)
        assert isinstance(reply, krpc.Response)
        assert 0 < len(reply.values) <= 100  # one info hash holds at most 100 peers
        reply = client.ask(node, "find_node", target=os.urandom(20))
        assert isinstance(reply, krpc.Response) and len(reply.nodes) == K
    finally:
        client.close()
    assert d.running


def test_saved_table_that_is_corrupt_is_set_aside(daemon_factory, tmp_path) -> None:
    state = tmp_path / "corrupt-state"
    state.mkdir()
    nodes = encode_nodes([NodeInfo(b"x" * 20, "192.0.2.4", 1)])
    (state / "dht.dat").write_bytes(b"d2:id3:abc5:nodes" + nodes)  # truncated, short id
    d = daemon_factory(
        *("--discovery", "dht", "--dht-bootstrap", "none", "--state-dir", str(state)),
        bind="127.0.0.57",
        peer_port=free_port_tcp_udp("127.0.0.57"),
    )
    assert status(d)["discovery"]["dht"]["running"]
    assert "is corrupt" in d.log_text()
    d.stop()
    saved = bencode.decode((state / "dht.dat").read_bytes())
    assert len(saved[b"id"]) == 20  # replaced by a good one at exit
