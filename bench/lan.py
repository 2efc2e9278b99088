"""Benchmark: daemons as a package installs them, on a LAN, against the same apts going direct.

One run builds a signed fixture repository (a set of about 16 MB: one big package, a few
medium ones and twenty small ones, pulled in by one meta package) and, for each fleet
size, builds a test LAN (``tests/fixtures/netns.py``: one network namespace per
machine on a bridge, nothing routed off it) with a mirror host whose link is capped
(``--rate``, ``tc`` on the mirror's interface: the uplink every client shares). Then:

- **direct**: one sandboxed ``apt-get`` per machine (run from the LAN's controller)
  against the mirror itself: ``update``, then ``install --download-only`` of the set,
  first one client after another, then all at the same moment (a barrier);
- **fleet**: one debtorrent daemon per machine with the configuration a package install
  gives: no tracker, no ``--peer``, the built-in discovery (LSD, the DHT with its default
  bootstrap names, which cannot resolve on the LAN, PEX). Its apt uses it in path form.
  All update; the bench waits (bounded) until LSD has connected them; then the set is
  installed one client after another (fresh daemons), and all at the same moment
  (fresh daemons again).

Printed per fleet size: ``.deb`` bytes the mirror served divided by one client's set
(goal <= 1.05, both orders), completion times against the direct clients', the peer
mesh before the install, and the daemons' memory (VmRSS, median and largest). Every
client's ``.deb`` files are checked against the repository's SHA256. Root only.

Usage: .venv/bin/python bench/lan.py [--clients 4,8] [--scale 16,32] [--rate 40mbit]
    [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.apt import AptClient, AptResult
from tests.fixtures.daemon import Daemon
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.netns import TestLan, netns_problem
from tests.fixtures.repo import PackageSpec, Repo, build_repo

KiB, MiB = 1024, 1024 * 1024
GOAL = 1.05
META = "lan-set"
TIMEOUT = 900.0


def package_specs() -> tuple[list[PackageSpec], set[str]]:
    sizes = [("lan-big", 6 * MiB + 333)]
    sizes += [(f"lan-medium-{i}", MiB + 100_000 * i) for i in range(4)]
    sizes += [(f"lan-small-{i:02d}", 8 * KiB + (i * 41 * KiB) % (400 * KiB)) for i in range(20)]
    specs, names = [], []
    for name, size in sizes:
        specs.append(PackageSpec(name, "1.0-1", data_size=size, source=name))
        names.append(name)
    specs.append(PackageSpec(META, "1.0-1", depends=", ".join(names), data_size=0))
    specs.append(PackageSpec("lan-other", "1.0-1", data_size=100 * KiB))  # never installed
    return specs, {*names, META}


@dataclass
class Phase:
    name: str
    deb_bytes: int = 0
    completion: float = 0.0
    times: list[float] = field(default_factory=list)
    mesh: list[int] = field(default_factory=list)
    from_peers: int = 0
    rss: list[int] = field(default_factory=list)
    repeats: dict[str, int] = field(default_factory=dict)  # .deb -> mirror GETs, when > 1


class QuietDaemon(Daemon):
    """The tests' daemon process, logging at info (debug costs CPU at 32 daemons)."""

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--log-level") + 1] = "info"
        return cmd


def rss_of(pid: int | None) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def status(d: Daemon) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{d.url}/status.json", timeout=10) as r:
        return json.loads(r.read())


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.repo: Repo
        self.names: set[str] = set()
        self.set_size = 0
        self.n = 0

    def build(self) -> None:
        specs, self.names = package_specs()
        t0 = time.monotonic()
        self.repo = build_repo(self.work / "repo", packages=specs)
        self.set_size = self.repo.total_size(self.names)
        print(
            f"repository built in {time.monotonic() - t0:.1f} s; one client's set: "
            f"{len(self.names)} .debs, {self.set_size / 1e6:.1f} MB",
            flush=True,
        )

    def _dir(self, what: str) -> Path:
        self.n += 1
        path = self.work / f"{self.n:03d}-{what}"
        path.mkdir()
        os.chmod(path, 0o755)
        return path

    def lan(self, hosts: int) -> tuple[TestLan, MirrorServer]:
        lan = TestLan(hosts).start()
        lan.mirror.shape(rate=self.args.rate)
        with lan.mirror.inside():
            mirror = MirrorServer(self.repo.root, host=lan.mirror.address).start()
        return lan, mirror

    def check(self, client: AptClient, result: object, what: str) -> None:
        if not isinstance(result, AptResult) or not result.ok:
            detail = result.output[-2000:] if isinstance(result, AptResult) else repr(result)
            raise RuntimeError(f"{what}: {client.root}: {detail}")
        got = sorted(client.downloaded_sha256().values())
        want = sorted(self.repo.package(n).sha256 for n in self.names)
        if got != want:
            raise RuntimeError(f"{what}: {client.root} downloaded {client.downloaded_debs()}")

    def install(self, clients: list[AptClient], together: bool, phase: Phase) -> None:
        """Install the set in every client, in turn or at one moment; time each."""
        results: list = [None] * len(clients)
        spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(clients)
        barrier = threading.Barrier(len(clients)) if together else None

        def one(i: int) -> None:
            try:
                if barrier is not None:
                    barrier.wait(timeout=60)
                t0 = time.monotonic()
                results[i] = clients[i].install_download_only(META, check=False, timeout=TIMEOUT)
                spans[i] = (t0, time.monotonic())
            except BaseException as exc:  # reported by check()
                results[i] = exc

        if together:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT + 60)
        else:
            for i in range(len(clients)):
                one(i)
        for i, client in enumerate(clients):
            self.check(client, results[i], phase.name)
        phase.times = [end - start for start, end in spans]
        phase.completion = max(e for _s, e in spans) - min(s for s, _e in spans)

    def direct(self, hosts: int, together: bool) -> Phase:
        phase = Phase(f"direct {'together' if together else 'in turn'}")
        lan, mirror = self.lan(hosts)
        try:
            clients = [
                AptClient.direct(self._dir("direct"), self.repo, mirror.url, http_timeout=120)
                for _ in range(hosts)
            ]
            for c in clients:
                c.update()
            mirror.clear()
            self.install(clients, together, phase)
            mirror.wait_idle(10)
            phase.deb_bytes = mirror.bytes_sent(lambda r: r.path.endswith(".deb"))
        finally:
            mirror.stop()
            lan.close()
        return phase

    def fleet(self, hosts: int, together: bool) -> Phase:
        phase = Phase(f"fleet {'together' if together else 'in turn'}")
        lan, mirror = self.lan(hosts)
        daemons: list[Daemon] = []
        try:
            for host in lan.hosts:
                d = QuietDaemon(
                    self._dir(f"daemon-{host.name}"),
                    bind=host.address,
                    port=9988,
                    peer_port=9989,
                    extra_args=["--allowed-clients", lan.controller],
                    name=host.name,
                    wrap=host.wrap,
                )
                daemons.append(d.start(timeout=60))
            clients = [
                AptClient.path_form(
                    self._dir("apt"), self.repo, d.url, mirror.address, http_timeout=120
                )
                for d in daemons
            ]
            for c in clients:
                c.update()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                phase.mesh = [status(d)["connections"] for d in daemons]
                if min(phase.mesh) >= hosts - 1:
                    break
                time.sleep(0.5)
            mirror.clear()
            self.install(clients, together, phase)
            mirror.wait_idle(10)
            phase.deb_bytes = mirror.bytes_sent(lambda r: r.path.endswith(".deb"))
            gets: dict[str, int] = {}
            for r in mirror.find(lambda r: r.path.endswith(".deb"), method="GET"):
                name = r.path.rsplit("/", 1)[1]
                gets[name] = gets.get(name, 0) + 1
            phase.repeats = {name: n for name, n in sorted(gets.items()) if n > 1}
            phase.from_peers = sum(status(d)["totals"]["bytes_from_peers"] for d in daemons)
            phase.rss = [rss_of(d.pid) for d in daemons]
        finally:
            for d in daemons:
                d.stop()
            mirror.stop()
            lan.close()
        return phase


def report(bench: Bench, hosts: int, phases: dict[str, Phase]) -> bool:
    s = bench.set_size
    print()
    print(f"{hosts} machines, mirror link capped at {bench.args.rate}, set {s / 1e6:.1f} MB")
    ok = True
    for order in ("in turn", "together"):
        fleet, direct = phases[f"fleet {order}"], phases[f"direct {order}"]
        ratio = fleet.deb_bytes / s
        good = ratio <= GOAL
        ok &= good
        print(
            f"  {order:<9} mirror .deb bytes / one set: fleet {ratio:.3f} "
            f"(goal <= {GOAL}: {'ok' if good else 'MISSED'}), direct {direct.deb_bytes / s:.3f}"
        )
        print(
            f"  {'':<9} completion: fleet {fleet.completion:.1f} s, direct "
            f"{direct.completion:.1f} s (fleet {direct.completion / fleet.completion:.2f} x as "
            f"fast); per client median fleet {statistics.median(fleet.times):.1f} s, direct "
            f"{statistics.median(direct.times):.1f} s"
        )
        print(
            f"  {'':<9} peers before the install: min {min(fleet.mesh)} of {hosts - 1}; "
            f"bytes from peers {fleet.from_peers / 1e6:.1f} MB; daemon RSS median "
            f"{statistics.median(fleet.rss) / 1e6:.1f} MB, max {max(fleet.rss) / 1e6:.1f} MB"
        )
        if fleet.repeats:
            sizes = {
                f"{n}_1.0-1_{bench.repo.arch}.deb": bench.repo.package(n).size for n in bench.names
            }
            listed = ", ".join(
                f"{name} ({sizes.get(name, 0) // 1024} KiB) x{count}"
                for name, count in fleet.repeats.items()
            )
            print(f"  {'':<9} fetched from the mirror more than once: {listed}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="4,8")
    parser.add_argument("--scale", default="16,32", help="larger fleets ('' for none)")
    parser.add_argument("--rate", default="40mbit", help="the mirror's link (tc rate)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    problem = netns_problem()
    if problem:
        print(f"bench/lan.py: {problem}", file=sys.stderr)
        return 2
    sizes = [int(x) for x in f"{args.clients},{args.scale}".split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="dt-bench-lan-"))
    os.chmod(work, 0o755)
    bench = Bench(work, args)
    all_ok = True
    try:
        bench.build()
        for hosts in sizes:
            phases = {}
            for together in (False, True):
                for kind in ("direct", "fleet"):
                    t0 = time.monotonic()
                    phase = getattr(bench, kind)(hosts, together)
                    phases[phase.name] = phase
                    print(
                        f"[{hosts}] {phase.name}: {phase.deb_bytes / bench.set_size:.3f} x set, "
                        f"{phase.completion:.1f} s ({time.monotonic() - t0:.0f} s with set-up)",
                        flush=True,
                    )
            all_ok &= report(bench, hosts, phases)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
