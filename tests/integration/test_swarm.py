"""Package swarms between real daemons, with the real apt-get, opentracker and a mirror.

- The fleet: three daemons on 127.0.0.2, .3 and .4, each with its own sandboxed apt-get
  (path form), all announcing to one opentracker (two over HTTP, one over UDP). Client 1
  downloads a package set (with the 20 MiB package); then clients 2 and 3 download the
  same set at the same moment. Every .deb must be correct for every client, the mirror
  must have served each .deb once for the whole fleet, and daemons 2 and 3 must report
  bytes from peers.
- Fallback: with no peers at all, a request is served from the mirror at once; with a
  peer that stops sending in the middle of a file (the daemon it downloads from is
  frozen with SIGSTOP), the mirror finishes the file once ``--http-seed-delay`` passed,
  from where the peer left off.

The daemons are subprocesses (gevent stays out of the pytest process); every one is
stopped at the end of its test, frozen ones thawed first.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request

import pytest

from tests.fixtures.apt import AptClient, AptResult
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import free_port, loopback_aliases_usable
from tests.fixtures.repo import MiB, Repo
from tests.fixtures.tracker import Tracker

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

#: ``dt-meta`` pulls in everything but dt-tiny (``dt-medium | dt-tiny`` picks dt-medium)
PACKAGE_SET = ("dt-meta",)
EXPECTED = {"dt-meta", "dt-tool", "libdt1", "dt-base", "dt-data", "dt-big", "dt-medium", "dt-docs"}


# ---- helpers -------------------------------------------------------------------------------
def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=5) as r:
        return json.loads(r.read())


def totals(d: Daemon) -> dict:
    return status(d)["totals"]


def pieces_had(d: Daemon) -> int:
    return sum(s["pieces_had"] for s in status(d)["swarms"])


def check_debs(apt: AptClient, repo: Repo, names: set[str]) -> None:
    """Exactly the .debs of ``names``, byte for byte (SHA256 against the repository)."""
    got = sorted(apt.downloaded_sha256().values())
    want = sorted(repo.package(n).sha256 for n in names)
    assert got == want, f"{apt.root}: downloaded {apt.downloaded_debs()}"


def swarm_hash(repo: Repo) -> bytes:
    """The swarm identity of the repo's index, as every daemon derives it."""
    return repo.swarm_hash()


def deb_gets(mirror: MirrorServer) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in mirror.find(lambda r: r.path.endswith(".deb"), method="GET"):
        out.setdefault(r.path, []).append(r)
    return out


def tracker_with(tracker_factory, info_hash: bytes) -> Tracker:
    """An opentracker that accepts ``info_hash``. Once seen under load, with other suites
    on the machine: the HTTP port refused the probe right after the tracker started (the
    free port raced, or opentracker died early); one more tracker is tried then."""
    for attempt in (1, 2):
        tracker = tracker_factory()
        try:
            tracker.allow(info_hash)
            return tracker
        except (OSError, TimeoutError) as e:
            print(f"tracker attempt {attempt}: {e!r}; running={tracker.running}")
            print(tracker.output_text()[-2000:])
            if attempt == 2:
                raise
            tracker.stop()
    raise AssertionError("unreachable")


def logs(*daemons: Daemon) -> str:
    return "\n".join(f"===== {d.name}\n{d.log_tail(40)}" for d in daemons)


# ---- the fleet ----------------------------------------------------------------------------
def test_fleet_shares_packages_and_the_mirror_serves_each_deb_once(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tracker_factory
) -> None:
    ih = swarm_hash(repo)
    tracker = tracker_with(tracker_factory, ih)  # whitelisted before any daemon announces
    hosts = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    trackers = (tracker.http_url, tracker.udp_url, tracker.http_url)
    daemons = [
        daemon_factory("--tracker", url, bind=host)
        for host, url in zip(hosts, trackers, strict=True)
    ]
    clients = [apt_factory.path_form(d, mirror, http_timeout=30) for d in daemons]

    # every daemon loads the index (and so announces the swarm) at apt-get update
    for c in clients:
        c.update()
    for d in daemons:
        swarms = status(d)["swarms"]
        assert [s["info_hash"] for s in swarms] == [ih.hex()], (d.name, swarms)
    expected_peers = {(h, d.peer_port) for h, d in zip(hosts, daemons, strict=True)}
    wait_until(
        lambda: expected_peers <= set(tracker.peers(ih)),
        10,
        f"all three daemons announced (tracker has {tracker.peers(ih)})",
        every=0.25,
    )

    # client 1 first: everything comes from the mirror, once
    clients[0].install_download_only(*PACKAGE_SET)
    check_debs(clients[0], repo, EXPECTED)
    assert totals(daemons[0])["bytes_from_mirror"] >= repo.total_size(EXPECTED)

    # then clients 2 and 3 at the same moment
    barrier = threading.Barrier(2)
    results: dict[int, AptResult | BaseException] = {}

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = clients[i].install_download_only(*PACKAGE_SET, check=False)
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "apt-get still running"
    for i in (1, 2):
        r = results[i]
        assert isinstance(r, AptResult), f"client {i + 1}: {r!r}\n{logs(*daemons)}"
        assert r.ok, f"client {i + 1}: {r.problems}\n{r.output}\n{logs(*daemons)}"

    figures = {f"d{i + 1}": totals(d) for i, d in enumerate(daemons)}
    print(f"clients 2+3 together: {elapsed:.2f} s")
    for name, t in figures.items():
        print(
            f"{name}: from peers {t['bytes_from_peers']}, from mirror "
            f"{t['bytes_from_mirror']}, uploaded {t['bytes_uploaded']}, bans {t['bans']}"
        )

    for c in clients:
        check_debs(c, repo, EXPECTED)
    gets = deb_gets(mirror)
    counts = {path: len(rs) for path, rs in gets.items()}
    print(f"mirror .deb GETs: {counts}")
    assert set(counts) == {f"/debian/{repo.package(n).filename}" for n in EXPECTED}
    assert all(n == 1 for n in counts.values()), f"fetched more than once: {counts}"
    for name in ("d2", "d3"):
        assert figures[name]["bytes_from_peers"] > 0, f"{name}: {figures[name]}"
    assert figures["d1"]["bytes_uploaded"] > 0
    big = repo.package("dt-big").size
    # the 20 MiB file went through the swarm to both late clients
    assert figures["d2"]["bytes_from_peers"] + figures["d3"]["bytes_from_peers"] >= 2 * big
    assert all(t["bans"] == 0 for t in figures.values()), figures


def test_two_clients_at_the_same_instant_share_one_mirror_fetch(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    """Nobody has the files yet and two daemons (static peers of each other) want them at
    the same moment: they settle on one fetcher per file and pass its pieces on, so the
    mirror serves the set about once (the design's goal: <= 1.2 x)."""
    hosts = ("127.0.0.8", "127.0.0.9")
    ports = [free_port(h) for h in hosts]
    daemons = [
        daemon_factory("--peer", f"{hosts[1 - i]}:{ports[1 - i]}", bind=h, peer_port=ports[i])
        for i, h in enumerate(hosts)
    ]
    clients = [apt_factory.path_form(d, mirror, http_timeout=30) for d in daemons]
    for c in clients:
        c.update()
    wait_until(lambda: all(status(d)["connections"] >= 1 for d in daemons), 10, "the two connected")
    barrier = threading.Barrier(2)
    results: dict[int, AptResult | BaseException] = {}

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = clients[i].install_download_only(*PACKAGE_SET, check=False)
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not any(t.is_alive() for t in threads), "apt-get still running"
    for i, r in results.items():
        assert isinstance(r, AptResult) and r.ok, f"client {i}: {r!r}\n{logs(*daemons)}"
    for c in clients:
        check_debs(c, repo, EXPECTED)
    mirror.wait_idle(5)
    figures = {f"s{i}": totals(d) for i, d in enumerate(daemons)}
    served = mirror.bytes_sent(lambda r: r.path.endswith(".deb"))
    one_set = repo.total_size(EXPECTED)
    counts = {p.rsplit("/", 1)[1]: len(rs) for p, rs in deb_gets(mirror).items()}
    print(f"same instant: mirror served {served / one_set:.3f} x one set; GETs {counts}")
    print(f"figures: {figures}")
    assert served <= 1.2 * one_set, f"mirror served {served} bytes for a {one_set}-byte set"
    big = f"/debian/{repo.package('dt-big').filename}"
    assert mirror.bytes_sent(big) <= 1.2 * repo.package("dt-big").size
    assert sum(t["bytes_from_peers"] for t in figures.values()) > 0


# ---- fallback to the mirror ---------------------------------------------------------------
def test_without_peers_the_mirror_serves_at_once(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    """No tracker, no --peer: nothing to wait for, even with a long --http-seed-delay."""
    d = daemon_factory("--http-seed-delay", "60", bind="127.0.0.7")
    apt = apt_factory.path_form(d, mirror)
    apt.update()
    t0 = time.monotonic()
    apt.install_download_only("dt-medium")
    elapsed = time.monotonic() - t0
    check_debs(apt, repo, {"dt-medium", "dt-base"})
    t = totals(d)
    print(f"no peers: dt-medium in {elapsed:.2f} s, {t}")
    assert t["bytes_from_mirror"] >= repo.total_size({"dt-medium", "dt-base"})
    assert t["bytes_from_peers"] == 0
    assert elapsed < 10, f"waited for peers that cannot come ({elapsed:.1f} s)"


def test_peer_that_stops_mid_file_is_replaced_by_the_mirror(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    """A fetches dt-big slowly from the mirror; B takes A's pieces as they come, then A
    freezes (SIGSTOP) with the connection open. B's mirror must join once
    --http-seed-delay passed without progress, and finish the file.
    """
    big = repo.package("dt-big")
    delay = 2.0
    host_a, host_b = "127.0.0.5", "127.0.0.6"
    a = daemon_factory(bind=host_a)
    b = daemon_factory("--peer", a.peer_address, "--http-seed-delay", str(delay), bind=host_b)
    apt_a = apt_factory.path_form(a, mirror, http_timeout=30)
    apt_b = apt_factory.path_form(b, mirror, http_timeout=30)
    apt_a.update()
    apt_b.update()
    wait_until(lambda: status(b)["connections"] >= 1, 10, "B connected to A")

    # A's fetch of dt-big crawls (4 MB/s: ~5 s); later requests for it are served fast
    mirror.fault(big.filename, "slow", times=1, rate=4_000_000)
    results: dict[str, AptResult | BaseException] = {}

    def install(key: str, apt: AptClient) -> None:
        try:
            results[key] = apt.install_download_only("dt-big", check=False, timeout=90)
        except BaseException as e:  # reported below
            results[key] = e

    ta = threading.Thread(target=install, args=("A", apt_a))
    tb = threading.Thread(target=install, args=("B", apt_b))
    ta.start()
    try:
        wait_until(lambda: totals(a)["bytes_from_mirror"] >= 4 * MiB, 15, "A 4 MiB in")
        tb.start()
        # freeze A once B holds a good part of what A has
        wait_until(
            lambda: (had := pieces_had(b)) >= 9 and had >= pieces_had(a) - 4,
            15,
            "B 2 MiB from A and caught up",
            every=0.02,
        )
        a.signal(signal.SIGSTOP)
        frozen_at, frozen_wall = time.monotonic(), time.time()
        tb.join(timeout=60)
        b_elapsed = time.monotonic() - frozen_at
    finally:
        a.signal(signal.SIGCONT)
    ta.join(timeout=60)
    assert not ta.is_alive() and not tb.is_alive(), "apt-get still running"

    rb = results["B"]
    assert isinstance(rb, AptResult) and rb.ok, f"B: {rb!r}\n{logs(a, b)}"
    check_debs(apt_b, repo, {"dt-big", "dt-base"})
    tb_ = totals(b)
    print(f"B finished {b_elapsed:.2f} s after A froze; {tb_}")
    assert tb_["bytes_from_peers"] >= 2 * MiB
    assert tb_["bytes_from_mirror"] > 0
    assert b_elapsed < delay + 10, f"B took {b_elapsed:.1f} s after its peer stopped"
    assert re.search(r"dt-big\S* stalled; the mirror joins", b.log_text()), logs(b)
    # B went to the mirror once, after the configured delay without progress
    b_gets = [r for r in deb_gets(mirror)[f"/debian/{big.filename}"] if r.client == host_b]
    assert len(b_gets) == 1, [(r.client, r.range, r.time) for r in b_gets]
    joined = b_gets[0].time - frozen_wall
    print(
        f"B's mirror fetch: {joined:.2f} s after A froze, Range {b_gets[0].range}, "
        f"{b_gets[0].bytes_sent} bytes (B had {tb_['bytes_from_peers']} from A)"
    )
    assert delay - 0.5 <= joined <= delay + 3, f"mirror joined {joined:.2f} s after the stall"
    # and A, thawed, finishes its own download correctly too
    ra = results["A"]
    assert isinstance(ra, AptResult) and ra.ok, f"A: {ra!r}\n{logs(a, b)}"
    check_debs(apt_a, repo, {"dt-big", "dt-base"})
