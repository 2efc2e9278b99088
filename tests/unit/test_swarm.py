"""Swarms (``torrent/swarm.py``, ``torrent/packages.py``) driven through peer connections.

A v1 :class:`TorrentSwarm` for the generic block flow (smart ban, availability, the
allowed-fast restriction), and a :class:`PackageSwarm` built from a small ``Packages``
index for the hash-list protocol: a relay whose copy failed at its source is dropped,
not banned; a peer whose list lies is still banned.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from debtorrent.archive.indexes import LoadedIndex
from debtorrent.archive.packages import scan_packages
from debtorrent.archive.release import ReleaseInfo
from debtorrent.cache import Cache
from debtorrent.torrent import wire
from debtorrent.torrent.packages import PackageSwarm
from debtorrent.torrent.picker import PieceSet
from debtorrent.torrent.session import Session
from debtorrent.torrent.swarm import TorrentSwarm
from tests.fixtures.engine import (
    RemotePeer,
    connect_pair,
    engine_session,
    make_torrent,
    wait_for,
)

PIECE = 256 * 1024
FILE = "pool/main/d/dt-x/dt-x_1.0_all.deb"


@pytest.fixture
def session() -> Iterator[Session]:
    with engine_session(http_seed_delay=600.0) as s:
        yield s


# --- a package swarm of one four-piece file ---------------------------------------------------


class Package:
    """A four-piece file, its index, a swarm over it, and a bad copy of it."""

    def __init__(self, base: Path, session: Session) -> None:
        rng = random.Random(7)
        self.good = rng.randbytes(4 * PIECE - 1000)
        bad = bytearray(self.good)
        bad[PIECE + 5] ^= 0xFF  # piece 1 differs
        self.bad = bytes(bad)
        text = (
            f"Package: dt-x\nVersion: 1.0\nFilename: {FILE}\nSize: {len(self.good)}\n"
            f"SHA256: {hashlib.sha256(self.good).hexdigest()}\n\n"
        ).encode()
        release = ReleaseInfo(
            dist="debian/dists/bookworm",
            root="debian",
            origin="Test",
            label="Test",
            suite="bookworm",
            codename="bookworm",
            date="Sat, 01 Nov 2026 00:00:00 UTC",
            by_hash=True,
        )
        loaded = LoadedIndex(
            mirror="mirror.invalid",
            path="debian/dists/bookworm/main/binary-all/Packages",
            release=release,
            component="main",
            arch="all",
            index=scan_packages(text),
        )
        self.swarm = PackageSwarm(session, loaded, Cache(base / "cache"))

    @staticmethod
    def hashes(data: bytes, pieces: int) -> bytes:
        return b"".join(
            hashlib.sha256(data[i * PIECE : (i + 1) * PIECE]).digest() for i in range(pieces)
        )


class Relay:
    """The remote daemon: says it fetches the file, gives its hash list and pieces."""

    def __init__(self, package: Package, remote: RemotePeer) -> None:
        self.remote = remote
        self.data = package.bad
        self.pieces = 3  # what it has and has hashed so far
        self._seen = 0
        self._greenlet = gevent.spawn(self._serve)

    def send_ext(self, name: str, payload: dict) -> None:
        local = {"dt_hashes": 1, "dt_fetching": 2}[name]  # the ids the swarm announces
        self.remote.send(wire.Extended(local, payload))

    def have(self) -> None:
        bits = PieceSet(4)
        for p in range(self.pieces):
            bits.add(p)
        self.remote.send(wire.Bitfield(bits.to_bytes()))

    def _serve(self) -> None:
        while True:
            for msg in self.remote.received[self._seen :]:
                self._seen += 1
                if isinstance(msg, wire.Request) and msg.index < self.pieces:
                    start = msg.index * PIECE + msg.begin
                    block = self.data[start : start + msg.length]
                    self.remote.send(wire.Piece(msg.index, msg.begin, block))
                elif isinstance(msg, wire.Extended) and msg.ext_id == 3:  # our dt_hashes
                    reply = wire.HashesReply(0, Package.hashes(self.data, self.pieces))
                    self.send_ext("dt_hashes", wire.encode_dt_hashes(reply))
            gevent.sleep(0.005)

    def stop(self) -> None:
        self._greenlet.kill(block=False)


@pytest.fixture
def package(tmp_path: Path, session: Session) -> Iterator[Package]:
    pkg = Package(tmp_path, session)
    yield pkg
    pkg.swarm.close()


def relay_of(package: Package) -> tuple[Relay, object]:
    swarm = package.swarm
    peer, remote, _ = connect_pair(swarm)
    handshake = wire.ExtensionHandshake(m={"dt_hashes": 3, "dt_fetching": 4}, v="relay")
    remote.send(handshake.message())
    wait_for(lambda: peer.extensions, what="the extension handshake")
    assert peer.extensions == {"dt_hashes": 3, "dt_fetching": 4}
    relay = Relay(package, remote)
    relay.send_ext("dt_fetching", wire.encode_dt_fetching(wire.FetchStarted(0, 1)))
    relay.have()
    remote.send(wire.Unchoke())
    wait_for(lambda: swarm.peer_fetching.get(0) and not peer.peer_choking, what="the relay")
    return relay, peer


def test_a_relay_whose_copy_failed_at_the_source_is_not_banned(
    package: Package, session: Session
) -> None:
    """The relay fetched the file from a mirror that sent a bad piece 1, gave us its list
    and three pieces, then found the whole file bad and says so. We drop what came from
    it and do not ban it; its good second copy then completes the file.

    Before: the flag did not exist; we kept the bad list, so the relay's good copy
    disagreed with it, and the file was judged against the bad list: the relay banned
    ("its hash list gave a file failing the index SHA256") or the download stuck.
    """
    relay, peer = relay_of(package)  # first: the file is being fetched by a peer
    request = package.swarm.request(0)
    swarm = package.swarm
    wait_for(lambda: all(p in swarm.have for p in range(3)), what="three pieces from the relay")
    # the relay's whole-file check failed: it tells us, then fetches a good copy
    relay.send_ext("dt_fetching", {"msg_type": 2, "file": 0, "failed": 1})  # as on the wire
    relay.data, relay.pieces = package.good, 4
    wait_for(lambda: 1 not in swarm.have, what="the relay's pieces dropped")
    relay.send_ext("dt_fetching", wire.encode_dt_fetching(wire.FetchFinished(0)))
    relay.have()
    retry = swarm.requests.get(0)
    assert request.error is not None  # readers of the bad bytes were cut
    assert retry is not None and retry is not request
    path = retry.wait(10)
    relay.stop()
    assert path.read_bytes() == package.good
    assert not session.is_banned(peer.address[0]) and session.counters["bans"] == 0
    assert not peer.closed


def test_a_peer_whose_hash_list_lies_is_still_banned(package: Package, session: Session) -> None:
    """Without the flag, a list that gives a file failing the index SHA256 bans its giver."""
    relay, peer = relay_of(package)
    relay.pieces = 4
    request = package.swarm.request(0)
    relay.have()
    wait_for(lambda: request.event.is_set(), 10, what="the whole-file check")
    relay.stop()
    assert isinstance(request.error, Exception)
    assert session.is_banned(peer.address[0])
    assert peer.closed


# --- the generic block flow (v1) ---------------------------------------------------------------

SIZES = {"a.bin": 6 * 65536}


@pytest.fixture
def torrent(tmp_path: Path):
    return make_torrent(tmp_path, SIZES, 65536)


def test_a_peer_sending_bad_data_is_banned_and_its_blocks_dropped(
    torrent, tmp_path: Path, session: Session
) -> None:
    meta, _ = torrent
    swarm = TorrentSwarm(session, meta, tmp_path / "dl")
    try:
        peer, remote, _ = connect_pair(swarm)
        remote.send(wire.HaveAll(), wire.Unchoke())
        wait_for(lambda: remote.of(wire.Request), what="requests")
        try:
            for req in remote.of(wire.Request):
                remote.send(wire.Piece(req.index, req.begin, b"\0" * req.length))
        except OSError:
            pass  # closed on us: that is the point
        wait_for(lambda: peer.closed, what="the liar dropped")
        assert session.is_banned(peer.address[0])
        assert len(swarm.have) == 0
        # nothing it sent is kept: a later good sender is not blamed for its blocks
        assert all(not swarm.picker.piece_senders(p) for p in range(6))
        assert not swarm.picker.requests_of(peer)
        assert all(swarm.picker.availability(p) == 0 for p in range(6))
    finally:
        swarm.close()


def test_allowed_fast_limits_the_pick(torrent, tmp_path: Path, session: Session) -> None:
    meta, _ = torrent
    swarm = TorrentSwarm(session, meta, tmp_path / "dl")
    try:
        peer, remote, _ = connect_pair(swarm, read=False)
        peer.has = PieceSet.full(6)
        picked = swarm.pick(peer, 100, allowed={2, 4})
        assert {p for p, _, _ in picked} == {2, 4}
        assert len(picked) == 8  # four 16 KiB blocks per 64 KiB piece
        remote.close()
    finally:
        swarm.close()
