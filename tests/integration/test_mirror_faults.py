"""Broken mirrors and dying peers in the middle of a swarm download.

- The mirror dies (``MirrorServer.stop()``: listening stops and every open connection is
  cut) while two daemons share dt-big: A fetches it (slowly) from the mirror, B takes A's
  pieces. Both apt runs end promptly with a cut transfer or a clean 502/504, nothing bad
  is in either cache or in apt's archives, the daemons stay up (requests for uncached
  files get 502/504 with a reason, cached files are still served), and once the mirror
  is back (``start()`` on the same port) the same command succeeds on both.
- A peer dies mid-file: B downloads dt-big from A while A is still fetching it; A is
  killed with SIGKILL. B's download ends correct (the mirror finishes it) well within
  ``--http-seed-delay`` + a few seconds; A's apt gets a cut transfer, and after A's
  restart on the same cache its next try succeeds.

Everything is loopback; every daemon is a subprocess stopped at the end of its test.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.apt import AptClient, AptResult
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import deb_target, sha256_file, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.repo import MiB, PackageInfo, Repo

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

SEED_DELAY = 2.0  # --http-seed-delay
HTTP_TIMEOUT = 5  # --http-timeout: the daemon gives up on a silent mirror after 5 s
TMP_PREFIX = ".dt-tmp-"
# what apt prints for a transfer cut after it started, or a status before the first byte
CUT_OR_STATUS = (
    r"Error reading from server|[Cc]onnection (closed|reset|failed|refused)|closed connection"
    r"|502\s+\S|504\s+\S|Hash Sum mismatch|File has unexpected size"
)


# ---- helpers --------------------------------------------------------------------------------
def request(d: Daemon, target: str, timeout: float = 30.0) -> tuple[int, bytes, float]:
    """GET ``target`` from the daemon: (status, body, seconds); status 0 = cut."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(d.bind, d.port, timeout=timeout)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        try:
            body = r.read()
        except http.client.IncompleteRead as e:
            return 0, e.partial, time.monotonic() - t0
        return r.status, body, time.monotonic() - t0
    finally:
        conn.close()


def status(d: Daemon) -> dict:
    code, body, _ = request(d, "/status.json", timeout=5)
    assert code == 200, body
    return json.loads(body)


def cached(d: Daemon, mirror: MirrorServer, p: PackageInfo) -> Path:
    return d.cache_dir / mirror.address / "debian" / p.filename


def temporaries(d: Daemon) -> list[Path]:
    return sorted(d.cache_dir.rglob(f"{TMP_PREFIX}*"))


def assert_cache_good(d: Daemon, mirror: MirrorServer, repo: Repo) -> list[str]:
    """Every complete .deb in the cache is byte-exact; returns their names."""
    good = []
    for p in repo.packages:
        path = cached(d, mirror, p)
        if path.exists():
            assert sha256_file(path) == p.sha256, f"{d.name}: bad {p.filename} in the cache"
            good.append(p.name)
    return good


def assert_no_bad_deb(apt: AptClient, repo: Repo) -> None:
    """apt keeps a .deb in archives/ only after its own hash check: each must be right."""
    by_name = {Path(p.filename).name.replace(":", "%3a"): p.sha256 for p in repo.packages}
    for name, sha in apt.downloaded_sha256().items():
        assert by_name.get(name) == sha, f"{apt.root}: bad {name}"


def run_in_thread(fn: Callable[[], AptResult]) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # reported by the caller
            box["result"] = e
        box["ended"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def logs(*daemons: Daemon) -> str:
    return "\n".join(f"===== {d.name}\n{d.log_tail(40)}" for d in daemons)


def pair(daemon_factory, tmp_path: Path, *args: str) -> tuple[Daemon, Daemon]:
    """A and B, static peers of each other, each with its own state dir."""
    a = daemon_factory(*args, "--state-dir", str(tmp_path / "state-a"), start=False)
    b = daemon_factory(
        *args, "--peer", a.peer_address, "--state-dir", str(tmp_path / "state-b"), start=False
    )
    a.extra_args += ["--peer", b.peer_address]
    return a.start(), b.start()


# ---- the mirror dies and returns ------------------------------------------------------------
def test_mirror_dies_during_a_swarm_download_then_returns(
    repo: Repo, mirror_factory, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    mirror = mirror_factory()
    big, medium, base = (repo.package(n) for n in ("dt-big", "dt-medium", "dt-base"))
    a, b = pair(
        daemon_factory,
        tmp_path,
        "--http-seed-delay",
        str(SEED_DELAY),
        "--http-timeout",
        str(HTTP_TIMEOUT),
    )
    apt_a = apt_factory.path_form(a, mirror, http_timeout=30, timeout=90)
    apt_b = apt_factory.path_form(b, mirror, http_timeout=30, timeout=90)
    apt_a.update()
    apt_b.update()
    wait_until(lambda: status(b)["connections"] >= 1, 10, "B connected to A")
    pids = (a.pid, b.pid)

    mirror.fault(big.filename, "slow", rate=3_000_000)  # ~7 s for dt-big
    ta, box_a = run_in_thread(lambda: apt_a.install_download_only("dt-big", check=False))
    wait_until(lambda: status(a)["totals"]["bytes_from_mirror"] >= 4 * MiB, 20, "A 4 MiB in")
    tb, box_b = run_in_thread(lambda: apt_b.install_download_only("dt-big", check=False))
    wait_until(lambda: status(b)["totals"]["bytes_from_peers"] >= 1 * MiB, 20, "B 1 MiB from A")

    mirror.stop()  # every connection cut, nothing listens
    down_at = time.monotonic()
    figures = {d.name: status(d)["totals"] for d in (a, b)}

    # while it is down: uncached files get a clean 502/504 with a reason, promptly ...
    code, body, took = request(a, deb_target(mirror, medium), timeout=60)
    print(f"mirror down: uncached dt-medium -> {code} in {took:.2f} s: {body[:120]!r}")
    assert code in (502, 504), (code, body[:300])
    assert body.strip() and b":" in body, "no reason in the body"
    assert took < HTTP_TIMEOUT + 5
    # ... and cached ones are still served
    code, body, _ = request(a, deb_target(mirror, base))
    assert code == 200 and hashlib.sha256(body).hexdigest() == base.sha256

    ta.join(timeout=90)
    tb.join(timeout=90)
    assert not ta.is_alive() and not tb.is_alive(), "apt-get still running"
    for name, box, apt, d in (("A", box_a, apt_a, a), ("B", box_b, apt_b, b)):
        res = box["result"]
        assert isinstance(res, AptResult), f"{name}: {res!r}"
        took = box["ended"] - down_at
        print(f"{name}: apt ended {took:.1f} s after the mirror died, ok={res.ok}")
        print("  " + "\n  ".join(res.problems))
        if not res.ok:  # a cut transfer or a clean status, and nothing bad kept
            assert re.search(CUT_OR_STATUS, res.output), f"{name}: unclear failure\n{res.output}"
        assert took < 60, f"{name}: apt waited {took:.0f} s for a dead mirror"
        assert_no_bad_deb(apt, repo)
        assert_cache_good(d, mirror, repo)
    assert (a.pid, b.pid) == pids and a.running and b.running, "a daemon died"
    print(f"at the outage: {figures}")

    # the mirror returns on the same port: the same command succeeds for both
    mirror.clear_faults()
    mirror.start()
    for apt in (apt_a, apt_b):
        apt.install_download_only("dt-big")
        assert apt.downloaded_sha256()[Path(big.filename).name] == big.sha256
    for d in (a, b):
        assert "dt-big" in assert_cache_good(d, mirror, repo)
    wait_until(lambda: not temporaries(a) and not temporaries(b), 10, "temporaries gone")
    assert (a.pid, b.pid) == pids


def test_apt_update_while_the_mirror_is_down_uses_the_saved_indexes_then_recovers(
    repo: Repo, mirror_factory, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    """Indexes: the saved copies answer while the mirror is down; packages not cached get
    a clean error; with the mirror back, everything works without a restart."""
    mirror = mirror_factory()
    d = daemon_factory("--http-timeout", str(HTTP_TIMEOUT), "--state-dir", str(tmp_path / "state"))
    apt = apt_factory.path_form(d, mirror, http_timeout=30, timeout=60)
    apt.update()
    apt.install_download_only("dt-docs")
    mirror.stop()
    t0 = time.monotonic()
    res = apt.update(check=False)
    print(f"update with the mirror down: {time.monotonic() - t0:.2f} s, ok={res.ok}")
    assert res.returncode == 0, res.output
    apt.clean()
    apt.install_download_only("dt-docs")  # cached: no mirror needed
    res = apt.install_download_only("dt-data", check=False)
    assert not res.ok and re.search(r"50[24]\s", res.output), res.output
    assert_no_bad_deb(apt, repo)
    mirror.start()
    apt.update()
    apt.install_download_only("dt-data")
    assert_cache_good(d, mirror, repo)


# ---- a peer dies mid-file -------------------------------------------------------------------
def test_peer_killed_mid_file_the_download_ends_correct_and_the_next_try_succeeds(
    repo: Repo, mirror_factory, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    mirror = mirror_factory()
    big = repo.package("dt-big")
    a, b = pair(daemon_factory, tmp_path, "--http-seed-delay", str(SEED_DELAY))
    apt_a = apt_factory.path_form(a, mirror, http_timeout=30, timeout=90)
    apt_b = apt_factory.path_form(b, mirror, http_timeout=30, timeout=90)
    apt_a.update()
    apt_b.update()
    wait_until(lambda: status(b)["connections"] >= 1, 10, "B connected to A")

    # A's copy crawls in from the mirror (~5 s); B follows A piece by piece
    mirror.fault(big.filename, "slow", times=1, rate=4_000_000)
    ta, box_a = run_in_thread(lambda: apt_a.install_download_only("dt-big", check=False))
    wait_until(lambda: status(a)["totals"]["bytes_from_mirror"] >= 4 * MiB, 20, "A 4 MiB in")
    tb, box_b = run_in_thread(lambda: apt_b.install_download_only("dt-big", check=False))
    wait_until(lambda: status(b)["totals"]["bytes_from_peers"] >= 2 * MiB, 20, "B 2 MiB from A")
    a.kill()
    killed_at = time.monotonic()

    tb.join(timeout=60)
    ta.join(timeout=60)
    assert not ta.is_alive() and not tb.is_alive(), "apt-get still running"
    res_b = box_b["result"]
    assert isinstance(res_b, AptResult) and res_b.ok, f"B: {res_b!r}\n{logs(a, b)}"
    b_took = box_b["ended"] - killed_at
    tb_ = status(b)["totals"]
    print(f"B ended {b_took:.2f} s after A was killed: {tb_}")
    assert apt_b.downloaded_sha256()[Path(big.filename).name] == big.sha256
    assert sha256_file(cached(b, mirror, big)) == big.sha256
    assert tb_["bytes_from_peers"] >= 2 * MiB and tb_["bytes_from_mirror"] > 0
    assert b_took < SEED_DELAY + 10, f"B took {b_took:.1f} s after its peer died"

    res_a = box_a["result"]
    assert isinstance(res_a, AptResult) and not res_a.ok, f"A's apt: {res_a!r}"
    assert re.search(CUT_OR_STATUS, res_a.output), res_a.output
    assert_no_bad_deb(apt_a, repo)

    # A comes back on the same cache: nothing half-written, and the next try succeeds
    a.start()
    assert not temporaries(a), temporaries(a)
    assert_cache_good(a, mirror, repo)
    apt_a.install_download_only("dt-big")
    assert apt_a.downloaded_sha256()[Path(big.filename).name] == big.sha256
    assert sha256_file(cached(a, mirror, big)) == big.sha256
    print(f"A after restart: {status(a)['totals']}")
