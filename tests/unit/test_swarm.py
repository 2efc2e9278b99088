"""Swarms (``torrent/swarm.py``, ``torrent/suite.py``) driven through peer connections.

A v1 :class:`TorrentSwarm` for the generic block flow (smart ban, availability, the
allowed-fast restriction), and a :class:`SuiteSwarm` built from a small ``Packages``
index for the file plane and the hash-list protocol: a relay whose copy failed at its
source is dropped, not banned; a peer whose list lies is still banned; BEP 3 piece
messages and pieces of unknown files are protocol errors.
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
from debtorrent.torrent import filewire as fw
from debtorrent.torrent import wire
from debtorrent.torrent.layout import BLOCK_SIZE
from debtorrent.torrent.picker import PieceSet
from debtorrent.torrent.session import Session
from debtorrent.torrent.suite import SuiteSwarm, suite_identity
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


# --- a suite swarm of one four-piece file, and a relay speaking the file plane ---------------


class Package:
    """A four-piece file, its index, a suite swarm over it, and a bad copy of it."""

    def __init__(self, base: Path, session: Session) -> None:
        rng = random.Random(7)
        self.good = rng.randbytes(4 * PIECE - 1000)
        bad = bytearray(self.good)
        bad[PIECE + 5] ^= 0xFF  # piece 1 differs
        self.bad = bytes(bad)
        self.sha = hashlib.sha256(self.good).digest()
        text = (
            f"Package: dt-x\nVersion: 1.0\nFilename: {FILE}\nSize: {len(self.good)}\n"
            f"SHA256: {self.sha.hex()}\n\n"
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
        self.swarm = SuiteSwarm(session, suite_identity(loaded), Cache(base / "cache"))
        self.swarm.add_index(loaded)

    @staticmethod
    def hashes(data: bytes, pieces: int) -> bytes:
        return b"".join(
            hashlib.sha256(data[i * PIECE : (i + 1) * PIECE]).digest() for i in range(pieces)
        )


#: the ids the relay gives the file plane's extensions (ours are wire.LOCAL_EXTENSIONS)
RELAY_IDS = {name: 20 + i for i, name in enumerate(fw.NAMES)}
RELAY_NAMES = {v: k for k, v in RELAY_IDS.items()}


class Relay:
    """The remote daemon: says it fetches the file, gives its hash list and pieces, all
    in file-plane messages (files by SHA256, pieces counted within the file)."""

    def __init__(self, package: Package, remote: RemotePeer) -> None:
        self.remote = remote
        self.sha = package.sha
        self.data = package.bad
        self.pieces = 3  # what it has and has hashed so far
        self._seen = 0
        self._greenlet = gevent.spawn(self._serve)

    def send(self, msg: object) -> None:
        name, payload, trailing = fw.encode(msg)
        self.remote.send(wire.Extended(wire.LOCAL_EXTENSIONS[name], payload, trailing))

    def have(self) -> None:
        self.send(fw.Have(self.sha, tuple(range(self.pieces))))

    def _serve(self) -> None:
        while True:
            for msg in self.remote.received[self._seen :]:
                self._seen += 1
                if not isinstance(msg, wire.Extended) or msg.ext_id not in RELAY_NAMES:
                    continue
                got = fw.decode(RELAY_NAMES[msg.ext_id], msg.payload, msg.trailing)
                if isinstance(got, fw.Request) and got.piece < self.pieces:
                    start = got.piece * PIECE + got.offset
                    block = self.data[start : start + got.length]
                    self.send(fw.Piece(got.sha256, got.piece, got.offset, block))
                elif isinstance(got, fw.HashesRequest):
                    self.send(fw.HashesReply(got.sha256, Package.hashes(self.data, self.pieces)))
            gevent.sleep(0.005)

    def stop(self) -> None:
        self._greenlet.kill(block=False)


@pytest.fixture
def package(tmp_path: Path, session: Session) -> Iterator[Package]:
    pkg = Package(tmp_path, session)
    yield pkg
    pkg.swarm.close()


def relay_of(package: Package, run: int | None = None) -> tuple[Relay, object]:
    swarm = package.swarm
    peer, remote, _ = connect_pair(swarm)
    handshake = wire.ExtensionHandshake(m=dict(RELAY_IDS), v="relay", run=run)
    remote.send(handshake.message())
    wait_for(lambda: peer.extensions, what="the extension handshake")
    assert peer.extensions == RELAY_IDS
    relay = Relay(package, remote)
    relay.send(fw.FetchStarted(package.sha, 1))
    relay.have()
    remote.send(wire.Unchoke())
    wait_for(lambda: swarm.claims.fetching(0) and not peer.peer_choking, what="the relay")
    return relay, peer


def test_a_relay_whose_copy_failed_at_the_source_is_not_banned(
    package: Package, session: Session
) -> None:
    """The relay fetched the file from a mirror that sent a bad piece 1, gave us its list
    and three pieces, then found the whole file bad and says so. We drop what came from
    it and do not ban it; its good second copy then completes the file."""
    relay, peer = relay_of(package)  # first: the file is being fetched by a peer
    request = package.swarm.request(0)
    swarm = package.swarm
    wait_for(lambda: all(p in swarm.have for p in range(3)), what="three pieces from the relay")
    relay.send(fw.FetchAborted(package.sha, failed=True))  # its whole-file check failed
    relay.data, relay.pieces = package.good, 4
    wait_for(lambda: 1 not in swarm.have, what="the relay's pieces dropped")
    relay.send(fw.FetchFinished(package.sha))
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


def _requests_seen(relay: Relay) -> list[fw.Request]:
    return [
        got
        for msg in relay.remote.received
        if isinstance(msg, wire.Extended) and RELAY_NAMES.get(msg.ext_id) == fw.DT_REQUEST
        for got in [fw.decode(fw.DT_REQUEST, msg.payload, msg.trailing)]
    ]


@pytest.mark.parametrize("run", [None, fw.MAX_RUN])
def test_a_peer_that_announces_dt_run_is_asked_for_runs_of_blocks(
    package: Package, session: Session, run: int | None
) -> None:
    """A daemon that serves runs (``dt_run`` in its handshake) is asked for up to
    ``file_run`` bytes of consecutive blocks in one dt_request, and its one dt_piece
    per run is taken block by block; a peer that does not announce it gets blocks."""
    relay, peer = relay_of(package, run=run)
    relay.data, relay.pieces = package.good, 4
    relay.have()
    path = package.swarm.request(0).wait(10)
    relay.stop()
    assert path.read_bytes() == package.good
    asked = _requests_seen(relay)
    longest = max(r.length for r in asked)
    blocks = -(-len(package.good) // BLOCK_SIZE)
    if run is None:
        assert peer.max_run == BLOCK_SIZE and longest == BLOCK_SIZE and len(asked) == blocks
    else:
        assert peer.max_run == session.policy.limits.file_run == longest == 8 * BLOCK_SIZE
        assert len(asked) < blocks // 2, [(r.piece, r.offset, r.length) for r in asked]
    assert not session.is_banned(peer.address[0]) and not peer.closed


def test_bep3_piece_messages_in_a_suite_swarm_are_protocol_errors(
    package: Package, session: Session
) -> None:
    """Piece numbers mean nothing between two daemons of a suite swarm: a BEP 3 have,
    bitfield or request is struck and the connection closed."""
    peer, remote, _ = connect_pair(package.swarm)
    remote.send(wire.HaveAll())
    wait_for(lambda: peer.closed, what="the connection closed")
    assert session.counters["protocol_errors"] == 1
    assert len(peer.has) == 0


def test_a_piece_of_a_file_nobody_asked_for_is_a_protocol_error(
    package: Package, session: Session
) -> None:
    peer, remote, _ = connect_pair(package.swarm)
    remote.send(wire.ExtensionHandshake(m=dict(RELAY_IDS)).message())
    wait_for(lambda: peer.extensions, what="the extension handshake")
    stranger = hashlib.sha256(b"not in any index").digest()
    name, payload, trailing = fw.encode(fw.Piece(stranger, 0, 0, b"x" * 100))
    remote.send(wire.Extended(wire.LOCAL_EXTENSIONS[name], payload, trailing))
    wait_for(lambda: peer.closed, what="the connection closed")
    assert session.counters["protocol_errors"] == 1


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


def test_a_cancel_of_one_block_of_a_queued_run_rejects_the_whole_run(
    torrent, tmp_path: Path, session: Session
) -> None:
    """A run of blocks queued for upload cannot be cut per block: a cancel of any of
    its blocks drops the run and rejects it whole (BEP 6), and the downloader asks
    again for what it still wants; a cancel matching nothing queued changes nothing."""
    meta, _ = torrent
    swarm = TorrentSwarm(session, meta, tmp_path / "dl")
    try:
        peer, remote, _ = connect_pair(swarm)
        wait_for(lambda: peer.fast, what="the fast extension")
        run, other = wire.Request(1, 0, 4 * BLOCK_SIZE), wire.Request(2, 0, BLOCK_SIZE)
        peer.incoming.extend([run, other])  # queued: the uploader is not woken
        peer.handle(wire.Cancel(3, 0, BLOCK_SIZE))
        assert list(peer.incoming) == [run, other]
        peer.handle(wire.Cancel(1, 2 * BLOCK_SIZE, BLOCK_SIZE))
        assert list(peer.incoming) == [other]
        wait_for(lambda: remote.of(wire.RejectRequest), what="the reject")
        assert remote.of(wire.RejectRequest) == [wire.RejectRequest(1, 0, 4 * BLOCK_SIZE)]
        peer.incoming.clear()
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
