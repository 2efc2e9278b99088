"""One peer connection (``torrent/peer.py``) over a socket pair, the far end played here.

The swarm is a real v1 :class:`TorrentSwarm` (a seed reading its files, or a leech
starting empty) of a real, unstarted :class:`Session`; the remote peer speaks bytes
through debtorrent's codec. Covers the memory a non-reading peer can make us hold, the
snubbed peer's way back, a later bitfield / have-all (aria2), BEP 6 cancel and
allowed-fast, keep-alives and the idle timeout.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gevent
import pytest

from debtorrent.policy import PeerTimeouts, Policy
from debtorrent.torrent import wire
from debtorrent.torrent.choker import ChokerSettings, PeerSnapshot, unchoke
from debtorrent.torrent.picker import PieceSet
from debtorrent.torrent.session import Session
from debtorrent.torrent.storage import TorrentStore
from debtorrent.torrent.swarm import TorrentSwarm
from tests.fixtures.engine import (  # noqa: F401 (close_remotes: an autouse fixture)
    PLAIN,
    close_remotes,
    connect_pair,
    engine_session,
    make_torrent,
    quick_policy,
    wait_for,
)

MiB = 1024 * 1024
PIECE = 256 * 1024
BIG = 128 * 1024  # the largest request the codec accepts
SIZES = {"a.bin": 12 * PIECE + 1000, "b.bin": 3 * PIECE}  # 16 pieces, the last short
NUM_PIECES = 16


@pytest.fixture
def session() -> Iterator[Session]:
    with engine_session() as s:
        yield s


@pytest.fixture
def torrent(tmp_path: Path):
    return make_torrent(tmp_path, SIZES, PIECE)


@pytest.fixture
def truth(torrent) -> Iterator[TorrentStore]:
    """The seed's files, to read the true bytes of a block."""
    meta, directory = torrent
    store = TorrentStore(meta.layout, directory, [f.path for f in meta.files])
    yield store
    store.close()


@pytest.fixture
def seed(torrent, session: Session) -> Iterator[TorrentSwarm]:
    meta, directory = torrent
    swarm = TorrentSwarm(session, meta, directory)
    assert swarm.have.complete
    yield swarm
    swarm.close()


@pytest.fixture
def leech(torrent, tmp_path: Path, session: Session) -> Iterator[TorrentSwarm]:
    meta, _ = torrent
    swarm = TorrentSwarm(session, meta, tmp_path / "leech")
    assert len(swarm.have) == 0
    yield swarm
    swarm.close()


def availability(swarm: TorrentSwarm) -> list[int]:
    return [swarm.picker.availability(p) for p in range(swarm.layout.num_pieces)]


# --- finding 1: bounded memory for a peer that requests and never reads ---------------------


def test_a_peer_that_never_reads_holds_at_most_a_few_mebibytes(seed: TorrentSwarm) -> None:
    """499 requests of 128 KiB (62 MiB) from a peer that never reads its socket.

    Before: the uploader read every block and queued it (the queue was capped at 2,000
    messages, 250 MiB of 128 KiB blocks), so such a peer made us hold 62 MiB here. Now
    the uploader waits for the socket below the send watermark: measured with
    tracemalloc, the connection holds under 4 MiB, and it resumes when the peer reads.
    """
    tracemalloc.start()
    try:
        peer, remote, _ = connect_pair(seed, read=False)
        peer.set_choking(False)
        gevent.sleep(0)
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        requests = [wire.Request(p % (NUM_PIECES - 1), 0, BIG) for p in range(499)]
        remote.send(wire.Interested(), *requests)
        # the uploader either stops at the watermark or (before) serves everything
        wait_for(
            lambda: getattr(peer, "waiting_for_drain", False) or not peer.incoming,
            what="the uploader to stop or finish",
        )
        gevent.sleep(0.05)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = max(current, peak) - baseline
    print(f"held by a non-reading peer: {held / MiB:.2f} MiB for 499 x 128 KiB requests")
    assert not peer.closed, peer.close_reason
    assert held < 4 * MiB, f"a peer that never reads made us hold {held / MiB:.1f} MiB"
    assert peer.queued_bytes <= peer.policy.limits.send_watermark + BIG
    assert len(peer.incoming) > 400  # the rest waits as requests, not as data
    # the peer starts reading: everything it asked for arrives
    remote.start_reading()
    wait_for(lambda: len(remote.of(wire.Piece)) == 499, 20, "all 499 blocks")
    assert {len(m.block) for m in remote.of(wire.Piece)} == {BIG}


def test_other_messages_piling_up_drop_a_peer_that_never_reads(seed: TorrentSwarm) -> None:
    """What is not a block (here haves) is bounded too: past max_send_bytes, closed."""
    peer, _remote, _ = connect_pair(seed, read=False)
    limit = peer.policy.limits.max_send_bytes
    for _ in range(limit // 9 + 1000):
        peer.have(0)
        if peer.closed:
            break
    assert peer.closed and "does not read" in peer.close_reason
    assert peer.queued_bytes == 0


# --- finding 2: a snubbed peer keeps one request and can earn its slot back -------------------


def seed_remote(leech: TorrentSwarm, **kw):
    """A remote seed of the leech's torrent that unchokes and never answers by itself."""
    leech.picker.set_file_priority(0, 1)
    leech.picker.set_file_priority(1, 1)
    peer, remote, greenlet = connect_pair(leech, **kw)
    remote.send(wire.HaveAll(), wire.Unchoke())
    return peer, remote, greenlet


def test_a_snubbed_peer_keeps_one_request_and_recovers(
    leech: TorrentSwarm, truth: TorrentStore
) -> None:
    peer, remote, _ = seed_remote(leech)
    full = peer.policy.limits.pipeline
    wait_for(lambda: len(remote.of(wire.Request)) == full, what="a full pipeline")
    peer.check_snubbed(time.monotonic() + peer.policy.timeouts.snub + 1)
    assert peer.snubbed
    # before: no request at all went to a snubbed peer, so it could never recover
    assert len(peer.requested) == 1, "a snubbed peer must keep one request outstanding"
    wait_for(lambda: len(remote.of(wire.Request)) == full + 1, what="the one request")
    (piece, begin), length = next(iter(peer.requested.items()))
    remote.send(wire.Piece(piece, begin, truth.read(piece, begin, length)))
    wait_for(lambda: not peer.snubbed, what="the snub to clear")
    wait_for(lambda: len(peer.requested) == full, what="the pipeline to refill")
    # and it competes for a regular unchoke slot again (the choker skips snubbed peers)
    remote.send(wire.Interested())
    wait_for(lambda: peer.peer_interested, what="interest")
    snapshot = PeerSnapshot(peer, True, download_rate=peer.down.rate, snubbed=peer.snubbed)
    slower = PeerSnapshot("slower", True, download_rate=peer.down.rate / 2)
    optimistic = PeerSnapshot("optimistic", True)
    chosen = unchoke(
        [slower, snapshot, optimistic],
        seeding=False,
        settings=ChokerSettings(upload_slots=2),
        optimistic="optimistic",
    )
    assert chosen == {peer, "optimistic"}


def test_a_block_given_up_on_still_clears_the_snub(
    leech: TorrentSwarm, truth: TorrentStore
) -> None:
    """Before: only a block matching a request still outstanding cleared the flag, and
    check_snubbed had just dropped them all. The late block is used, too."""
    peer, remote, _ = seed_remote(leech)
    wait_for(lambda: len(remote.of(wire.Request)) > 2, what="requests")
    peer.check_snubbed(time.monotonic() + peer.policy.timeouts.snub + 1)
    late = next(m for m in remote.of(wire.Request) if (m.index, m.begin) not in peer.requested)
    downloaded = leech.downloaded
    remote.send(wire.Piece(late.index, late.begin, truth.read(late.index, late.begin, late.length)))
    wait_for(lambda: not peer.snubbed, what="the late block to clear the snub")
    wait_for(lambda: leech.downloaded == downloaded + late.length, what="the late block kept")


# --- finding 10: a later bitfield or have-all replaces what the peer has ---------------------


def test_a_later_bitfield_and_have_all_replace_availability(
    leech: TorrentSwarm, session: Session
) -> None:
    """aria2 1.36 does this. Before: a protocol error, a strike, the connection closed."""
    peer, remote, _ = connect_pair(leech)
    first = PieceSet(NUM_PIECES)
    for p in (0, 1, 2):
        first.add(p)
    remote.send(wire.Bitfield(first.to_bytes()), wire.Have(5))
    wait_for(lambda: 5 in peer.has, what="the have")
    assert availability(leech) == [1, 1, 1, 0, 0, 1] + [0] * 10
    later = PieceSet(NUM_PIECES)
    for p in (3, 4, 5, 6):
        later.add(p)
    remote.send(wire.Bitfield(later.to_bytes()))
    wait_for(lambda: 3 in peer.has, what="the later bitfield")
    assert availability(leech) == [0, 0, 0, 1, 1, 1, 1] + [0] * 9
    remote.send(wire.HaveAll())
    wait_for(lambda: peer.seed, what="have all")
    assert availability(leech) == [1] * NUM_PIECES
    remote.send(wire.HaveNone())
    wait_for(lambda: not peer.seed, what="have none")
    assert availability(leech) == [0] * NUM_PIECES
    assert not peer.closed, peer.close_reason
    assert session.counters["protocol_errors"] == 0 and not session.strikes
    peer.close("test over")
    assert availability(leech) == [0] * NUM_PIECES


def test_extension_messages_with_unsorted_keys_are_no_strike(
    leech: TorrentSwarm, session: Session
) -> None:
    """Before: strict bencode raised a protocol error (a strike; three ban)."""
    peer, remote, _ = connect_pair(leech)
    body = b"\x00" + b"d1:md9:dt_hashesi1ee1:v3:lt11:pi6881ee"  # "v" before "p"
    remote.sock.sendall((len(body) + 1).to_bytes(4, "big") + b"\x14" + body)
    wait_for(lambda: peer.client == "lt1" or peer.closed, what="the extension handshake")
    assert not peer.closed, peer.close_reason
    assert peer.listen_port == 6881 and peer.extensions == {"dt_hashes": 1}
    assert session.counters["protocol_errors"] == 0


# --- finding 8: BEP 6 ------------------------------------------------------------------------


def test_a_cancel_from_a_fast_peer_is_answered_with_a_reject(seed: TorrentSwarm) -> None:
    peer, remote, _ = connect_pair(seed)
    peer.set_choking(False)
    wait_for(lambda: remote.of(wire.Unchoke), what="the unchoke")
    # request and cancel in one segment: the cancel finds the request still queued
    remote.send(wire.Request(2, 0, 16384), wire.Cancel(2, 0, 16384))
    wait_for(lambda: remote.of(wire.RejectRequest), what="a reject for the cancel")
    assert remote.of(wire.RejectRequest) == [wire.RejectRequest(2, 0, 16384)]
    assert not remote.of(wire.Piece)


def test_a_cancel_from_a_plain_peer_gets_no_answer(seed: TorrentSwarm) -> None:
    peer, remote, _ = connect_pair(seed, reserved=PLAIN)
    peer.set_choking(False)
    remote.send(wire.Request(2, 0, 16384), wire.Cancel(2, 0, 16384), wire.Request(3, 0, 16))
    wait_for(lambda: remote.of(wire.Piece), what="the later request's block")
    assert [(m.index, len(m.block)) for m in remote.of(wire.Piece)] == [(3, 16)]


def test_allowed_fast_pieces_are_requested_while_choked(leech: TorrentSwarm) -> None:
    leech.picker.set_file_priority(0, 1)
    leech.picker.set_file_priority(1, 1)
    peer, remote, _ = connect_pair(leech)
    remote.send(wire.HaveAll(), wire.AllowedFast(7))  # and never unchokes us
    wait_for(lambda: remote.of(wire.Request), what="requests while choked")
    assert peer.peer_choking
    assert {m.index for m in remote.of(wire.Request)} == {7}


# --- keep-alives and the idle timeout --------------------------------------------------------


def test_the_idle_timeout_is_clearly_longer_than_the_keepalive_period() -> None:
    """BEP 3 peers send a keep-alive every two minutes; the idle timeout used to be
    exactly that (120 s), so a quiet healthy peer could be dropped."""
    timeouts = Policy().timeouts
    assert timeouts.idle >= 2 * 120
    assert timeouts.keepalive < 120
    with pytest.raises(ValueError):
        PeerTimeouts(idle=100, keepalive=60)


def test_keepalives_keep_a_quiet_connection_and_silence_ends_it(
    tmp_path: Path,
) -> None:
    policy = quick_policy(idle=0.6, keepalive=0.25)
    with engine_session(policy) as session:
        meta, directory = make_torrent(tmp_path, SIZES, PIECE)
        swarm = TorrentSwarm(session, meta, directory)
        peer, remote, _ = connect_pair(swarm)
        for _ in range(6):  # three idle timeouts long, with keep-alives in between
            remote.send(wire.KeepAlive())
            gevent.sleep(0.2)
        assert not peer.closed, peer.close_reason
        assert remote.of(wire.KeepAlive), "we sent no keep-alive while quiet"
        wait_for(lambda: peer.closed, 5, "the idle timeout")
        assert "timed out" in peer.close_reason or "lost" in peer.close_reason
        swarm.close()


def test_policy_changes_are_copies() -> None:
    policy = Policy()
    other = replace(policy, timeouts=replace(policy.timeouts, idle=900.0))
    assert policy.timeouts.idle == 300.0 and other.timeouts.idle == 900.0
    with pytest.raises(AttributeError):
        policy.timeouts.idle = 1.0  # type: ignore[misc]
