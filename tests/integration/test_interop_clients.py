"""debtorrent's engine against aria2 and Transmission (Debian packages), both directions.

The engine runs as the standalone ``.torrent`` entry point (a subprocess); the content is
random files in a v1 multi-file torrent made by debtorrent. Every downloaded file must
match the source byte for byte.

- aria2 finds peers only through a tracker: the torrent announces to an opentracker
  (whitelisted for its info hash), which both sides use. aria2 1.36 sends a ``bitfield``
  in the middle of a connection whenever it is shorter than the ``have`` messages it
  replaces, and ``have all`` when complete: before, the codec refused both, closed the
  connection and struck the address; aria2 downloads stalled at 1.4-17 MB of 20 MB.
- Transmission never dials 127.x peers: the debtorrent side dials it (``--peer``).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from debtorrent.torrent.metainfo import create_torrent, parse_torrent
from tests.fixtures.clients import Aria2, Transmission
from tests.fixtures.helpers import sha256_file, wait_until
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import Standalone

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

MiB = 1024 * 1024
NAME = "clients"


def make_content(base: Path, sizes: dict[str, int]) -> Path:
    src = base / "src" / NAME
    rng = random.Random(1036)
    for rel, size in sizes.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return src


def check(src: Path, dl: Path, sizes: dict[str, int]) -> None:
    for rel in sizes:
        got = dl / NAME / rel
        assert got.is_file(), f"{got} missing"
        assert sha256_file(got) == sha256_file(src / rel), rel


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages; `make debs` installs them)")


# ---- aria2 --------------------------------------------------------------------------------

ARIA_SIZES = {"big.bin": 20 * MiB + 4321, "docs/small.txt": 1000, "mid.bin": 700_001}


@pytest.fixture
def aria_torrent(tmp_path: Path, tracker) -> tuple[Path, Path]:
    require("aria2c")
    src = make_content(tmp_path, ARIA_SIZES)
    torrent = tmp_path / "aria.torrent"
    data = create_torrent(src, 256 * 1024, trackers=[[tracker.http_url]], files=sorted(ARIA_SIZES))
    torrent.write_bytes(data)
    tracker.allow(parse_torrent(data).info_hash)
    return torrent, src


def test_aria2_downloads_from_debtorrent(aria_torrent, tmp_path: Path, tracker) -> None:
    torrent, src = aria_torrent
    # --tracker too: the finding is the wire, whether or not the torrent's own are read
    seed = Standalone(
        tmp_path, torrent, src.parent, bind="127.0.0.80", trackers=[tracker.http_url], name="seed"
    )
    dl = tmp_path / "aria-dl"
    dl.mkdir()
    aria = Aria2(tmp_path, torrent, dl, host="127.0.0.81")
    try:
        seed.start()
        seed.wait_complete(timeout=30)
        info_hash = parse_torrent(torrent.read_bytes()).info_hash
        wait_until(lambda: ("127.0.0.80", seed.port) in tracker.peers(info_hash), 15, "announced")
        aria.start()
        code = aria.wait(timeout=120)
        assert code == 0, f"aria2 exited {code}:\n{aria.log_tail()}\n{seed.log_tail()}"
        check(src, dl, ARIA_SIZES)
        log = seed.log_text()
        assert "protocol error" not in log and "banned" not in log, seed.log_tail()
        assert seed.running
    finally:
        aria.stop()
        seed.stop()


def test_debtorrent_downloads_from_aria2(aria_torrent, tmp_path: Path, tracker) -> None:
    torrent, src = aria_torrent
    aria = Aria2(tmp_path, torrent, src.parent, host="127.0.0.82")
    dl = tmp_path / "dt-dl"
    dl.mkdir()
    leech = Standalone(
        tmp_path, torrent, dl, bind="127.0.0.83", trackers=[tracker.http_url], name="leech"
    )
    try:
        aria.start(seed=True)
        aria.wait_seeding(timeout=60)
        info_hash = parse_torrent(torrent.read_bytes()).info_hash
        wait_until(lambda: tracker.peers(info_hash), 15, "aria2 announced")
        leech.start()
        leech.wait_complete(timeout=120)
        check(src, dl, ARIA_SIZES)
        assert "protocol error" not in leech.log_text(), leech.log_tail()
    finally:
        leech.stop()
        aria.stop()


# ---- Transmission ---------------------------------------------------------------------------

TR_SIZES = {"one.bin": 2 * MiB + 17, "two/three.bin": 300_000}


@pytest.fixture
def tr_torrent(tmp_path: Path) -> tuple[Path, Path]:
    require("transmission-daemon", "transmission-remote")
    src = make_content(tmp_path, TR_SIZES)
    torrent = tmp_path / "tr.torrent"
    torrent.write_bytes(create_torrent(src, 64 * 1024, files=sorted(TR_SIZES)))
    return torrent, src


def test_transmission_downloads_from_debtorrent(tr_torrent, tmp_path: Path) -> None:
    torrent, src = tr_torrent
    tr = Transmission(tmp_path / "tr", host="127.0.0.84")
    seed = None
    try:
        tr.start()
        tr.add(torrent)
        seed = Standalone(
            tmp_path, torrent, src.parent, bind="127.0.0.85", peers=[tr.address], name="seed"
        )
        seed.start()
        tr.wait_done(timeout=120)
        check(src, tr.downloads, TR_SIZES)
        assert "protocol error" not in seed.log_text(), seed.log_tail()
    finally:
        if seed is not None:
            seed.stop()
        tr.stop()


def test_debtorrent_downloads_from_transmission(tr_torrent, tmp_path: Path) -> None:
    torrent, src = tr_torrent
    tr = Transmission(tmp_path / "tr", host="127.0.0.86")
    shutil.copytree(src, tr.downloads / NAME)
    dl = tmp_path / "dt-dl"
    dl.mkdir()
    leech = None
    try:
        tr.start()
        tr.add(torrent)
        tr.wait_done(timeout=60)  # it checked the files it has: a seed
        leech = Standalone(
            tmp_path, torrent, dl, bind="127.0.0.87", peers=[tr.address], name="leech"
        )
        leech.start()
        leech.wait_complete(timeout=120)
        check(src, dl, TR_SIZES)
        assert "protocol error" not in leech.log_text(), leech.log_tail()
    finally:
        if leech is not None:
            leech.stop()
        tr.stop()
