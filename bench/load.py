"""Benchmark: debtorrent under load, then a soak of repeated apt runs.

One run builds the tests' signed fixture repository (``tests/fixtures/repo.build_repo``:
eleven real ``.deb`` files, 1 KB to 20 MB), serves it with the tests' mirror
(``tests/fixtures/mirror.MirrorServer``, in this process, logging every request), starts
one daemon from the checkout (``bin/debtorrent``, log level warning, its own cache and
state directory under the temporary directory) and fills its cache with one real
``apt-get update`` and ``apt-get install --download-only`` in path form.

- **load**: ``--clients`` (200) HTTP/1.1 keep-alive clients, spread over ``--procs``
  worker processes (threads in each), fetch the cached ``.deb`` files of up to 1 MB
  round robin for ``--seconds`` (30). Every body is checked (length and SHA256);
  a wrong body, a status other than 200, a timeout or a reset is an error. Printed:
  requests, errors, requests/s, MB/s, latency p50/p90/p99/max, the daemon's CPU share
  and RSS, and the requests that reached the mirror meanwhile (should be 0).
- **soak**: real ``apt-get update`` + ``install --download-only`` + ``clean`` in a
  loop for ``--soak-minutes`` (10), ``--soak-clients`` (2) apt clients at a time; the
  daemon's RSS is sampled after every round. Printed: the rounds, failures, and the
  RSS growth from the end of the first round to the end (goal < 10 %).

Usage: .venv/bin/python bench/load.py [--clients 200] [--seconds 30] [--procs N]
    [--soak-minutes 10] [--soak-clients 2] [--keep] [--strict]
(exit status 1 on any error; with --strict also when the RSS goal is missed.)
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import keep_or_remove

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

MiB = 1024 * 1024
GOAL_RSS_GROWTH = 0.10
INSTALL = ("dt-meta", "libdt-dev")  # every package of the fixture repository but one
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the load clients (worker processes) ---------------------------------------------------
def _client(
    port: int,
    files: list[tuple[str, int, str]],
    offset: int,
    start: float,
    deadline: float,
    out: dict,
) -> None:
    """One keep-alive client: GET the files round robin until ``deadline``."""
    latencies: list[float] = []
    errors: list[str] = []
    nbytes = 0
    conn: http.client.HTTPConnection | None = None
    i = offset
    time.sleep(max(0.0, start - time.time()))
    while time.time() < deadline:
        path, size, sha = files[i % len(files)]
        i += 1
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(f"{path}: status {resp.status}")
            elif len(body) != size or hashlib.sha256(body).hexdigest() != sha:
                errors.append(f"{path}: wrong body ({len(body)} of {size} bytes)")
            else:
                latencies.append(elapsed)
                nbytes += size
                continue
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{path}: {exc!r}")
        if conn is not None:  # a fresh connection after any error
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    out["latencies"], out["errors"], out["bytes"] = latencies, errors, nbytes


def _worker(args: tuple) -> dict:
    """A worker process: ``threads`` clients, results merged."""
    port, files, threads, first, start, deadline = args
    results = [{} for _ in range(threads)]
    pool = [
        threading.Thread(target=_client, args=(port, files, first + n, start, deadline, results[n]))
        for n in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    merged: dict = {"latencies": [], "errors": [], "bytes": 0}
    for r in results:
        merged["latencies"] += r.get("latencies", [])
        merged["errors"] += r.get("errors", ["client thread died"])
        merged["bytes"] += r.get("bytes", 0)
    return merged


# ---- the daemon -------------------------------------------------------------------------------
class DaemonProc:
    """``bin/debtorrent`` on 127.0.0.1, stopped by its own pid."""

    def __init__(self, work: Path, keyring: Path) -> None:
        from tests.fixtures.net import free_port

        self.work = work
        self.keyring = keyring
        self.port = free_port(HOST)
        self.peer_port = free_port(HOST)
        self.log = work / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from tests.fixtures.net import wait_for_http

        cmd = [
            sys.executable,
            str(CHECKOUT / "bin" / "debtorrent"),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--peer-bind",
            HOST,
            "--discovery",  # nothing leaves the machine: no LSD, no DHT
            "pex",
            "--dht-bootstrap",
            "none",
            "--peer-port",
            str(self.peer_port),
            "--cache-dir",
            str(self.work / "cache"),
            "--state-dir",
            str(self.work / "state"),
            "--log-level",
            "warning",
            "--log-file",
            str(self.log),
            "--allowed-mirrors",  # the fixture mirror is on loopback: named
            "*,127.0.0.1",
            "--keyring",
            str(self.keyring),
        ]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        with open(self.work / "daemon.out", "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for_http(HOST, self.port, timeout=30, alive=lambda: self.proc.poll() is None)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def tail(self, n: int = 20) -> str:
        text = ""
        for name in ("daemon.log", "daemon.out"):
            try:
                text += (self.work / name).read_text(errors="replace")
            except OSError:
                pass
        return "\n".join(text.splitlines()[-n:])


# ---- the phases -------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def load_phase(daemon: DaemonProc, mirror, files, args) -> bool:
    procs = args.procs
    per = [args.clients // procs + (1 if n < args.clients % procs else 0) for n in range(procs)]
    start = time.time() + 2.0  # every worker is up and its threads waiting by then
    deadline = start + args.seconds
    jobs = []
    first = 0
    for threads in per:
        jobs.append((daemon.port, files, threads, first, start, deadline))
        first += threads
    mirror_before = len(mirror.records())
    rss0 = daemon.rss()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pending = pool.map_async(_worker, jobs)
        time.sleep(max(0.0, start - time.time()))
        cpu0, t0 = daemon.cpu(), time.monotonic()
        rss_max = rss0
        while not pending.ready():
            rss_max = max(rss_max, daemon.rss())
            pending.wait(0.5)
        cpu = (daemon.cpu() - cpu0) / max(time.monotonic() - t0, 1e-9)
        results = pending.get(timeout=60)
    latencies = [x for r in results for x in r["latencies"]]
    errors = [x for r in results for x in r["errors"]]
    nbytes = sum(r["bytes"] for r in results)
    mirror_hits = len(mirror.records()) - mirror_before
    n = len(latencies) + len(errors)
    print(
        f"load: {args.clients} clients ({procs} processes), {args.seconds} s, "
        f"{len(files)} cached .debs of {min(f[1] for f in files) / 1024:.0f} KiB to "
        f"{max(f[1] for f in files) / 1024:.0f} KiB, keep-alive"
    )
    print(f"  requests   {n}, errors {len(errors)}")
    print(f"  rate       {n / args.seconds:.0f} requests/s, {nbytes / args.seconds / 1e6:.1f} MB/s")
    print(
        f"  latency    p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p90 {percentile(latencies, 90) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms, "
        f"max {max(latencies, default=float('nan')) * 1000:.1f} ms"
    )
    print(
        f"  daemon     CPU {cpu * 100:.0f} % of one core; RSS {rss0 / MiB:.1f} MiB before, "
        f"{rss_max / MiB:.1f} MiB at most, {daemon.rss() / MiB:.1f} MiB after"
    )
    print(f"  mirror     {mirror_hits} requests during the load (0: all from the cache)")
    print(f"  machine    {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for e in errors[:10]:
        print(f"  error: {e}")
    return not errors and mirror_hits == 0 and daemon.alive()


def expected_debs(repo) -> dict[str, str]:
    """What ``install --download-only`` of INSTALL leaves in apt's archives: name -> SHA256."""
    return {
        f"{p.name}_{p.version.replace(':', '%3a')}_{p.arch}.deb": p.sha256
        for p in repo.packages
        if p.name != "dt-tiny"
    }


def apt_round(clients, want: dict[str, str]) -> list[str]:
    """update + install --download-only + clean on every client at once; failures.
    Every .deb apt downloaded is checked against the repository's SHA256."""
    failures: list[str] = []

    def one(apt) -> None:
        try:
            for action in ("update", "install"):
                if action == "update":
                    res = apt.update(check=False, timeout=300)
                else:
                    res = apt.install_download_only(*INSTALL, check=False, timeout=300)
                if not res.ok:
                    failures.append(f"{apt.root.name} {action}: {res.output[-500:]}")
                    return
            got = apt.downloaded_sha256()
            if got != want:
                failures.append(f"{apt.root.name}: downloaded {sorted(got)}, not {sorted(want)}")
            apt.history.clear()
            apt.clean()
        except Exception as exc:  # reported, the soak goes on
            failures.append(f"{apt.root.name}: {exc!r}")

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def soak_phase(daemon: DaemonProc, clients, want: dict[str, str], args) -> tuple[bool, float]:
    deadline = time.monotonic() + args.soak_minutes * 60
    samples: list[int] = []
    failures: list[str] = []
    rounds = 0
    t_start = time.monotonic()
    print(
        f"soak: {len(clients)} apt clients, update + install --download-only "
        f"({' '.join(INSTALL)}) + clean, for {args.soak_minutes:g} min"
    )
    while True:
        t0 = time.monotonic()
        failures += apt_round(clients, want)
        rounds += 1
        if not daemon.alive():
            failures.append("the daemon died")
            break
        samples.append(daemon.rss())
        if rounds == 1 or rounds % 10 == 0:
            print(
                f"  round {rounds}: {time.monotonic() - t0:.1f} s, RSS {samples[-1] / MiB:.1f} MiB",
                flush=True,
            )
        if time.monotonic() >= deadline:
            break
    base, last = samples[0], samples[-1]
    growth = (last - base) / base if base else float("nan")
    print(
        f"  {rounds} rounds ({rounds * len(clients)} apt runs) in "
        f"{(time.monotonic() - t_start) / 60:.1f} min, {len(failures)} failed"
    )
    print(
        f"  RSS        {base / MiB:.1f} MiB after round 1, {last / MiB:.1f} MiB at the end, "
        f"max {max(samples) / MiB:.1f} MiB, median {statistics.median(samples) / MiB:.1f} MiB"
    )
    mark = "ok" if growth < GOAL_RSS_GROWTH else "MISSED"
    print(f"  RSS growth {growth * 100:+.1f} % (goal < {GOAL_RSS_GROWTH * 100:.0f} %: {mark})")
    for f in failures[:5]:
        print(f"  failure: {f}")
    return not failures, growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--procs", type=int, default=max(2, min(8, os.cpu_count() or 2)))
    parser.add_argument("--max-size", type=int, default=MiB, help="largest file in the load")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--soak-clients", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()

    for tool in ("apt-get", "dpkg-deb", "gpg", "gpgv", "lz4", "zstd"):
        if shutil.which(tool) is None:
            print(f"bench: needs {tool} (`make debs` installs the Debian packages)")
            return 1

    from tests.fixtures.apt import AptClient
    from tests.fixtures.mirror import MirrorServer
    from tests.fixtures.repo import build_repo

    work = Path(tempfile.mkdtemp(prefix="dt-bench-load-"))
    os.chmod(work, 0o755)
    mirror = daemon = None
    ok = True
    try:
        t0 = time.monotonic()
        repo = build_repo(work / "repo")
        mirror = MirrorServer(repo.root).start()
        daemon = DaemonProc(work, repo.keyring)
        daemon.start()
        clients = [
            AptClient.path_form(work / f"apt{i}", repo, daemon.url, mirror.address)
            for i in range(max(1, args.soak_clients))
        ]
        want = expected_debs(repo)
        failures = apt_round(clients[:1], want)  # fills the cache
        if failures:
            print("bench: apt through the daemon failed:\n" + "\n".join(failures))
            return 1
        files = [
            (f"/{mirror.address}/debian/{p.url_path}", p.size, p.sha256)
            for p in repo.packages
            if p.name != "dt-tiny" and 0 < p.size <= args.max_size
        ]
        print(
            f"setup: repository, mirror, daemon and a warm cache in "
            f"{time.monotonic() - t0:.1f} s (work dir {work})",
            flush=True,
        )
        ok = load_phase(daemon, mirror, files, args) and ok
        if args.soak_minutes > 0:
            soak_ok, growth = soak_phase(daemon, clients, want, args)
            ok = soak_ok and ok
            if args.strict and not growth < GOAL_RSS_GROWTH:
                ok = False
        if not ok and daemon is not None:
            print("--- daemon log tail\n" + daemon.tail())
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.stop()
        if mirror is not None:
            mirror.stop()
        keep_or_remove(work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
