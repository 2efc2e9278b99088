"""Crash safety: SIGKILL at random moments, restart on the same cache, and check.

- ``test_sigkill_during_fleet_downloads_never_leaves_a_bad_file``: a fleet of two daemons
  (the victim and a partner, static peers of each other) downloads the whole package set
  (``dt-meta``: eight .debs, one of 20 MiB that the mirror sends at 8 MB/s so a kill lands
  mid-transfer) with the real apt-get, both at once; each round the archive publishes new
  versions (dt-big always, some small ones at random), apt-get update runs through both
  daemons, the installs start, and the victim is killed with SIGKILL after a random delay
  (while fetching from the mirror, taking pieces from the partner or uploading to it).
  It is restarted on the same cache, and every round checks:

  1. every file the cache presents as complete (a final name, not ``.dt-tmp-*``) has the
     SHA256 its index gives (the pool and ``dists/`` alike), and the restart swept every
     temporary file;
  2. no .deb that was complete in the cache is ever fetched from the mirror again (the
     mirror's request log, by the daemon's source address);
  3. the daemon announces and seeds its complete files again: ``/status.json``
     ``pieces_had`` is exactly the pieces of the complete files, and a test peer speaking
     the wire protocol gets that bitfield and a block of a complete file, byte-exact;
  4. apt's next run succeeds with correct files; so does the partner's run, which lost
     its peer in the middle.

  After the last round a third daemon with ``--peer <victim>`` only downloads the whole
  set from the victim: bytes from peers >= the set and no .deb request reaches the mirror.

  The random generator is seeded and the seed printed; replay a failure with
  ``DEBTORRENT_CRASH_SEED=<seed>`` (``DEBTORRENT_CRASH_ROUNDS`` changes the count).

- The checkpoint (``<state-dir>/state.json``): counters survive a clean stop, a kill
  leaves the last checkpoint intact, and a torn or corrupt file is detected, logged, set
  aside (``state.corrupt``) and the counters start from zero, never from the file, while
  the swarms are rebuilt from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from debtorrent.archive.packages import scan_packages
from debtorrent.torrent import wire
from debtorrent.torrent.layout import BLOCK_SIZE, LAYOUT1_PIECE_LENGTH, Layout
from debtorrent.torrent.metainfo import swarm_info_hash
from tests.fixtures.apt import AptClient, AptResult
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import sha256_file, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import WirePeer
from tests.fixtures.repo import COMPONENT, ORIGIN, Repo

SEED_ENV = "DEBTORRENT_CRASH_SEED"
ROUNDS_ENV = "DEBTORRENT_CRASH_ROUNDS"
ROUNDS = 10
BIG_RATE = 8_000_000  # bytes/s for dt-big from the mirror: ~2.6 s per copy
KILL_WINDOW = 3.0  # seconds after the install starts in which the kill lands
PACKAGE_SET = ("dt-meta",)
#: what ``dt-meta`` pulls in (``dt-medium | dt-tiny`` picks dt-medium)
EXPECTED = {"dt-meta", "dt-tool", "libdt1", "dt-base", "dt-data", "dt-big", "dt-medium", "dt-docs"}
SMALL = sorted(EXPECTED - {"dt-big", "dt-meta"})

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)


# ---- helpers --------------------------------------------------------------------------------
def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=5) as r:
        return json.loads(r.read())


def swarm_hash(repo: Repo) -> bytes:
    return swarm_info_hash(
        ORIGIN, repo.codename, COMPONENT, repo.arch, bytes.fromhex(repo.packages_sha256())
    )


class Published:
    """Every version of every file the archive ever published: relpath -> SHA256s."""

    def __init__(self) -> None:
        self.files: dict[str, set[str]] = {}

    def record(self, repo: Repo) -> None:
        for p in repo.packages:
            self.files.setdefault(p.filename, set()).add(p.sha256)
        for path in (repo.root / "dists").rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(repo.root).as_posix()
                self.files.setdefault(rel, set()).add(sha256_file(path))


def archive_dir(d: Daemon, mirror: MirrorServer) -> Path:
    """Where the daemon keeps the mirror's archive root (path form: <mirror>/debian)."""
    return d.cache_dir / mirror.address / "debian"


def temporaries(d: Daemon) -> list[Path]:
    return sorted(p for p in d.cache_dir.rglob(".dt-tmp-*"))


def check_cache(d: Daemon, mirror: MirrorServer, published: Published) -> set[str]:
    """Assert every complete file in the cache is a published version; the complete pool
    files (archive-relative paths)."""
    root = archive_dir(d, mirror)
    complete: set[str] = set()
    bad: list[str] = []
    for path in sorted(d.cache_dir.rglob("*")):
        if not path.is_file() or path.name.startswith(".dt-tmp-"):
            continue
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            bad.append(f"{path}: outside the mirror's directory")
            continue
        known = published.files.get(rel)
        if known is None:
            bad.append(f"{rel}: never published")
        elif sha256_file(path) not in known:
            bad.append(f"{rel}: SHA256 {sha256_file(path)} matches no published version")
        elif rel.startswith("pool/"):
            complete.add(rel)
    assert not bad, "the cache presents bad files as complete:\n" + "\n".join(bad)
    return complete


class SwarmView:
    """The current index's swarm as the test derives it: info hash, layout, files."""

    def __init__(self, repo: Repo) -> None:
        data = repo.packages_index().read_bytes()
        self.index = scan_packages(data, hashlib.sha256(data).hexdigest())
        self.layout = Layout.file_aligned(list(self.index.sizes), LAYOUT1_PIECE_LENGTH)
        self.info_hash = swarm_hash(repo)
        self.repo = repo

    def pieces_of(self, filenames: set[str]) -> set[int]:
        out: set[int] = set()
        for filename in filenames:
            pos = self.index.positions.get(filename)
            if pos is not None:
                out.update(self.layout.file_pieces(pos))
        return out


FAST = bytes([0, 0, 0, 0, 0, 0, 0, 0x04])  # reserved bytes with the BEP 6 bit


def bits_to_pieces(bits: bytes, num_pieces: int) -> set[int]:
    return {i for i in range(num_pieces) if bits[i // 8] & (0x80 >> (i % 8))}


def probe_seed(d: Daemon, view: SwarmView, complete: set[str], rng: random.Random) -> str:
    """Connect as a peer: the bitfield must be exactly the complete files' pieces, and a
    block of one of them must come back byte-exact. Returns what was checked."""
    expected = view.pieces_of(complete)
    layout = view.layout
    # with nothing to offer, a BEP 6 peer is told so (have none): the probe waits for
    # that answer, where a plain peer would get silence and a guess at how long to wait
    reserved = b"\0" * 8 if expected else FAST
    with WirePeer(d.bind, d.peer_port, num_pieces=layout.num_pieces, timeout=5) as peer:
        hs = peer.handshake(view.info_hash, reserved=reserved)
        assert hs is not None and hs.info_hash == view.info_hash, "no handshake for the swarm"
        if not expected:
            peer.wait_for(wire.HaveNone)
            offered = [m for m in peer.received if isinstance(m, (wire.Bitfield, wire.HaveAll))]
            assert not offered, offered
            return "no complete file: have none"
        bitfield = peer.wait_for(wire.Bitfield)
        had = bits_to_pieces(bitfield.bits, layout.num_pieces)
        assert had == expected, (
            f"bitfield has {len(had)} pieces, the complete files have {len(expected)}: "
            f"extra {sorted(had - expected)[:10]}, missing {sorted(expected - had)[:10]}"
        )
        filename = rng.choice(sorted(complete & set(view.index.positions)))
        pos = view.index.positions[filename]
        piece = rng.choice(list(layout.file_pieces(pos)))
        length = min(BLOCK_SIZE, layout.piece_size(piece))
        peer.send(wire.Interested())
        peer.wait_for(wire.Unchoke, timeout=10)
        peer.send(wire.Request(piece, 0, length))
        block = peer.wait_for(wire.Piece, timeout=10, where=lambda m: m.index == piece)
        offset = layout.piece_offset(piece) - layout.file_offset(pos)
        with open(view.repo.root / filename, "rb") as f:
            f.seek(offset)
            want = f.read(length)
        assert block.block == want, f"{filename} piece {piece}: wrong bytes from the seed"
        return f"bitfield {len(had)} pieces, block of {filename.rsplit('/', 1)[1]} ok"


def deb_gets(mirror: MirrorServer, client: str, since: float) -> list:
    return mirror.find(
        lambda r: r.client == client and r.path.endswith(".deb") and r.time >= since,
        method="GET",
    )


def rel(record) -> str:
    return record.path.removeprefix("/debian/")


def check_debs(apt: AptClient, repo: Repo, names: set[str]) -> None:
    got = sorted(apt.downloaded_sha256().values())
    want = sorted(repo.package(n).sha256 for n in names)
    assert got == want, f"{apt.root}: downloaded {sorted(apt.downloaded_debs())}"


def run_in_thread(fn: Callable[[], AptResult]) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # reported by the caller
            box["result"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def crash_seed() -> int:
    raw = os.environ.get(SEED_ENV)
    return int(raw) if raw else random.SystemRandom().randrange(1 << 32)


# ---- SIGKILL rounds -------------------------------------------------------------------------
def test_sigkill_during_fleet_downloads_never_leaves_a_bad_file(
    fresh_repo: Repo, mirror_factory, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    seed = crash_seed()
    rounds = int(os.environ.get(ROUNDS_ENV, ROUNDS))
    print(f"\ncrash rounds: {rounds}; replay with {SEED_ENV}={seed}")
    rng = random.Random(seed)
    repo = fresh_repo
    mirror = mirror_factory(root=repo.root)
    mirror.fault("*/dt-big_*.deb", "slow", rate=BIG_RATE)
    # the fleet: the victim and a partner, static peers of each other
    partner = daemon_factory(
        "--http-seed-delay", "2", "--state-dir", str(tmp_path / "state-p"), start=False
    )
    victim = daemon_factory(
        "--peer", partner.peer_address, "--http-seed-delay", "2",
        "--state-dir", str(tmp_path / "state-v"),
    )  # fmt: skip
    partner.extra_args += ["--peer", victim.peer_address]
    partner.start()
    apt = apt_factory.path_form(victim, mirror, repo=repo, http_timeout=10, timeout=90)
    apt_p = apt_factory.path_form(partner, mirror, repo=repo, http_timeout=30, timeout=90)
    published = Published()
    published.record(repo)
    apt.update()
    apt_p.update()

    ever_complete: dict[str, int] = {}  # pool path -> round it was first seen complete
    t_start = time.monotonic()
    for r in range(rounds):
        if r:
            bumped = ["dt-big", *rng.sample(SMALL, rng.randint(0, 2))]
            for name in bumped:
                repo.update_package(name, f"{repo.specs[name].version}.{r}")
            published.record(repo)
            apt.update()
            apt_p.update()
        view = SwarmView(repo)
        big = repo.package("dt-big")
        apt.clean()
        apt_p.clean()

        # both install at once; the victim is killed after a random delay
        kill_after = rng.uniform(0.0, KILL_WINDOW)
        peers_before = status(victim)["totals"]["bytes_from_peers"]
        t0 = time.time()
        thread, box = run_in_thread(
            lambda: apt.install_download_only(*PACKAGE_SET, check=False, timeout=60)
        )
        thread_p, box_p = run_in_thread(
            lambda: apt_p.install_download_only(*PACKAGE_SET, check=False, timeout=80)
        )
        time.sleep(kill_after)
        apt_done_before_kill = not thread.is_alive()
        big_from_mirror = mirror.bytes_sent(
            lambda rec, c=victim.bind, t=t0, p=big.filename: (
                rec.client == c and rec.time >= t and rec.path.endswith(p)
            )
        )
        from_peers = status(victim)["totals"]["bytes_from_peers"] - peers_before
        victim.kill()
        thread.join(timeout=60)
        assert not thread.is_alive(), "apt-get still running after the kill"
        assert isinstance(box["result"], AptResult), box["result"]

        # 1. what the cache shows as complete is correct
        complete = check_cache(victim, mirror, published)
        left = temporaries(victim)
        # 2. nothing complete in an earlier round came from the mirror again
        again = sorted({rel(g) for g in deb_gets(mirror, victim.bind, t0)} & set(ever_complete))
        assert not again, f"round {r}: fetched again though complete before: {again}"
        for path in complete:
            ever_complete.setdefault(path, r)

        # restart on the same cache: temporaries swept, files announced and seeded
        victim.start()
        assert not temporaries(victim), f"round {r}: not swept: {temporaries(victim)}"
        current = complete & set(view.index.positions)
        swarms = [s for s in status(victim)["swarms"] if s["info_hash"] == view.info_hash.hex()]
        assert len(swarms) == 1, f"round {r}: swarm not loaded: {status(victim)['swarms']}"
        want_pieces = len(view.pieces_of(current))
        assert swarms[0]["pieces_had"] == want_pieces, (r, swarms[0], want_pieces)
        probed = probe_seed(victim, view, current, rng)

        # 4. apt's next run succeeds, and fetches nothing that was complete at the kill
        t1 = time.time()
        apt.install_download_only(*PACKAGE_SET)
        check_debs(apt, repo, EXPECTED)
        # the partner lost its peer mid-run and still ends with correct files
        thread_p.join(timeout=80)
        assert not thread_p.is_alive(), "the partner's apt-get still running"
        res_p = box_p["result"]
        assert isinstance(res_p, AptResult) and res_p.ok, f"partner: {res_p!r}"
        check_debs(apt_p, repo, EXPECTED)
        mirror.wait_idle(5)
        fetched = sorted({rel(g) for g in deb_gets(mirror, victim.bind, t1)})
        again = sorted(set(fetched) & set(ever_complete))
        assert not again, f"round {r}: the next run fetched complete files again: {again}"
        for path in check_cache(victim, mirror, published):
            ever_complete.setdefault(path, r)
        state = "apt done before the kill" if apt_done_before_kill else "mid-download"
        print(
            f"round {r}: kill at {kill_after:.2f} s ({state}; dt-big "
            f"{big_from_mirror / 1e6:.1f} MB from the mirror, {from_peers / 1e6:.1f} MB of "
            f".debs from peers): {len(current)}/{len(EXPECTED)} .debs complete, {len(left)} "
            f"temporary swept; {probed}; next run fetched from the mirror "
            f"{[f.rsplit('/', 1)[1] for f in fetched]}"
        )
    print(f"{rounds} rounds in {time.monotonic() - t_start:.1f} s")

    full: dict[str, int] = {}
    for g in deb_gets(mirror, victim.bind, 0):
        if g.status == 200 and g.bytes_sent == os.path.getsize(repo.root / rel(g)):
            full[rel(g)] = full.get(rel(g), 0) + 1
    print(f"victim: complete mirror transfers per .deb version: {sorted(full.items())}")

    # a third daemon, peer of the victim only, takes the whole set from it
    d3 = daemon_factory("--peer", victim.peer_address, "--state-dir", str(tmp_path / "state3"))
    apt3 = apt_factory.path_form(d3, mirror, repo=repo, http_timeout=30, timeout=90)
    apt3.update()
    wait_until(lambda: status(d3)["connections"] >= 1, 10, "d3 connected to the victim")
    t3 = time.time()
    apt3.install_download_only(*PACKAGE_SET)
    check_debs(apt3, repo, EXPECTED)
    totals3 = status(d3)["totals"]
    from_mirror = sorted(rel(g) for g in deb_gets(mirror, d3.bind, t3))
    print(
        f"third daemon: {totals3['bytes_from_peers']} bytes from the victim, mirror {from_mirror}"
    )
    assert not from_mirror, f"the restarted daemon did not seed: {from_mirror}"
    assert totals3["bytes_from_peers"] >= repo.total_size(EXPECTED)


# ---- the checkpoint -------------------------------------------------------------------------
def read_state(state_dir: Path) -> dict:
    data = json.loads((state_dir / "state.json").read_bytes())
    assert data["format"] == 1 and all(
        isinstance(v, int) and v >= 0 for v in data["counters"].values()
    ), data
    return data


def test_counters_survive_a_clean_stop_and_a_kill_keeps_the_last_checkpoint(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    d = daemon_factory("--state-dir", str(state_dir))
    apt = apt_factory.path_form(d, mirror)
    apt.update()
    apt.install_download_only("dt-docs", "dt-data")
    first = status(d)["totals"]["bytes_from_mirror"]
    assert first >= repo.total_size({"dt-docs", "dt-data"})
    d.stop()
    saved = read_state(state_dir)
    assert saved["counters"]["mirror"] == first, saved

    d.start()
    s = status(d)
    assert s["all_time"]["bytes_from_mirror"] == first, s["all_time"]
    assert s["totals"]["bytes_from_mirror"] == 0
    raw = (state_dir / "state.json").read_bytes()
    apt.install_download_only("dt-medium")  # more bytes, then a crash before a checkpoint
    assert status(d)["totals"]["bytes_from_mirror"] > 0
    d.kill()
    assert (state_dir / "state.json").read_bytes() == raw, "a kill changed the checkpoint"
    d.start()
    s = status(d)
    print(f"after the kill: all_time {s['all_time']}")
    assert s["all_time"]["bytes_from_mirror"] == first  # the last checkpoint, exactly
    assert "corrupt" not in d.log_text()


def _valid_state() -> bytes:
    counters = {"mirror": 123456, "peers": 654321, "uploaded": 42, "bans": 1}
    return json.dumps({"format": 1, "saved": 1700000000, "counters": counters}).encode()


CORRUPT = {
    "torn-half": lambda: _valid_state()[: len(_valid_state()) // 2],
    "torn-one-byte-short": lambda: _valid_state()[:-1],
    "empty": lambda: b"",
    "zeros": lambda: b"\0" * 4096,  # what some filesystems show after a crash mid-write
    "garbage": lambda: random.Random(6).randbytes(300),
    "not-an-object": lambda: b"[1, 2, 3]",
    "wrong-format": lambda: b'{"format": 99, "counters": {"mirror": 5}}',
    "negative": lambda: b'{"format": 1, "counters": {"mirror": -5}}',
    "string-count": lambda: b'{"format": 1, "counters": {"mirror": "5"}}',
    "float-count": lambda: b'{"format": 1, "counters": {"mirror": 1e300}}',
    "no-counters": lambda: b'{"format": 1}',
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_state_file_is_set_aside_never_trusted(
    kind: str, daemon_factory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    bad = CORRUPT[kind]()
    (state_dir / "state.json").write_bytes(bad)
    d = daemon_factory("--state-dir", str(state_dir))
    s = status(d)
    assert all(v == 0 for k, v in s["all_time"].items() if k.startswith("bytes")), s["all_time"]
    log = d.log_text()
    assert "state.json is corrupt" in log, log[-2000:]
    aside = state_dir / "state.corrupt"
    assert aside.exists() and aside.read_bytes() == bad, "the bad file was not set aside"
    d.stop()
    assert read_state(state_dir)["counters"].get("mirror", 0) == 0


def test_a_torn_state_file_after_a_kill_is_rebuilt_from_the_cache(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    """Checkpoint, fill the cache, kill, tear the file: the daemon starts, logs, sets the
    file aside, counts from zero, and seeds what the cache holds."""
    state_dir = tmp_path / "state"
    d = daemon_factory("--state-dir", str(state_dir))
    apt = apt_factory.path_form(d, mirror)
    apt.update()
    apt.install_download_only("dt-medium")  # dt-medium + dt-base
    d.stop()
    good = (state_dir / "state.json").read_bytes()
    assert json.loads(good)["counters"]["mirror"] > 0
    d.start()
    d.kill()
    torn = good[: len(good) * 2 // 3]
    (state_dir / "state.json").write_bytes(torn)
    d.start()
    s = status(d)
    assert s["all_time"]["bytes_from_mirror"] == 0, s["all_time"]
    assert "state.json is corrupt" in d.log_text()
    assert (state_dir / "state.corrupt").read_bytes() == torn
    view = SwarmView(repo)
    want = len(view.pieces_of({repo.package(n).filename for n in ("dt-medium", "dt-base")}))
    swarms = [x for x in s["swarms"] if x["info_hash"] == view.info_hash.hex()]
    assert swarms and swarms[0]["pieces_had"] == want, (swarms, want)
    apt.clean()
    apt.install_download_only("dt-medium")  # served from the cache, nothing fetched
    assert status(d)["totals"]["bytes_from_mirror"] == 0
