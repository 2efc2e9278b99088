"""The DHT against libtorrent (the wheel), on loopback only.

Four DHT nodes, each told of one other: a bare debtorrent node ``D1`` (``python -m
debtorrent.torrent.dht serve``), libtorrent ``L1`` bootstrapping from it and seeding a
standard v1 torrent, debtorrent ``D2`` (the standalone engine) bootstrapping from
libtorrent alone and downloading that torrent with no peer given; then the reverse:
debtorrent ``D3`` seeds another torrent and announces it, and libtorrent ``L2``,
bootstrapping from D1, finds D3 by a DHT lookup and downloads from it.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from debtorrent.torrent.metainfo import create_torrent, parse_torrent
from tests.fixtures.helpers import sha256_file
from tests.fixtures.ltnode import REPO_DIR, LtNode
from tests.fixtures.net import free_port_tcp_udp, loopback_aliases_usable
from tests.fixtures.peer import Standalone

pytest.importorskip("libtorrent")
pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)


def make_torrent(base: Path, name: str, seed: int) -> tuple[Path, Path]:
    src = base / "seed" / name
    src.mkdir(parents=True)
    rng = random.Random(seed)
    for file, size in (("one.bin", 700_000), ("two.bin", 300_001)):
        (src / file).write_bytes(rng.randbytes(size))
    torrent = base / f"{name}.torrent"
    torrent.write_bytes(create_torrent(src, piece_length=65536))
    return torrent, base / "seed"


def same_content(a: Path, b: Path) -> None:
    for f in sorted(a.rglob("*")):
        if f.is_file():
            assert sha256_file(b / f.relative_to(a)) == sha256_file(f), f


class BareNode:
    """``python -m debtorrent.torrent.dht serve`` in a subprocess."""

    def __init__(self, workdir: Path, bind: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "dht.log"
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "debtorrent.torrent.dht", "--log-level", "debug"),
                    *("serve", "--bind", bind, "--state-dir", str(workdir)),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO_DIR,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "dht", self.log.read_text()
        self.address = f"{bind}:{line[1]}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def test_dht_interop_with_libtorrent_both_ways(tmp_path: Path) -> None:
    t1, seed1 = make_torrent(tmp_path / "t1", "lt-seeded", 21)
    t2, seed2 = make_torrent(tmp_path / "t2", "dt-seeded", 22)
    d1 = BareNode(tmp_path / "d1", "127.0.0.81")
    started: list = [d1]
    try:
        # libtorrent bootstraps from debtorrent and seeds t1
        l1_port = free_port_tcp_udp("127.0.0.82")
        l1 = LtNode(
            tmp_path / "l1",
            f"127.0.0.82:{l1_port}",
            dht=True,
            dht_bootstrap=[d1.address],
            torrent=t1,
            save=seed1,
        )
        started.append(l1)
        l1.wait_line("complete", 20)
        # debtorrent bootstraps from libtorrent alone and finds t1's seed by a lookup
        d2 = Standalone(
            tmp_path / "d2",
            t1,
            tmp_path / "d2-dir",
            bind="127.0.0.83",
            discovery="dht",
            dht_bootstrap=[f"127.0.0.82:{l1_port}"],
            name="d2",
        )
        started.append(d2)
        d2.start()
        d2.wait_complete(90)
        same_content(seed1, tmp_path / "d2-dir")
        assert "1 bootstrap nodes" in d2.log_text()
        l1.wait_line("dht_nodes", 30, where=lambda line: int(line.split()[1]) >= 1)
        l1.wait_line("peer 127.0.0.83:", 5)  # the download came from libtorrent

        # the reverse: debtorrent seeds t2 and announces it; libtorrent finds it
        d3 = Standalone(
            tmp_path / "d3",
            t2,
            seed2,
            bind="127.0.0.84",
            discovery="dht",
            dht_bootstrap=[d1.address],
            name="d3",
        )
        started.append(d3)
        d3.start()
        d3.wait_complete(20)
        d3.wait_log("announced", 30)
        info_hash = parse_torrent(t2.read_bytes()).info_hash.hex()
        l2 = LtNode(
            tmp_path / "l2",
            f"127.0.0.85:{free_port_tcp_udp('127.0.0.85')}",
            dht=True,
            dht_bootstrap=[d1.address],
            get_peers=[info_hash],
            torrent=t2,
            save=tmp_path / "l2-dir",
        )
        started.append(l2)
        found = l2.wait_line(f"dht_peers {info_hash}", 60)
        assert f"127.0.0.84:{d3.port}" in found.split()[2].split(","), found
        l2.wait_line("complete", 90)
        same_content(seed2, tmp_path / "l2-dir")
    finally:
        for process in reversed(started):
            process.stop()
