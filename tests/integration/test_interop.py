"""debtorrent's wire protocol against libtorrent, the reference client, on loopback.

One standard v1 multi-file torrent (made by libtorrent, 256 KiB pieces, > 20 MiB: a big
file, a mid-size one whose pieces straddle file boundaries, a 3-byte file and a 0-byte
one) is moved both ways: libtorrent seeds and debtorrent's engine (the standalone entry
point, a subprocess) downloads; then debtorrent seeds and libtorrent downloads. The SHA256
of every file must match the source. The info hash both compute must be the same, for a
torrent made by either of them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from debtorrent.torrent.metainfo import create_torrent, load_torrent, parse_torrent
from tests.fixtures.helpers import sha256_file
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import Standalone, lt_add, lt_session, lt_wait

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

MiB = 1024 * 1024
PIECE = 256 * 1024
NAME = "interop"
# Sizes chosen so pieces span file boundaries and the last piece is short.
FILES = {
    "big.bin": 20 * MiB + 123_457,
    "docs/empty.txt": 0,
    "docs/tiny.txt": 3,
    "mid.bin": 700_001,
}
LT_SEED, DT_LEECH, DT_SEED, LT_LEECH = "127.0.0.31", "127.0.0.32", "127.0.0.33", "127.0.0.34"


class Content:
    def __init__(self, base: Path) -> None:
        self.base = base  # save path: files live in base / NAME / ...
        self.src = base / NAME
        rng = random.Random(20261123)
        for rel, size in FILES.items():
            p = self.src / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rng.randbytes(size))
        self.sha = {rel: sha256_file(self.src / rel) for rel in FILES}
        # the transfer torrent is libtorrent's own (v1 only), i.e. a standard one
        entries = [lt.create_file_entry(f"{NAME}/{rel}", FILES[rel]) for rel in sorted(FILES)]
        ct = lt.create_torrent(entries, PIECE, flags=lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, str(base))
        self.torrent_bytes = lt.bencode(ct.generate())
        self.torrent = base.parent / "interop.torrent"
        self.torrent.write_bytes(self.torrent_bytes)
        self.total = sum(FILES.values())

    def check(self, save_path: Path) -> None:
        got = {}
        for rel in FILES:
            p = save_path / NAME / rel
            assert p.is_file(), f"{p} missing"
            assert p.stat().st_size == FILES[rel], rel
            got[rel] = sha256_file(p)
        assert got == self.sha, self.diagnose(save_path)

    def diagnose(self, save_path: Path) -> str:
        """Which pieces differ from the source, and whether they read as zeros."""
        bad = []
        for rel in sorted(FILES):
            a, b = (self.src / rel).read_bytes(), (save_path / NAME / rel).read_bytes()
            for off in range(0, len(a), PIECE):
                if a[off : off + PIECE] != b[off : off + PIECE]:
                    zeros = not b[off : off + PIECE].strip(b"\0")
                    bad.append(f"{rel}@{off // PIECE}{' (zeros)' if zeros else ''}")
        return f"pieces differing from the source: {bad}"


@pytest.fixture(scope="module")
def content(tmp_path_factory) -> Content:
    return Content(tmp_path_factory.mktemp("interop") / "seed")


def test_info_hash_agrees_with_libtorrent(content: Content, tmp_path: Path) -> None:
    # a torrent made by libtorrent, read by debtorrent
    meta = parse_torrent(content.torrent_bytes)
    ti = lt.torrent_info(content.torrent_bytes)
    assert meta.info_hash == ti.info_hashes().v1.to_bytes()
    assert meta.num_pieces == ti.num_pieces() == -(-content.total // PIECE)
    assert [("/".join(f.path), f.size) for f in meta.files] == [
        (ti.layout().file_path(i), ti.layout().file_size(i)) for i in range(ti.num_files())
    ]
    # a torrent made by debtorrent, read by libtorrent: same files in the same order,
    # so the same pieces and the same info hash as libtorrent's
    ours = create_torrent(content.src, PIECE, files=sorted(FILES))
    ti2 = lt.torrent_info(ours)
    assert parse_torrent(ours).info_hash == ti2.info_hashes().v1.to_bytes()
    assert parse_torrent(ours).pieces == meta.pieces
    assert ti2.info_hashes().v1 == ti.info_hashes().v1
    path = tmp_path / "ours.torrent"
    path.write_bytes(ours)
    assert load_torrent(path).info_hash == meta.info_hash


def test_debtorrent_downloads_from_libtorrent(content: Content, tmp_path: Path) -> None:
    ses = lt_session(LT_SEED)
    h = lt_add(ses, content.torrent_bytes, content.base)
    leech = None
    try:
        lt_wait(h, lambda s: s.is_seeding, 30, "seeding")
        seed_addr = f"{LT_SEED}:{ses.listen_port()}"
        dl = tmp_path / "dl"
        dl.mkdir()
        leech = Standalone(
            tmp_path, content.torrent, dl, bind=DT_LEECH, peers=[seed_addr], name="leech"
        )
        t0 = time.monotonic()
        leech.start()
        leech.wait_complete(timeout=60)
        elapsed = time.monotonic() - t0
        content.check(dl)
        uploaded = h.status().total_payload_upload
        assert uploaded >= content.total, f"libtorrent uploaded only {uploaded} bytes"
        print(f"libtorrent -> debtorrent: {content.total / MiB:.1f} MiB in {elapsed:.2f} s")
    finally:
        if leech is not None:
            leech.stop()
        ses.remove_torrent(h)
        del ses


def test_libtorrent_downloads_from_debtorrent(content: Content, tmp_path: Path) -> None:
    seed = Standalone(tmp_path, content.torrent, content.base, bind=DT_SEED, name="seed")
    ses = None
    try:
        seed.start()
        seed.wait_complete(timeout=30)  # it rechecked the files on disk: nothing to fetch
        dl = tmp_path / "lt"
        dl.mkdir()
        ses = lt_session(LT_LEECH)
        h = lt_add(ses, content.torrent_bytes, dl)
        t0 = time.monotonic()
        h.connect_peer((DT_SEED, seed.port))
        lt_wait(h, lambda s: s.is_seeding, 60, "complete")
        elapsed = time.monotonic() - t0
        st = h.status()
        assert st.total_payload_download >= content.total
        assert st.num_pieces == lt.torrent_info(content.torrent_bytes).num_pieces()
        # libtorrent passes pieces hashed from memory and may write them later: let its
        # session shut down (its destructor waits for the disk threads) before reading
        ses.remove_torrent(h)
        del h
        ses = None
        content.check(dl)
        print(f"debtorrent -> libtorrent: {content.total / MiB:.1f} MiB in {elapsed:.2f} s")
        assert seed.running, f"seed died:\n{seed.log_tail()}"
    finally:
        if ses is not None:
            del ses
        seed.stop()
