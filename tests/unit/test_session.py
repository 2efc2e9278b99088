"""The session (``torrent/session.py``): strikes and bans, the peer list, dual-stack.

A real :class:`Session` listening on loopback (port 0), with real v1 swarms; the peers
it dials are small gevent listeners in this process (:class:`Listener`), on distinct
127.0.0.x addresses. The clock of strikes and bans is stepped by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gevent
import gevent.socket
import pytest
from gevent.server import StreamServer

from debtorrent.policy import DialPolicy, Policy
from debtorrent.torrent import wire
from debtorrent.torrent.peer_list import PeerList
from debtorrent.torrent.session import Session, plain_ip
from debtorrent.torrent.swarm import TorrentSwarm
from tests.fixtures.engine import (
    FAST_EXT,
    RemotePeer,
    engine_session,
    make_torrent,
    wait_for,
)
from tests.fixtures.net import loopback_aliases_usable

PIECE = 64 * 1024
SIZES = {"x.bin": 5 * PIECE}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Listener:
    """A peer that accepts connections for one swarm, handshakes, and stays quiet."""

    def __init__(self, info_hash: bytes, host: str = "127.0.0.1") -> None:
        self.info_hash = info_hash
        self.connections = 0
        self.open = 0
        self.server = StreamServer((host, 0), self._handle)
        self.server.start()
        self.address = (host, self.server.server_port)

    def _handle(self, sock, _address) -> None:
        self.connections += 1
        self.open += 1
        try:
            remote = RemotePeer(sock, len(SIZES) * 5, read=False)
            remote.send(wire.Handshake(self.info_hash, wire.peer_id(), FAST_EXT))
            while sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self.open -= 1
            sock.close()

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def torrent(tmp_path: Path):
    return make_torrent(tmp_path, SIZES, PIECE)


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.stop()


def started(session: Session, torrent, tmp_path: Path, name: str = "dl") -> TorrentSwarm:
    meta, _ = torrent
    swarm = TorrentSwarm(session, meta, tmp_path / name)
    session.add_swarm(swarm)
    return swarm


# --- strikes decay, bans expire (finding 3) --------------------------------------------------


def test_strikes_decay_so_rare_errors_never_ban() -> None:
    with engine_session() as session:
        clock = session.clock = Clock()
        decay = session.policy.bans.strike_decay
        for _ in range(10):  # ten protocol errors, one per decay period: never banned
            session.strike("127.0.0.5", "odd message")
            clock.now += decay + 1
        assert not session.is_banned("127.0.0.5")
        assert session.strike_count("127.0.0.5") == 0
        # three within one period still ban
        for _ in range(3):
            session.strike("127.0.0.6", "garbage")
        assert session.is_banned("127.0.0.6")


def test_a_ban_expires_and_takes_its_strikes_with_it() -> None:
    with engine_session() as session:
        clock = session.clock = Clock()
        for _ in range(3):
            session.strike("127.0.0.7", "garbage")
        assert session.is_banned("127.0.0.7")
        clock.now += session.policy.bans.ban + 1
        assert not session.is_banned("127.0.0.7")
        session.strike("127.0.0.7", "one more")  # a fresh record: one strike, no ban
        assert not session.is_banned("127.0.0.7")
        assert session.strike_count("127.0.0.7") == 1


# --- the peer list (finding 5) ------------------------------------------------------------


@pytest.mark.skipif(not loopback_aliases_usable(), reason="needs distinct 127.0.0.x")
def test_a_candidate_over_the_cap_is_dialled_when_a_slot_frees(
    torrent, tmp_path: Path, listeners: list[Listener]
) -> None:
    """Before: an address over the caps was forgotten until the next announce."""
    meta, _ = torrent
    first, second = Listener(meta.info_hash, "127.0.0.41"), Listener(meta.info_hash, "127.0.0.42")
    listeners += [first, second]
    with engine_session(peer_bind="127.0.0.40", max_peers_per_swarm=1) as session:
        session.start()
        swarm = started(session, torrent, tmp_path)
        session.add_candidates(swarm, [first.address, second.address], "tracker")
        wait_for(lambda: len(swarm.peers) == 1, what="one peer")
        gevent.sleep(0.1)
        assert first.connections + second.connections == 1  # the cap holds
        (peer,) = swarm.peers
        assert peer.source == "tracker"
        peer.close("making room")
        wait_for(lambda: first.connections + second.connections == 2, what="the next dialled")
        wait_for(lambda: len(swarm.peers) == 1, what="the second peer up")
        assert {p.address for p in swarm.peers} | {peer.address} == {
            first.address,
            second.address,
        }


@pytest.mark.skipif(not loopback_aliases_usable(), reason="needs distinct 127.0.0.x")
def test_a_dead_candidate_backs_off_and_is_dropped(torrent, tmp_path: Path) -> None:
    with engine_session(peer_bind="127.0.0.43") as session:
        session.start()
        swarm = started(session, torrent, tmp_path)
        dead = ("127.0.0.44", 9)  # nothing listens: refused at once
        clock = session.clock = Clock()
        session.add_candidates(swarm, [dead], "tracker")
        peers = session.peer_lists[swarm.info_hash]
        wait_for(lambda: peers.get(dead).failures == 1, what="the first failure")
        for _ in range(5):  # the tracker repeats it: no redial, the back-off holds
            session.add_candidates(swarm, [dead], "tracker")
            session.fill()
        gevent.sleep(0.05)
        assert peers.get(dead).failures == 1
        for n in (2, 3):
            clock.now += session.policy.dial.retry.delay(n - 1) + 1
            session.fill()
            if n < 3:
                wait_for(lambda n=n: peers.get(dead).failures == n, what=f"failure {n}")
        wait_for(lambda: dead not in peers, what="the candidate dropped")
        assert peers.dropped == 1


def test_candidates_from_an_unknown_source_are_refused() -> None:
    with engine_session() as session, pytest.raises(ValueError):
        session.add_candidates(None, [("127.0.0.1", 1)], "gossip")  # type: ignore[arg-type]


@pytest.mark.skipif(not loopback_aliases_usable(), reason="needs distinct 127.0.0.x")
def test_banned_addresses_and_ourselves_are_no_candidates(torrent, tmp_path: Path) -> None:
    with engine_session(peer_bind="127.0.0.45") as session:
        session.start()
        swarm = started(session, torrent, tmp_path)
        session.ban("127.0.0.46", "test")
        added = session.add_candidates(
            swarm,
            [("127.0.0.46", 1000), ("127.0.0.45", session.listen_port), ("::1", 1000)],
            "dht",
        )
        assert added == 0  # banned, ourselves, another family than --peer-bind


def test_peer_list_orders_by_failures_then_source() -> None:
    peers = PeerList(DialPolicy(max_candidates=3))
    peers.add(("10.0.0.1", 1), "pex", 0)
    peers.add(("10.0.0.2", 1), "tracker", 0)
    peers.add(("10.0.0.3", 1), "static", 0)
    assert [c.address[0] for c in peers.pick(2, 0)] == ["10.0.0.3", "10.0.0.2"]
    peers.failed(("10.0.0.3", 1), 0)
    peers.failed(("10.0.0.2", 1), 0)
    # full: a new one replaces the worst non-static candidate
    assert peers.add(("10.0.0.4", 1), "lsd", 0)
    assert ("10.0.0.2", 1) not in peers and ("10.0.0.3", 1) in peers
    # static never dropped, whatever its failures
    for t in range(10):
        peers.failed(("10.0.0.3", 1), t)
    assert ("10.0.0.3", 1) in peers
    assert peers.get(("10.0.0.3", 1)).next_try > 9


# --- dual-stack and IPv6 peers (finding 7) ---------------------------------------------------


def _ipv6() -> bool:
    try:
        with gevent.socket.socket(gevent.socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback")
def test_the_peer_port_is_dual_stack(torrent, tmp_path: Path) -> None:
    meta, directory = torrent
    with engine_session() as session:  # no --peer-bind: all interfaces, both families
        session.start()
        swarm = TorrentSwarm(session, meta, directory)
        session.add_swarm(swarm)
        remotes = []
        for host in ("127.0.0.1", "::1"):
            sock = gevent.socket.create_connection((host, session.listen_port), 5)
            remote = RemotePeer(sock, swarm.layout.num_pieces)
            remote.send(wire.Handshake(swarm.info_hash, wire.peer_id(), FAST_EXT))
            remotes.append(remote)
        wait_for(lambda: len(swarm.peers) == 2, what="both peers")
        assert {p.address[0] for p in swarm.peers} == {"127.0.0.1", "::1"}
        assert all(p.source == "incoming" for p in swarm.peers)
        for remote in remotes:
            wait_for(lambda r=remote: r.handshake is not None, what="our handshake")
            remote.close()


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback")
def test_an_ipv6_candidate_is_dialled(torrent, tmp_path: Path) -> None:
    meta, _ = torrent
    six = Listener(meta.info_hash, "::1")
    try:
        with engine_session() as session:
            session.start()
            swarm = started(session, torrent, tmp_path)
            session.add_candidates(swarm, [six.address], "dht")
            wait_for(lambda: len(swarm.peers) == 1, what="the IPv6 peer")
            (peer,) = swarm.peers
            assert peer.address == six.address and peer.source == "dht"
    finally:
        six.stop()


def test_ipv4_mapped_addresses_are_plain_ipv4() -> None:
    assert plain_ip("::ffff:127.0.0.9") == "127.0.0.9"
    assert plain_ip("fe80::1%lo") == "fe80::1"
    assert plain_ip("2001:db8::1") == "2001:db8::1"


def test_session_settings_defaults_come_from_the_option_table() -> None:
    from debtorrent.config import default

    with engine_session() as session:
        settings = replace(session.settings, peer_port=default("peer-port"))
        assert settings.upload_slots == default("upload-slots")
        assert settings.max_peers == default("max-peers")
        assert settings.max_peers_per_swarm == default("max-peers-per-swarm")
        assert settings.http_timeout == default("http-timeout")
        assert isinstance(settings.policy, Policy)


def test_an_ipv6_peer_is_accepted_from_the_configuration() -> None:
    from debtorrent.config import load_config

    config = load_config({"peer": ["[::1]:6881", "127.0.0.2:6882"]})
    assert config.peer == [("::1", 6881), ("127.0.0.2", 6882)]
