"""Benchmark: is apt through debtorrent ever slower than the mirror? (issue 9)

One run builds a three-suite archive (bookworm, bookworm-updates, bookworm-security) of
small and medium real ``.deb`` files, served by an uncapped nginx on 127.0.0.1, and two
daemons (127.0.0.2 and .3) that know each other with ``--peer``. Real sandboxed
``apt-get`` clients measure, per round, with fresh daemons and caches:

- update: ``apt-get update`` through a fresh daemon / direct from nginx (goal <= 1.3);
- cold: ``apt-get --download-only install`` of the set through daemon A, every file
  from the mirror / the same install direct (goal <= 1.1);
- peer: the same install through daemon B, every file from A / A's cold install
  (goal <= 1.0); the mirror's log must show no ``.deb`` request in that phase;
- warm: a new client through A, whose cache holds everything / direct from nginx
  serving the same files (goal <= 1.1);
- upload overhead: bytes A uploaded / bytes B got from peers (goal <= 1.02).

Then, once: a 50 MB ``Packages`` index (63,000 stanzas, as bench/index.py generates it)
is loaded by daemon A while a client asks it for a cached ``.deb`` every few
milliseconds; the worst answer time is printed (goal < 50 ms), with how many answers came
while the index was still loading (status ``indexes_loading``).

With a round trip added to the mirror (``--delays``, default 20 and 80 ms), the cold
download through a fresh daemon is compared again with apt's direct one, both reaching
nginx through the same relay (:class:`_fleetlib.DelayRelay`: this kernel has no
``tc netem``), goal <= 1.1 at every delay.

Usage: .venv/bin/python bench/speed.py [--rounds N] [--delays MS,...] [--keep] [--strict]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
for p in (str(HERE), str(CHECKOUT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _fleetlib import DelayRelay, Group, free_port, read_access_log, start_mirror  # noqa: E402
from common import keep_or_remove, require_tools  # noqa: E402
from index import generate_packages  # noqa: E402

from tests.fixtures.apt import AptClient  # noqa: E402
from tests.fixtures.net import wait_for_http  # noqa: E402
from tests.fixtures.repo import (  # noqa: E402
    COMPONENT,
    PackageSpec,
    Repo,
    Signer,
    build_repo,
    fixture_keyrings,
)

KiB = 1024
MiB = 1024 * KiB
SUITES = ("bookworm", "bookworm-updates", "bookworm-security")
META = "sp-set"
GOALS = {"update": 1.3, "cold": 1.1, "peer": 1.0, "warm": 1.1, "overhead": 1.02}


def suite_specs(suite: str, small: int, medium: int) -> list[PackageSpec]:
    """``small`` files of 3-300 KiB and ``medium`` of 0.5-3 MiB, names unique per suite."""
    tag = {"bookworm": "m", "bookworm-updates": "u", "bookworm-security": "s"}[suite]
    specs = [
        PackageSpec(
            f"sp-{tag}-small-{i:03d}", "1.0-1", data_size=3 * KiB + (i * 41 * KiB) % (297 * KiB)
        )
        for i in range(small)
    ]
    specs += [
        PackageSpec(f"sp-{tag}-medium-{i}", "1.0-1", data_size=MiB // 2 + i * 600 * KiB + 77)
        for i in range(medium)
    ]
    return specs


@dataclass
class Archive:
    repos: list[Repo]
    names: list[str]
    www: Path
    size: int = 0


def build_archive(work: Path) -> Archive:
    """Three suites in one archive root; the meta package in bookworm pulls in all."""
    layout = {"bookworm": (80, 8), "bookworm-updates": (15, 2), "bookworm-security": (15, 2)}
    per_suite = {s: suite_specs(s, *layout[s]) for s in SUITES}
    names = [spec.name for specs in per_suite.values() for spec in specs]
    meta = PackageSpec(META, "1.0-1", depends=", ".join(names), data_size=0)
    main = build_repo(work / "repo", SUITES[0], packages=[*per_suite[SUITES[0]], meta])
    repos = [main] + [main.add_suite(s, per_suite[s]) for s in SUITES[1:]]
    www = work / "www"
    www.mkdir()
    (www / "debian").symlink_to(main.root)
    for d in (work, www):
        os.chmod(d, 0o755)
    size = sum(r.total_size() for r in repos)
    return Archive(repos, [*names, META], www, size)


def sources(archive: Archive, base: str) -> str:
    """Three deb lines; ``base`` ends at the archive root (direct or path form)."""
    return "\n".join(r.sources_line(base) for r in archive.repos)


def apt_client(root: Path, archive: Archive, base: str) -> AptClient:
    client = AptClient(root, archive.repos[0].sources_line(base), http_timeout=60, timeout=600)
    (client.root / "etc" / "sources.list").write_text(sources(archive, base) + "\n")
    return client


def status(host: str, port: int) -> dict:
    with urllib.request.urlopen(f"http://{host}:{port}/status.json", timeout=10) as resp:
        return json.load(resp)


@dataclass
class DaemonProc:
    host: str
    port: int
    peer_port: int
    proc: object = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def start_daemons(group: Group, work: Path, hosts: list[str]) -> list[DaemonProc]:
    daemons = [DaemonProc(h, free_port(h), free_port(h)) for h in hosts]
    for i, d in enumerate(daemons):
        home = work / f"d{i}"
        home.mkdir(parents=True)
        peers = []
        for other in daemons:
            if other is not d:
                peers += ["--peer", f"{other.host}:{other.peer_port}"]
        d.proc = group.popen(
            [
                sys.executable,
                str(CHECKOUT / "bin" / "debtorrent"),
                "--bind",
                d.host,
                "--port",
                str(d.port),
                "--peer-bind",
                d.host,
                "--peer-port",
                str(d.peer_port),
                "--cache-dir",
                str(home / "cache"),
                "--state-dir",
                str(home / "state"),
                "--log-level",
                "info",
                "--log-file",
                str(home / "daemon.log"),
                "--allowed-mirrors",  # nginx is on loopback: named to be reached
                "*,127.0.0.1",
                "--discovery",  # nothing leaves the machine: no LSD, no DHT
                "pex",
                "--dht-bootstrap",
                "none",
                *[arg for ring in fixture_keyrings() for arg in ("--keyring", str(ring))],
                *peers,
            ],
            home / "output",
        )
    for d in daemons:
        wait_for_http(d.host, d.port, timeout=30, alive=lambda p=d.proc: p.poll() is None)
    return daemons


@dataclass
class Round:
    times: dict[str, float] = field(default_factory=dict)
    overhead: float = float("nan")
    peer_mirror_debs: int = 0
    peer_share: float = 0.0


def timed(what, *args) -> float:
    t0 = time.monotonic()
    what(*args)
    return time.monotonic() - t0


def deb_requests(log: Path, start: int) -> int:
    return sum(1 for row in read_access_log(log)[start:] if row["path"].endswith(".deb"))


def cold_round(group: Group, work: Path, archive: Archive, mirror: str) -> tuple[float, float]:
    """(direct, through a fresh daemon) seconds for the set's cold download, after an
    update each, the mirror reached at ``mirror`` (a delaying relay for a round trip)."""
    (a,) = start_daemons(group, work, ["127.0.0.2"])
    try:
        direct = apt_client(work / "apt-direct", archive, f"http://{mirror}/debian")
        via_a = apt_client(work / "apt-a", archive, f"{a.base}/{mirror}/debian")
        direct.update()
        via_a.update()
        t_direct = timed(direct.install_download_only, META)
        t_daemon = timed(via_a.install_download_only, META)
        for client in (direct, via_a):
            if len(client.downloaded_debs()) != len(archive.names):
                raise RuntimeError(f"{client.root}: {len(client.downloaded_debs())} .debs")
        return t_direct, t_daemon
    finally:
        group.stop(a.proc)


def one_round(group: Group, work: Path, archive: Archive, mirror: str, log: Path) -> Round:
    r = Round()
    a, b = start_daemons(group, work, ["127.0.0.2", "127.0.0.3"])
    try:
        direct = apt_client(work / "apt-direct", archive, f"http://{mirror}/debian")
        via_a = apt_client(work / "apt-a", archive, f"{a.base}/{mirror}/debian")
        via_b = apt_client(work / "apt-b", archive, f"{b.base}/{mirror}/debian")
        r.times["update direct"] = timed(direct.update)
        r.times["update daemon"] = timed(via_a.update)
        via_b.update()
        r.times["cold direct"] = timed(direct.install_download_only, META)
        r.times["cold daemon"] = timed(via_a.install_download_only, META)
        before = len(read_access_log(log))
        r.times["peer"] = timed(via_b.install_download_only, META)
        r.peer_mirror_debs = deb_requests(log, before)
        warm = apt_client(work / "apt-warm", archive, f"{a.base}/{mirror}/debian")
        warm.update()
        direct.clean()
        r.times["warm direct"] = timed(direct.install_download_only, META)
        r.times["warm daemon"] = timed(warm.install_download_only, META)
        sa, sb = status(a.host, a.port), status(b.host, b.port)
        got = sb["totals"]["bytes_from_peers"]
        r.overhead = sa["totals"]["bytes_uploaded"] / got if got else float("nan")
        mirror_bytes = sb["totals"]["bytes_from_mirror"]
        r.peer_share = got / (got + mirror_bytes) if got + mirror_bytes else 0.0
        for client in (direct, via_a, via_b, warm):
            if len(client.downloaded_debs()) != len(archive.names):
                raise RuntimeError(f"{client.root}: {len(client.downloaded_debs())} .debs")
    finally:
        for d in (a, b):
            group.stop(d.proc)
    return r


# --- the hub during a 50 MB index load -------------------------------------------------


def big_suite(archive: Archive) -> tuple[str, int]:
    """A signed suite ``big`` whose Packages is 63,000 generated stanzas (~50 MB);
    returns its by-hash path (xz) under the archive root and the uncompressed size."""
    main = archive.repos[0]
    data, _sizes = generate_packages(63_000, seed=9)
    xz = lzma.compress(data, preset=1)
    dist = main.root / "dists" / "big"
    binary = dist / COMPONENT / f"binary-{main.arch}"
    by_hash = binary / "by-hash" / "SHA256"
    by_hash.mkdir(parents=True)

    rows = []
    for rel, blob in (
        (f"{COMPONENT}/binary-{main.arch}/Packages", data),
        (f"{COMPONENT}/binary-{main.arch}/Packages.xz", xz),
    ):
        rows.append(f" {hashlib.sha256(blob).hexdigest()} {len(blob)} {rel}")
        (dist / rel).write_bytes(blob)
        (by_hash / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    release = dist / "Release"
    release.write_text(
        "Origin: DebtorrentTest\nSuite: big\nCodename: big\nAcquire-By-Hash: yes\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n"
        f"Architectures: {main.arch}\nComponents: {COMPONENT}\nSHA256:\n" + "\n".join(rows) + "\n"
    )
    Signer(main.gnupghome).sign(release)
    rel = (by_hash / hashlib.sha256(xz).hexdigest()).relative_to(main.root).as_posix()
    return rel, len(data)


PROBE = """
import os, sys, time, urllib.request
url, stop = sys.argv[1], sys.argv[2]
while not os.path.exists(stop):
    t0 = time.monotonic()
    urllib.request.urlopen(url, timeout=30).read()
    print(time.monotonic() - t0, flush=True)
    time.sleep(0.005)
"""


def hub_latency(group: Group, work: Path, archive: Archive, mirror: str) -> dict:
    """Worst answer time for a cached .deb while daemon A loads the big index."""
    by_hash, size = big_suite(archive)
    (a,) = start_daemons(group, work / "latency", ["127.0.0.2"])
    try:
        client = apt_client(work / "apt-latency", archive, f"{a.base}/{mirror}/debian")
        client.update()
        client.install_download_only(META)  # now every .deb is cached
        deb = archive.repos[0].packages[0].filename
        url = f"{a.base}/{mirror}/debian/{deb}"
        base = f"{a.base}/{mirror}/debian/dists/big"
        urllib.request.urlopen(f"{base}/InRelease", timeout=30).read()
        # the probe runs in a process of its own: in this one, its timings would also
        # measure this process's threads waiting for their own GIL
        stop_file = work / "latency" / "stop"
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, url, str(stop_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        loading_seen = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                loading_seen.append(status(a.host, a.port).get("indexes_loading", 0))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        urllib.request.urlopen(f"{a.base}/{mirror}/debian/{by_hash}", timeout=120).read()
        answered = time.monotonic() - t0
        # apt has the index now; the daemon loads it after: measure until its swarm is up
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
            "_big_" in s["name"] for s in status(a.host, a.port)["swarms"]
        ):
            time.sleep(0.01)
        load = time.monotonic() - t0
        time.sleep(0.1)
        stop.set()
        stop_file.touch()
        watcher.join(30)
        out, _ = probe.communicate(timeout=60)
        samples = [float(x) for x in out.split()]
        worst = max(samples) if samples else float("nan")
        return {
            "index_mb": size / 1e6,
            "load_s": load,
            "answered_s": answered,
            "probes": len(samples),
            "worst_ms": worst * 1000,
            "median_ms": statistics.median(samples) * 1000 if samples else 0,
            "loading_observed": max(loading_seen, default=0),
        }
    finally:
        group.stop(a.proc)


# --- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--delays",
        default="20,80",
        help="round trips (ms) added to the mirror for the cold comparison (relay)",
    )
    args = parser.parse_args()
    require_tools({"nginx": "nginx-light", "apt-get": "apt", "dpkg-deb": "dpkg", "gpg": "gnupg"})
    work = Path(tempfile.mkdtemp(prefix="dt-bench-speed-"))
    os.chmod(work, 0o755)
    group = Group()
    try:
        t0 = time.monotonic()
        archive = build_archive(work)
        print(
            f"archive: {len(archive.names) - 1} .debs in {len(SUITES)} suites, "
            f"{archive.size / 1e6:.1f} MB, built in {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        port = start_mirror(group, work / "nginx", archive.www)
        mirror = f"127.0.0.1:{port}"
        log = work / "nginx" / "access.log"
        rounds = []
        for i in range(args.rounds):
            rwork = work / f"round{i}"
            rwork.mkdir()
            os.chmod(rwork, 0o755)
            rounds.append(one_round(group, rwork, archive, mirror, log))
            times = rounds[-1].times
            print(
                f"round {i + 1}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
                + f"; upload overhead {rounds[-1].overhead:.3f}",
                flush=True,
            )
        med = {k: statistics.median(r.times[k] for r in rounds) for k in rounds[0].times}
        ratios = {
            "update": med["update daemon"] / med["update direct"],
            "cold": med["cold daemon"] / med["cold direct"],
            "peer": med["peer"] / med["cold daemon"],
            "warm": med["warm daemon"] / med["warm direct"],
            "overhead": statistics.median(r.overhead for r in rounds),
        }
        delayed = {}
        for ms in [int(x) for x in args.delays.split(",") if x.strip()]:
            relay_port = free_port()
            relay = DelayRelay(("127.0.0.1", relay_port), ("127.0.0.1", port), ms / 1000)
            try:
                pairs = []
                for i in range(args.rounds):
                    rwork = work / f"delay{ms}-{i}"
                    rwork.mkdir()
                    os.chmod(rwork, 0o755)
                    pairs.append(cold_round(group, rwork, archive, f"127.0.0.1:{relay_port}"))
                    print(
                        f"+{ms} ms round {i + 1}: cold direct {pairs[-1][0]:.2f} s, "
                        f"through the daemon {pairs[-1][1]:.2f} s",
                        flush=True,
                    )
            finally:
                relay.stop()
            delayed[ms] = (
                statistics.median(p[0] for p in pairs),
                statistics.median(p[1] for p in pairs),
            )
        latency = hub_latency(group, work, archive, mirror)
        print()
        print(f"medians of {args.rounds} rounds (0 ms added delay, loopback):")
        ok = True
        for name, ratio in ratios.items():
            met = ratio <= GOALS[name]
            ok &= met
            print(
                f"  {name:<9} {ratio:6.3f}  (goal <= {GOALS[name]}: {'met' if met else 'NOT met'})"
            )
        for ms, (t_direct, t_daemon) in delayed.items():
            ratio = t_daemon / t_direct
            met = ratio <= GOALS["cold"]
            ok &= met
            print(
                f"  cold +{ms} ms {ratio:6.3f}  ({t_daemon:.2f} s / {t_direct:.2f} s direct; "
                f"goal <= {GOALS['cold']}: {'met' if met else 'NOT met'})"
            )
        print(
            f"  peer phase: {max(r.peer_mirror_debs for r in rounds)} .deb requests reached "
            f"the mirror; share from peers {min(r.peer_share for r in rounds):.3f}"
        )
        met = latency["worst_ms"] < 50
        ok &= met
        print(
            f"  hub during a {latency['index_mb']:.0f} MB index load ({latency['load_s']:.2f} s; "
            f"the index itself answered in {latency['answered_s']:.2f} s): "
            f"{latency['probes']} cached answers, worst {latency['worst_ms']:.1f} ms, median "
            f"{latency['median_ms']:.1f} ms (goal < 50 ms: {'met' if met else 'NOT met'}); "
            f"indexes_loading seen {latency['loading_observed']}"
        )
        print(f"  load average {os.getloadavg()[0]:.2f} (shared machine: compare ratios)")
        return 1 if args.strict and not ok else 0
    finally:
        group.stop_all()
        keep_or_remove(work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
