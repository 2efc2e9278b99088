"""The standalone ``.torrent`` entry point uses the torrent's own trackers and web seeds.

- BEP 19: a torrent whose ``url-list`` names an HTTP server holding its files (the
  mirror fixture, with Range) is downloaded from it with no peer at all; a web seed
  serving wrong bytes is dropped and the download completes from a good one.
- BEP 12: a seed and a leech given only the torrent (its ``announce-list`` names an
  opentracker) find each other through that tracker.

Before, the entry point ignored both: the leech waited forever.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from debtorrent.torrent.metainfo import create_torrent, parse_torrent
from tests.fixtures.helpers import sha256_file
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import Standalone

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

PIECE = 64 * 1024
FILES = {"one.bin": 700_001, "sub/two.bin": 300_000, "three.bin": 5}


def content(base: Path) -> Path:
    src = base / "src" / "pack"
    rng = random.Random(19)
    for rel, size in FILES.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return src


def check(src: Path, dl: Path) -> None:
    for rel in FILES:
        assert sha256_file(dl / "pack" / rel) == sha256_file(src / rel), rel


def test_a_torrent_downloads_from_its_web_seeds(tmp_path: Path) -> None:
    src = content(tmp_path)
    good = MirrorServer(src.parent, prefix="/seed", host="127.0.0.61").start()
    bad_root = tmp_path / "bad" / "pack"
    for rel, size in FILES.items():
        (bad_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (bad_root / rel).write_bytes(b"\x5a" * size)
    bad = MirrorServer(bad_root.parent, prefix="/seed", host="127.0.0.62").start()
    torrent = tmp_path / "pack.torrent"
    torrent.write_bytes(
        create_torrent(src, PIECE, web_seeds=[f"{bad.url}/", f"{good.url}/"], files=sorted(FILES))
    )
    assert parse_torrent(torrent.read_bytes()).web_seeds == (f"{bad.url}/", f"{good.url}/")
    dl = tmp_path / "dl"
    dl.mkdir()
    leech = Standalone(tmp_path, torrent, dl, bind="127.0.0.63", name="leech")
    try:
        leech.start()
        leech.wait_complete(timeout=60)
        check(src, dl)
        gets = good.count(lambda r: r.path.startswith("/seed/pack/"), method="GET")
        print(f"good web seed: {gets} GETs; bad one: {bad.count(None, 'GET')} GETs")
        assert gets >= 1
        log = leech.log_text()
        if bad.count(None, "GET"):  # the wrong bytes were refused, never written
            assert "failed verification" in log
        if "failed verification; not used any more" not in log:
            assert log.count("failed verification") < 3
    finally:
        leech.stop()
        good.stop()
        bad.stop()


def test_seed_and_leech_meet_through_the_torrents_tracker(tmp_path: Path, tracker) -> None:
    src = content(tmp_path)
    torrent = tmp_path / "pack.torrent"
    torrent.write_bytes(
        create_torrent(src, PIECE, trackers=[[tracker.http_url]], files=sorted(FILES))
    )
    tracker.allow(parse_torrent(torrent.read_bytes()).info_hash)
    seed = Standalone(tmp_path, torrent, src.parent, bind="127.0.0.64", name="seed")
    dl = tmp_path / "dl"
    dl.mkdir()
    leech = Standalone(tmp_path, torrent, dl, bind="127.0.0.65", name="leech")
    try:
        seed.start()
        seed.wait_complete(timeout=30)
        leech.start()
        leech.wait_complete(timeout=60)
        check(src, dl)
    finally:
        leech.stop()
        seed.stop()
