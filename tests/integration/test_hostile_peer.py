"""Peers that lie or break the protocol: the download survives, the liar is banned.

A test double (``tests/fixtures/peer.py``) speaks the wire protocol, claims every piece of
a v1 torrent and answers every request with wrong bytes. debtorrent's engine (the
standalone entry point, a subprocess) downloads from it and from a real libtorrent seed
after it: the files must arrive intact, the double must be banned (its connection closed,
a warning ``banned peer <ip>`` logged, new connections from its address refused) and the
honest seed must not be.

Then the codec's hard limits against a running peer port: a length prefix of 2^32-1, a
bitfield of the wrong length, a request above the limit each close the connection; the
third strike bans the address; and the process still serves another peer.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest

from debtorrent.torrent import wire
from debtorrent.torrent.metainfo import create_torrent, parse_torrent
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import FakeSeed, Standalone, WirePeer, lt_add, lt_session, lt_wait

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

MiB = 1024 * 1024
PIECE = 256 * 1024
SIZE = 8 * MiB + 4321  # 33 pieces, the last one short
NAME = "hostile"


class Torrent:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = random.Random(42).randbytes(SIZE)
        (base / NAME).mkdir(parents=True)
        (base / NAME / "payload.bin").write_bytes(self.data)
        (base / NAME / "note.txt").write_bytes(b"a small second file\n")
        self.files = {
            "payload.bin": hashlib.sha256(self.data).hexdigest(),
            "note.txt": hashlib.sha256(b"a small second file\n").hexdigest(),
        }
        self.torrent_bytes = create_torrent(base / NAME, PIECE)
        self.meta = parse_torrent(self.torrent_bytes)
        self.torrent = base.parent / "hostile.torrent"
        self.torrent.write_bytes(self.torrent_bytes)
        # the torrent's byte stream: its files concatenated in the torrent's order
        self.stream = b"".join((base / Path(*f.path)).read_bytes() for f in self.meta.files)

    def check(self, save_path: Path) -> None:
        got = {
            rel: hashlib.sha256((save_path / NAME / rel).read_bytes()).hexdigest()
            for rel in self.files
        }
        assert got == self.files

    def good_block(self, index: int, begin: int, length: int) -> bytes:
        start = index * PIECE + begin
        return self.stream[start : start + length]

    def bad_block(self, index: int, begin: int, length: int) -> bytes:
        return bytes(b ^ 0x5A for b in self.good_block(index, begin, length))


@pytest.fixture(scope="module")
def torrent(tmp_path_factory) -> Torrent:
    return Torrent(tmp_path_factory.mktemp("hostile") / "seed")


def _refused(host: str, port: int, source: str, info_hash: bytes) -> bool:
    """True when a connection from ``source`` is closed without a handshake reply."""
    with WirePeer(host, port, source=source) as p:
        try:
            p.handshake(info_hash, wait=False)
        except OSError:
            return True
        return p.closed_by_remote(5.0) and p.remote_handshake is None


@pytest.mark.parametrize("interleave", [False, True], ids=["in-order", "interleaved"])
def test_lying_peer_is_banned_and_the_file_arrives_intact(
    torrent: Torrent, tmp_path: Path, interleave: bool
) -> None:
    """The leech dials the liar (its only ``--peer``); once the liar is banned, a real
    libtorrent seed connects and must bring every file in intact.

    In order, the liar answers requests as they come, so its first whole piece fails
    before any other block of it is read. Interleaved, it answers a batch of requests
    block 0 of each piece first, then block 1, ..., so when its first piece fails the
    others it was sending are complete but for one block: finishing them, the honest
    seed must not be taken for a liar (the liar's blocks must not be kept, or not blamed
    on it), and the file must still arrive.
    """
    base = 50 if interleave else 40
    lt_host, liar_host, leech_host = (f"127.0.0.{base + i}" for i in (1, 2, 3))
    ses = lt_session(lt_host)
    h = lt_add(ses, torrent.torrent_bytes, torrent.base)
    fake = FakeSeed(
        torrent.meta.info_hash,
        torrent.meta.num_pieces,
        torrent.bad_block,
        host=liar_host,
        interleave=interleave,
    ).start()
    dl = tmp_path / "dl"
    dl.mkdir()
    leech = Standalone(
        tmp_path, torrent.torrent, dl, bind=leech_host, peers=[fake.address], name="leech"
    )
    try:
        lt_wait(h, lambda s: s.is_seeding, 30, "seeding")
        leech.start()
        line = leech.wait_log(f"banned peer {liar_host}", timeout=15)
        assert "WARNING" in line, line
        # the liar did send bad data, and its connection is gone
        assert fake.blocks_sent >= 1, "the liar never sent a block"
        deadline = time.monotonic() + 5
        while fake.closed_by_remote < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.closed_by_remote >= 1, "the liar's connection was not closed"
        # later connections from the liar's address are refused; others are not
        assert _refused(leech_host, leech.port, liar_host, torrent.meta.info_hash)
        with WirePeer(leech_host, leech.port, source=f"127.0.0.{base + 4}") as ok:
            assert ok.handshake(torrent.meta.info_hash) is not None
        # now the honest seed: the download completes, intact, and it is not banned
        h.connect_peer((leech_host, leech.port))
        honest_banned = f"banned peer {lt_host}"
        deadline = time.monotonic() + 20
        while leech.completed_at is None and time.monotonic() < deadline:
            if honest_banned in leech.log_text():
                break
            time.sleep(0.05)
        print(f"liar: {fake.handshakes} handshakes, {fake.blocks_sent} bad blocks sent")
        warnings = [x for x in leech.log_text().splitlines() if "WARNING" in x]
        print("\n".join(warnings))
        listed = "\n".join(warnings)
        assert honest_banned not in leech.log_text(), f"the honest seed was banned:\n{listed}"
        assert leech.completed_at is not None, f"not complete in 20 s:\n{leech.log_tail()}"
        torrent.check(dl)
        assert h.status().total_payload_upload > 0
        assert fake.connections == 1, "the banned liar was dialled again"
        assert not fake.errors, fake.errors
        assert leech.running
    finally:
        leech.stop()
        fake.stop()
        ses.remove_torrent(h)
        del ses


def test_codec_limits_close_the_connection_and_the_process_keeps_serving(
    torrent: Torrent, tmp_path: Path
) -> None:
    seed_host, bad_host, good_host = "127.0.0.61", "127.0.0.62", "127.0.0.63"
    ih = torrent.meta.info_hash
    n = torrent.meta.num_pieces
    seed = Standalone(tmp_path, torrent.torrent, torrent.base, bind=seed_host, name="seed")
    try:
        seed.start()
        seed.wait_complete(timeout=30)
        cases = [
            ("length prefix 2^32-1", b"\xff\xff\xff\xff" + b"\0" * 64, "exceeds the limit"),
            (
                "bitfield one byte too long",
                wire.encode(wire.Bitfield(b"\0" * ((n + 7) // 8 + 1))),
                "bitfield",
            ),
            (
                "request above the limit",
                wire.encode(wire.Request(0, 0, wire.MAX_REQUEST_LEN * 2)),
                "block length",
            ),
        ]
        for what, payload, _hint in cases:
            with WirePeer(seed_host, seed.port, source=bad_host, num_pieces=n) as p:
                assert p.handshake(ih) is not None, f"{what}: no handshake before the test"
                t0 = time.monotonic()
                p.send(payload)
                assert p.closed_by_remote(5.0), f"{what}: connection left open"
                print(f"{what}: closed after {time.monotonic() - t0:.3f} s")
            assert seed.running, f"seed died on {what}:\n{seed.log_tail()}"
        log = seed.log_text()
        for what, _payload, hint in cases:
            assert any(
                f"peer {bad_host}:" in line and hint in line.lower() for line in log.splitlines()
            ), f"no log line for {what}:\n{seed.log_tail()}"
        # three strikes: the address is banned, new connections from it refused
        seed.wait_log(f"banned peer {bad_host}", timeout=5)
        assert _refused(seed_host, seed.port, bad_host, ih)
        # the process still serves a well-behaved peer: a real block, correct bytes
        with WirePeer(seed_host, seed.port, source=good_host, num_pieces=n) as p:
            assert p.handshake(ih) is not None
            bf = p.wait_for(wire.Bitfield)
            assert bf.bits[0] & 0x80, "seed does not claim piece 0"
            p.send(wire.Interested())
            p.wait_for(wire.Unchoke, timeout=15)
            p.send(wire.Request(3, 16384, 16384))
            piece = p.wait_for(wire.Piece, timeout=5)
            assert (piece.index, piece.begin) == (3, 16384)
            assert piece.block == torrent.good_block(3, 16384, 16384)
            assert not p.eof
    finally:
        seed.stop()
