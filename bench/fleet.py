"""Benchmark: 8 daemons with 8 real apt-gets behind a capped mirror, against 8 direct apts.

One run builds a signed fixture repository (``tests/fixtures/repo.build_repo``: real
``.deb`` files, a ~50 MB set of three big packages, six medium and thirty small ones
pulled in by one meta package, plus a few packages nobody installs), serves it with
nginx (1 worker, sendfile) and starts opentracker with the swarm's info hash
whitelisted. Then, for each mirror cap:

- **fleet**: 8 daemons on 127.0.0.2 .. 127.0.0.9 (apt side and peer side on their own
  address, ``--tracker`` the opentracker, defaults otherwise), each with its own
  sandboxed real ``apt-get`` in path form. All 8 run ``apt-get update`` together; once
  the daemons have met through the tracker, all 8 start ``apt-get install
  --download-only`` of the meta package at the same moment (a barrier);
- **direct**: 8 sandboxed ``apt-get`` against the mirror itself (no debtorrent), the
  same update, then the same install at the same moment.

Every downloaded ``.deb`` of every client is checked against the repository's SHA256.
Printed: ``.deb`` bytes the mirror served (from nginx's access log, ``$body_bytes_sent``
of every ``.deb`` request in the install phase) divided by the size of one client's
package set (goal <= 1.2), and the fleet's completion time (the last client to finish)
against the 8 direct clients' completion time.

The mirror caps (``--caps``, both by default):

- ``per-connection``: nginx ``limit_rate`` (``--rate``, default 3 MiB/s) on every
  response, what nginx itself offers. Each direct apt has its connection at the full
  rate, so 8 clients together draw 8 times the rate from the mirror;
- ``shared``: the mirror's uplink (``--uplink``, default 16 MB/s) shared by all its
  connections, a token bucket in a small relay in front of an unlimited nginx: 8
  direct clients split it, as they would a real mirror's uplink.

Usage: .venv/bin/python bench/fleet.py [--caps per-connection,shared] [--rate 3m]
    [--uplink 16e6] [--clients 8] [--keep] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _fleetlib import (
    CHECKOUT,
    Group,
    RateRelay,
    busy_seconds,
    busy_share,
    clean_env,
    cpu_seconds,
    free_port,
    http_answers,
    machine_cpu,
    nginx_conf,
    read_access_log,
    wait_port,
)
from common import keep_or_remove

from tests.fixtures.apt import AptClient, AptResult
from tests.fixtures.repo import PackageSpec, Repo, build_repo
from tests.fixtures.tracker import Tracker

KiB = 1024
MiB = 1024 * KiB
GOAL_RATIO = 1.2
GOAL_OVERHEAD = 1.02  # duplicate blocks: what peers sent that was not kept
META = "fl-set"
INSTALL_TIMEOUT = 600.0


def package_specs() -> tuple[list[PackageSpec], set[str]]:
    """The repository: the set (pulled in by ``fl-set``) and a few bystanders."""
    big = [("fl-big-a", 16 * MiB + 4321), ("fl-big-b", 10 * MiB + 999), ("fl-big-c", 6 * MiB)]
    medium = [(f"fl-medium-{i}", int((1.0 + 0.3 * i) * MiB) + 17 * i) for i in range(6)]
    small = [(f"fl-small-{i:02d}", 4 * KiB + (i * 37 * KiB) % (300 * KiB)) for i in range(30)]
    specs: list[PackageSpec] = []
    names = []
    for name, size in big + medium + small:
        dep = "fl-small-00" if name != "fl-small-00" else ""
        specs.append(PackageSpec(name, "1.0-1", data_size=size, depends=dep, source=name))
        names.append(name)
    specs.append(PackageSpec(META, "1.0-1", depends=", ".join(names), data_size=0))
    for i in range(10):  # listed in the index, never installed
        specs.append(PackageSpec(f"fl-other-{i}", "2.0-1", data_size=200 * KiB + i))
    return specs, {*names, META}


# --- results -----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    clients: int
    update_s: float = 0.0
    times: list[float] = field(default_factory=list)  # install durations per client
    completion: float = 0.0
    deb_bytes: int = 0
    deb_requests: int = 0
    deb_paths: dict[str, int] = field(default_factory=dict)  # path -> requests
    mirror_busy: float = 0.0  # seconds during which at least one .deb was being sent
    index_bytes: int = 0
    totals: list[dict] = field(default_factory=list)  # daemons' status totals
    mesh: list[int] = field(default_factory=list)  # peers per daemon before install
    cpu: list[float] = field(default_factory=list)  # CPU s per daemon during the install
    busy: float = 0.0  # share of the machine's CPUs busy during the install (everything)
    apt_cpu: float = 0.0  # CPU s of the apt-get processes (and their methods) in the install
    notes: list[str] = field(default_factory=list)


# --- helpers -----------------------------------------------------------------------------


def run_all(clients: list[AptClient], action: str, names: tuple[str, ...] = ()) -> list:
    """Run ``update`` or ``install`` in every client at the same moment (a barrier).

    Returns per client (start, end, AptResult or exception).
    """
    barrier = threading.Barrier(len(clients))
    out: list = [None] * len(clients)

    def go(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            t0 = time.monotonic()
            if action == "update":
                res = clients[i].update(check=False, timeout=INSTALL_TIMEOUT)
            else:
                res = clients[i].install_download_only(*names, check=False, timeout=INSTALL_TIMEOUT)
            out[i] = (t0, time.monotonic(), res)
        except BaseException as exc:  # reported by the caller
            out[i] = (0.0, 0.0, exc)

    threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(INSTALL_TIMEOUT + 60)
    return out


def check_results(results: list, what: str, logs: str = "") -> None:
    for i, row in enumerate(results):
        res = row[2] if row is not None else "still running"
        if not isinstance(res, AptResult):
            raise RuntimeError(f"client {i + 1} {what}: {res!r}\n{logs}")
        if not res.ok:
            raise RuntimeError(
                f"client {i + 1} {what}: exit {res.returncode}, {res.problems}\n"
                f"{res.output[-3000:]}\n{logs}"
            )


def check_debs(client: AptClient, repo: Repo, names: set[str]) -> int:
    """Every expected .deb, byte for byte; returns the set's size."""
    got = sorted(client.downloaded_sha256().values())
    want = sorted(repo.package(n).sha256 for n in names)
    if got != want:
        raise RuntimeError(f"{client.root}: downloaded {sorted(client.downloaded_debs())}")
    return repo.total_size(names)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children: the apt-get runs of a phase."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def access_rows(path: Path, start: int, end: int | None = None) -> list[dict]:
    """nginx access log rows written between two byte offsets of the log."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(end - start)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    return read_access_log(tmp)


def status(host: str, port: int) -> dict:
    with urllib.request.urlopen(f"http://{host}:{port}/status.json", timeout=5) as r:
        return json.loads(r.read())


def daemon_log_counts(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    patterns = {
        "fetched from mirror": r"fetched \S+ from the mirror",
        "mirror joined (stall/slow)": r"; the mirror joins",
        "yielded to a peer": r"fetches file \d+ first; waiting",
        "mirror fetch failed": r"mirror fetch of .* failed",
        "bad pieces": r"failed verification",
    }
    return {k: len(re.findall(p, text)) for k, p in patterns.items()}


# --- the phases --------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace, group: Group) -> None:
        self.work = work
        self.args = args
        self.group = group
        self.repo: Repo
        self.names: set[str] = set()
        self.set_size = 0
        self.info_hash = b""

    def build(self) -> None:
        specs, self.names = package_specs()
        t0 = time.monotonic()
        self.repo = build_repo(self.work / "repo", suite="bookworm", packages=specs)
        self.set_size = self.repo.total_size(self.names)
        www = self.work / "www"
        www.mkdir()
        (www / "debian").symlink_to(self.repo.root)
        for d in (self.work, www):
            os.chmod(d, 0o755)
        self.info_hash = self.repo.swarm_hash()
        sizes = sorted((self.repo.package(n).size for n in self.names), reverse=True)
        largest = ", ".join(f"{s / MiB:.1f}" for s in sizes[:3])
        print(
            f"repository: {len(self.repo.packages)} packages; the set: {len(self.names)} .debs, "
            f"{self.set_size / 1e6:.1f} MB (largest {largest} MiB); built in "
            f"{time.monotonic() - t0:.1f} s",
            flush=True,
        )

    # -- mirror ------------------------------------------------------------------------

    def start_mirror(self, cap: str) -> tuple[str, Path, RateRelay | None]:
        prefix = self.work / f"nginx-{cap}"
        port = free_port("127.0.0.1")
        rate = self.args.rate if cap == "per-connection" else None
        conf = nginx_conf(prefix, self.work / "www", "127.0.0.1", port, rate)
        proc = self.group.popen(
            ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
            prefix / "stderr.log",
        )
        wait_port("127.0.0.1", port, alive=lambda: proc.poll() is None)
        relay = None
        if cap == "shared":
            front = free_port("127.0.0.1")
            relay = RateRelay(("127.0.0.1", front), ("127.0.0.1", port), self.args.uplink)
            port = front
        return f"127.0.0.1:{port}", prefix / "access.log", relay

    # -- fleet -------------------------------------------------------------------------

    def fleet(self, cap: str, mirror: str, access_log: Path) -> Phase:
        n = self.args.clients
        phase = Phase(f"fleet ({cap})", n)
        base = self.work / f"fleet-{cap}"
        base.mkdir()
        os.chmod(base, 0o755)
        tracker = Tracker(base / "tracker")
        daemons = []
        try:
            tracker.start()
            tracker.allow(self.info_hash)
            for i in range(n):
                host = f"127.0.0.{i + 2}"
                port, peer_port = free_port(host), free_port(host)
                d = base / f"d{i + 1}"
                d.mkdir()
                args = [
                    sys.executable,
                    str(CHECKOUT / "bin" / "debtorrent"),
                    "--bind",
                    host,
                    "--port",
                    str(port),
                    "--peer-bind",
                    host,
                    "--discovery",  # nothing leaves the machine: no LSD, no DHT
                    "pex",
                    "--dht-bootstrap",
                    "none",
                    "--peer-port",
                    str(peer_port),
                    "--cache-dir",
                    str(d / "cache"),
                    "--tracker",
                    tracker.http_url,
                    "--log-level",
                    self.args.log_level,
                    "--log-file",
                    str(d / "daemon.log"),
                    "--allowed-mirrors",  # the nginx mirror is on loopback: named
                    "*,127.0.0.1",
                    "--keyring",
                    str(self.repo.keyring),
                ]
                proc = self.group.popen(args, d / "output", cwd=CHECKOUT, env=clean_env())
                daemons.append((host, port, proc, d))
            for host, port, proc, d in daemons:
                deadline = time.monotonic() + 60
                while not http_answers(host, port):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        out = (d / "output").read_text(errors="replace")[-2000:]
                        raise RuntimeError(
                            f"daemon {host} did not start (exit {proc.poll()}):\n{out}"
                        )
                    time.sleep(0.05)
            clients = [
                AptClient.path_form(
                    base / f"apt{i + 1}",
                    self.repo,
                    f"http://{host}:{port}",
                    mirror,
                    http_timeout=120,  # apt's own default
                    timeout=INSTALL_TIMEOUT,
                )
                for i, (host, port, _p, _d) in enumerate(daemons)
            ]
            t0 = time.monotonic()
            results = run_all(clients, "update")
            phase.update_s = time.monotonic() - t0
            check_results(results, "apt-get update", self._logs(daemons))
            for host, port, _p, _d in daemons:
                swarms = status(host, port)["swarms"]
                if [s["info_hash"] for s in swarms] != [self.info_hash.hex()]:
                    raise RuntimeError(f"daemon {host}: swarms {swarms}")
            phase.mesh = self._wait_mesh(daemons, n - 1, 20.0)

            start = log_size(access_log)
            cpu0 = [cpu_seconds(proc.pid) for _h, _p, proc, _d in daemons]
            machine0, apt0 = machine_cpu(), children_cpu()
            results = run_all(clients, "install", (META,))
            phase.busy = busy_share(machine0, machine_cpu())
            phase.apt_cpu = children_cpu() - apt0
            cpu1 = [cpu_seconds(proc.pid) for _h, _p, proc, _d in daemons]
            phase.cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
            check_results(results, "apt-get install", self._logs(daemons))
            self._times(phase, results)
            for c in clients:
                check_debs(c, self.repo, self.names)
            phase.totals = [status(h, p)["totals"] for h, p, _x, _d in daemons]
        finally:
            for _h, _p, proc, _d in daemons:
                self.group.stop(proc)
            tracker.stop()
        time.sleep(0.3)  # nginx logs a request when it ends: aborted fetches included
        self._mirror_bytes(phase, access_log, start)
        counts: dict[str, int] = {}
        for _h, _p, _proc, d in daemons:
            for k, v in daemon_log_counts(d / "daemon.log").items():
                counts[k] = counts.get(k, 0) + v
        phase.notes.append(", ".join(f"{k}: {v}" for k, v in counts.items()))
        return phase

    def _wait_mesh(self, daemons: list, want: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            peers = [status(h, p)["swarms"][0]["peers"] for h, p, _x, _d in daemons]
            if min(peers) >= want or time.monotonic() > deadline:
                return peers
            time.sleep(0.25)

    def _logs(self, daemons: list) -> str:
        out = []
        for host, _p, _proc, d in daemons:
            log = d / "daemon.log"
            lines = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            out.append(f"===== daemon {host}\n" + "\n".join(lines))
        return "\n".join(out)

    # -- direct ------------------------------------------------------------------------

    def direct(self, cap: str, mirror: str, access_log: Path) -> Phase:
        n = self.args.clients
        phase = Phase(f"direct ({cap})", n)
        base = self.work / f"direct-{cap}"
        base.mkdir()
        os.chmod(base, 0o755)
        clients = [
            AptClient.direct(
                base / f"apt{i + 1}",
                self.repo,
                f"http://{mirror}/debian",
                http_timeout=120,
                timeout=INSTALL_TIMEOUT,
            )
            for i in range(n)
        ]
        t0 = time.monotonic()
        results = run_all(clients, "update")
        phase.update_s = time.monotonic() - t0
        check_results(results, "apt-get update")
        start = log_size(access_log)
        machine0, apt0 = machine_cpu(), children_cpu()
        results = run_all(clients, "install", (META,))
        phase.busy = busy_share(machine0, machine_cpu())
        phase.apt_cpu = children_cpu() - apt0
        check_results(results, "apt-get install")
        self._times(phase, results)
        for c in clients:
            check_debs(c, self.repo, self.names)
        time.sleep(0.3)
        self._mirror_bytes(phase, access_log, start)
        return phase

    # -- shared ------------------------------------------------------------------------

    @staticmethod
    def _times(phase: Phase, results: list) -> None:
        start = min(r[0] for r in results)
        phase.times = [r[1] - r[0] for r in results]
        phase.completion = max(r[1] for r in results) - start

    def _mirror_bytes(self, phase: Phase, access_log: Path, start: int) -> None:
        intervals = []
        for row in access_rows(access_log, start):
            if row["path"].endswith(".deb"):
                intervals.append((row["end"] - row["time"], row["end"]))
                phase.deb_bytes += row["bytes"]
                phase.deb_requests += 1
                phase.deb_paths[row["path"]] = phase.deb_paths.get(row["path"], 0) + 1
            else:
                phase.index_bytes += row["bytes"]
        phase.mirror_busy = busy_seconds(intervals)


# --- report ------------------------------------------------------------------------------


def report(bench: Bench, results: list[tuple[str, Phase, Phase]], args) -> bool:
    s = bench.set_size
    n = args.clients
    print()
    print(
        f"{n} clients, one package set = {len(bench.names)} .debs, {s / 1e6:.1f} MB; "
        f"every client's .debs checked against the repository's SHA256"
    )
    all_ok = True
    for cap, fleet, direct in results:
        if cap == "per-connection":
            what = f"nginx limit_rate {args.rate} per connection"
        else:
            what = f"{args.uplink / 1e6:.0f} MB/s uplink shared by all connections"
        ratio = fleet.deb_bytes / s
        speed = direct.completion / fleet.completion
        ok = ratio <= GOAL_RATIO
        all_ok &= ok
        print()
        print(f"mirror cap: {what}")
        print(f"  {'figure':<48} {'fleet':>10} {'direct':>10}  goal")
        print(
            f"  {'.deb bytes served by the mirror / one set':<48} {ratio:>10.2f} "
            f"{direct.deb_bytes / s:>10.2f}  <= {GOAL_RATIO} (fleet)  {'ok' if ok else 'MISSED'}"
        )
        print(
            f"  {'.deb requests to the mirror':<48} {fleet.deb_requests:>10} "
            f"{direct.deb_requests:>10}"
        )
        print(
            f"  {'completion, all clients (s)':<48} {fleet.completion:>10.1f} "
            f"{direct.completion:>10.1f}  fleet {speed:.2f} x as fast as direct"
        )
        print(
            f"  {'time the mirror was sending .debs / completion':<48} "
            f"{fleet.mirror_busy / fleet.completion:>10.0%} "
            f"{direct.mirror_busy / direct.completion:>10.0%}"
        )
        print(
            f"  {'install time per client: median / min (s)':<48} "
            f"{statistics.median(fleet.times):>5.1f}/{min(fleet.times):<4.1f} "
            f"{statistics.median(direct.times):>5.1f}/{min(direct.times):<4.1f}"
        )
        print(
            f"  {'apt-get update, all clients together (s)':<48} {fleet.update_s:>10.1f} "
            f"{direct.update_s:>10.1f}"
        )
        print(
            f"  {'machine CPUs busy during the install (all procs)':<48} {fleet.busy:>10.0%} "
            f"{direct.busy:>10.0%}"
        )
        print(
            f"  {'CPU s of the apt-gets in the install':<48} {fleet.apt_cpu:>10.1f} "
            f"{direct.apt_cpu:>10.1f}"
        )
        from_peers = sum(t["bytes_from_peers"] for t in fleet.totals)
        from_mirror = sum(t["bytes_from_mirror"] for t in fleet.totals)
        print(
            f"  daemons (status.json): {from_peers / 1e6:.1f} MB from peers, "
            f"{from_mirror / 1e6:.1f} MB from the mirror, peer share "
            f"{from_peers / max(1, from_peers + from_mirror):.0%}; peers per daemon before "
            f"install: {fleet.mesh}"
        )
        per_daemon = " ".join(f"{t['bytes_from_mirror'] / 1e6:.1f}" for t in fleet.totals)
        print(f"  MB from the mirror per daemon: {per_daemon}")
        uploaded = " ".join(f"{t['bytes_uploaded'] / 1e6:.0f}" for t in fleet.totals)
        print(f"  MB uploaded to peers per daemon: {uploaded}")
        sent = sum(t["bytes_uploaded"] for t in fleet.totals)
        overhead = sent / from_peers if from_peers else float("nan")
        ok = overhead <= GOAL_OVERHEAD
        all_ok &= ok
        print(
            f"  upload overhead (bytes uploaded / bytes kept from peers): {overhead:.3f}  "
            f"<= {GOAL_OVERHEAD}  {'ok' if ok else 'MISSED'}"
        )
        cpu = sum(fleet.cpu)
        print(
            f"  daemons' CPU during the install: {cpu:.1f} s in all ("
            + " ".join(f"{c:.1f}" for c in fleet.cpu)
            + f"), {cpu / (fleet.completion * (os.cpu_count() or 1)):.0%} of the machine's "
            f"{os.cpu_count()} CPUs over the fleet's completion time"
        )
        repeats = sorted(
            ((c, p) for p, c in fleet.deb_paths.items() if c > 1), key=lambda x: (-x[0], x[1])
        )
        if repeats:
            shown = ", ".join(f"{p.rsplit('/', 1)[-1]} x{c}" for c, p in repeats[:6])
            print(f"  .debs the mirror served more than once (fleet): {len(repeats)}: {shown}")
        for note in fleet.notes:
            print(f"  daemon logs: {note}")
    print()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    return all_ok


def parse_rate(text: str) -> float:
    return float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", default="per-connection,shared")
    parser.add_argument("--rate", default="3m", help="nginx limit_rate per connection")
    parser.add_argument("--uplink", type=parse_rate, default=16e6, help="shared bytes/s")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--log-level", default="info", help="the daemons' log level")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    caps = [c.strip() for c in args.caps.split(",") if c.strip()]
    if not set(caps) <= {"per-connection", "shared"} or not 1 <= args.clients <= 8:
        parser.error("--caps takes per-connection and/or shared; --clients 1..8")
    for tool in ("nginx", "opentracker", "apt-get", "dpkg-deb", "gpg"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (make debs installs it)")
    work = Path(tempfile.mkdtemp(prefix="dt-bench-fleet-"))
    os.chmod(work, 0o755)
    group = Group()
    t_start = time.monotonic()
    try:
        bench = Bench(work, args, group)
        bench.build()
        results = []
        for cap in caps:
            mirror, access_log, relay = bench.start_mirror(cap)
            try:
                print(f"[{cap}] fleet of {args.clients} daemons ...", flush=True)
                fleet = bench.fleet(cap, mirror, access_log)
                print(f"[{cap}] fleet done in {fleet.completion:.1f} s; direct ...", flush=True)
                direct = bench.direct(cap, mirror, access_log)
                print(f"[{cap}] direct done in {direct.completion:.1f} s", flush=True)
            finally:
                if relay is not None:
                    relay.stop()
                group.stop_all()
            results.append((cap, fleet, direct))
        ok = report(bench, results, args)
        print(f"benchmark wall time: {time.monotonic() - t_start:.0f} s")
        return 1 if args.strict and not ok else 0
    finally:
        group.stop_all()
        keep_or_remove(work, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
