"""Benchmark: debtorrent serving cached files, against nginx serving the same files.

One run builds a tiny repository (a 64 MiB .deb and 50 .debs of 100 KiB, a Packages
index, a Release), serves it with nginx (1 worker, sendfile on) as the mirror on one
port and as the baseline on another, and fills a fresh debtorrent cache through the
daemon's real paths: Release, Packages, then each .deb once, in path form. Every body
from both servers is checked against its SHA256 before anything is timed, and the
mirror's access log must show no request while debtorrent is being measured.

Measured in rounds, each round timing both servers back to back (alternating which goes
first); the figures are medians, the ratio is of the medians, and the per-round ratios
show how much the machine's load moved them:

- large file: one curl, the 64 MiB file fetched repeatedly over one connection;
- small files: wrk -t2 -c10, keep-alive, cycling over the 50 files of 100 KiB.

Usage: .venv/bin/python bench/serve.py [--rounds N] [--duration SECS] [--large-rounds N]
    [--strict] [--keep]
(--strict: exit 1 when a goal is missed; a failed check always exits 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BenchRepo,
    KiB,
    MiB,
    Processes,
    build_repo,
    free_port,
    get,
    get_sha256,
    median,
    require_tools,
    start_debtorrent,
    start_nginx,
    tail,
)

LARGE = 64 * MiB
SMALL = 100 * KiB
SMALL_COUNT = 50
GOAL_LARGE = 0.75
GOAL_SMALL = 0.20
CURL_REPEAT = 4  # transfers per curl process, over one connection

WRK_SCRIPT = """\
local paths = {%s}
local i = 0
function setup(thread) thread:set("offset", #threads) threads[#threads + 1] = thread end
threads = {}
function init(args) i = offset * 7 end
function request()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "bytes": %%d, "duration_us": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class CheckFailed(Exception):
    """Something the benchmark relies on is wrong: reported, exit status 1."""


class Server:
    """One side of the comparison: a port and how a repository path maps to a URL path."""

    def __init__(self, name: str, port: int, prefix: str) -> None:
        self.name, self.port, self.prefix = name, port, prefix

    def url_path(self, path: str) -> str:
        return f"{self.prefix}/{path}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_path(path)}"


def warm_cache(repo: BenchRepo, dt: Server, cache: Path, mirror: str) -> None:
    """Fill debtorrent's cache the way apt would: Release, Packages, every .deb once."""
    for path in (repo.release, repo.packages):
        status, _body = get(dt.port, dt.url_path(path))
        if status != 200:
            raise CheckFailed(f"debtorrent answered {status} for {path}")
    for f in repo.files:
        status, body = get(dt.port, dt.url_path(repo.path(f)))
        if status != 200 or len(body) != f.size:
            raise CheckFailed(f"debtorrent answered {status}, {len(body)} bytes for {f.filename}")
    deadline = time.monotonic() + 5
    for f in repo.files:
        cached = cache / mirror / repo.path(f)
        while not (cached.exists() and cached.stat().st_size == f.size):
            if time.monotonic() > deadline:
                raise CheckFailed(f"not cached after one GET: {cached}")
            time.sleep(0.05)


def verify_bodies(repo: BenchRepo, servers: list[Server]) -> None:
    for server in servers:
        for f in repo.files:
            status, length, digest = get_sha256(server.port, server.url_path(repo.path(f)))
            if (status, length, digest) != (200, f.size, f.sha256):
                raise CheckFailed(
                    f"{server.name}: {f.filename}: status {status}, {length} bytes, "
                    f"sha256 {digest}; expected 200, {f.size} bytes, sha256 {f.sha256}"
                )


def curl_large(server: Server, path: str, size: int) -> list[float]:
    """MB/s of each of CURL_REPEAT transfers of ``path`` by one curl over one connection."""
    args = ["curl", "-s", "--noproxy", "*", "-w", "%{http_code} %{size_download} %{time_total}\n"]
    for _ in range(CURL_REPEAT):
        args += ["-o", "/dev/null", server.url(path)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise CheckFailed(f"curl from {server.name} failed ({out.returncode}): {out.stderr}")
    speeds = []
    for line in out.stdout.splitlines():
        code, got, secs = line.split()
        if code != "200" or int(got) != size:
            raise CheckFailed(f"curl from {server.name}: status {code}, {got} of {size} bytes")
        speeds.append(size / float(secs) / 1e6)
    return speeds


def wrk_small(server: Server, paths: list[str], duration: int, workdir: Path) -> float:
    """Requests/s of wrk -t2 -c10 over ``paths``; any error or short body fails."""
    script = workdir / f"wrk-{server.name}.lua"
    quoted = ", ".join(json.dumps(server.url_path(p)) for p in paths)
    script.write_text(WRK_SCRIPT % quoted)
    args = [
        "wrk",
        "-t2",
        "-c10",
        f"-d{duration}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{server.port}/",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise CheckFailed(f"wrk on {server.name} failed: {out.stdout}{out.stderr}")
    res = json.loads(line.split(" ", 1)[1])
    errors = {k: res[k] for k in ("connect", "read", "write", "status", "timeout") if res[k]}
    if errors or not res["requests"]:
        raise CheckFailed(f"wrk on {server.name}: errors {errors}, {res['requests']} requests")
    per_request = res["bytes"] / res["requests"]
    if not SMALL <= per_request < SMALL + 1024:
        raise CheckFailed(f"wrk on {server.name}: {per_request:.0f} bytes per response")
    return res["requests"] / (res["duration_us"] / 1e6)


def count_lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def run(args: argparse.Namespace, tmp: Path, procs: Processes) -> int:
    t0 = time.monotonic()
    www, cache = tmp / "www", tmp / "cache"
    specs = [("bench-large", LARGE)] + [(f"small{i:02d}", SMALL) for i in range(SMALL_COUNT)]
    repo = build_repo(www, specs)
    large = repo.path(repo.files[0])
    small = [repo.path(f) for f in repo.files[1:]]

    mirror_port, nginx_port, dt_port = free_port(), free_port(), free_port()
    nginx_dir = tmp / "nginx"
    start_nginx(procs, nginx_dir, www, {"mirror": mirror_port, "baseline": nginx_port})
    mirror = f"127.0.0.1:{mirror_port}"
    dt_log = tmp / "debtorrent.log"
    start_debtorrent(procs, dt_port, cache, dt_log)
    nginx = Server("nginx", nginx_port, "")
    dt = Server("debtorrent", dt_port, f"/{mirror}")

    warm_cache(repo, dt, cache, mirror)
    verify_bodies(repo, [nginx, dt])
    fetched = count_lines(nginx_dir / "mirror.log")
    print(
        f"setup {time.monotonic() - t0:.1f} s: repository, nginx, debtorrent; cache warmed "
        f"through the daemon ({fetched} mirror requests); every body's SHA256 checked on both"
        "\nmeasuring ...",
        flush=True,
    )

    load_before = os.getloadavg()[0]
    mbs: dict[str, list[float]] = {"nginx": [], "debtorrent": []}
    rps: dict[str, list[float]] = {"nginx": [], "debtorrent": []}
    large_pairs: list[float] = []
    small_pairs: list[float] = []
    servers = [nginx, dt]
    for server in servers:  # warm-up, not counted
        curl_large(server, large, LARGE)
        wrk_small(server, small, 1, tmp)
    for i in range(args.large_rounds):
        got = {}
        for server in servers if i % 2 == 0 else servers[::-1]:
            got[server.name] = curl_large(server, large, LARGE)
            mbs[server.name] += got[server.name]
        large_pairs.append(median(got["debtorrent"]) / median(got["nginx"]))
    for i in range(args.rounds):
        got_rps = {}
        for server in servers if i % 2 == 0 else servers[::-1]:
            got_rps[server.name] = wrk_small(server, small, args.duration, tmp)
            rps[server.name].append(got_rps[server.name])
        small_pairs.append(got_rps["debtorrent"] / got_rps["nginx"])
    load_after = os.getloadavg()[0]

    refetched = count_lines(nginx_dir / "mirror.log") - fetched
    if refetched:
        raise CheckFailed(f"debtorrent asked the mirror {refetched} times while being measured")
    logged = tail(dt_log)

    large_n, large_d = median(mbs["nginx"]), median(mbs["debtorrent"])
    small_n, small_d = median(rps["nginx"]), median(rps["debtorrent"])
    r_large, r_small = large_d / large_n, small_d / small_n
    ok_large, ok_small = r_large >= GOAL_LARGE, r_small >= GOAL_SMALL

    def mark(ok: bool) -> str:
        return "ok" if ok else "BELOW GOAL"

    def pairs(values: list[float]) -> str:
        return f"per-round ratios {min(values):.2f} / {median(values):.2f} / {max(values):.2f}"

    n_large = len(mbs["nginx"])
    print(
        f"\nlarge file 64 MiB, one curl, {CURL_REPEAT} transfers per connection, "
        f"{n_large} transfers per server, median (min-max):\n"
        f"  nginx {large_n:,.0f} MB/s ({spread(mbs['nginx'], '{:,.0f}')}), "
        f"debtorrent {large_d:,.0f} MB/s ({spread(mbs['debtorrent'], '{:,.0f}')})\n"
        f"  ratio {r_large:.2f} (goal >= {GOAL_LARGE:.2f}) {mark(ok_large)}; "
        f"{pairs(large_pairs)} (min / median / max)\n"
        f"small files 100 KiB, wrk -t2 -c10 keep-alive over {len(small)} files, "
        f"{args.rounds} runs of {args.duration} s per server, median (min-max):\n"
        f"  nginx {small_n:,.0f} req/s ({spread(rps['nginx'], '{:,.0f}')}), "
        f"debtorrent {small_d:,.0f} req/s ({spread(rps['debtorrent'], '{:,.0f}')})\n"
        f"  ratio {r_small:.2f} (goal >= {GOAL_SMALL:.2f}) {mark(ok_small)}; "
        f"{pairs(small_pairs)} (min / median / max)\n"
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, "
        f"on {os.cpu_count()} CPUs: ratios from one run are comparable, absolute figures less so"
    )
    if logged:
        print(f"\ndebtorrent logged (level warning):\n{logged}")
    print(f"\ntotal {time.monotonic() - t0:.1f} s")
    return 1 if args.strict and not (ok_large and ok_small) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="wrk rounds (6)")
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run (2)")
    parser.add_argument("--large-rounds", type=int, default=12, help="curl rounds (12)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    require_tools({"nginx": "nginx-light", "curl": "curl", "wrk": "wrk"})
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="debtorrent-bench-"))
    tmp.chmod(0o755)  # nginx workers run as nobody
    try:
        return run(args, tmp, procs)
    except (CheckFailed, RuntimeError) as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr)
        for line in procs.dead():
            print(f"bench: {line}", file=sys.stderr)
        for log in (tmp / "debtorrent.log", tmp / "nginx" / "error.log"):
            if text := tail(log):
                print(f"--- {log.name} (last lines):\n{text}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
