"""Benchmark: one swarm per suite (layout 2) under index churn and mixed architectures.

Four daemons on 127.0.0.2-5 that know each other (``--peer``), real sandboxed
``apt-get`` clients and an uncapped nginx mirror whose access log counts the bytes it
sent per ``.deb``:

- index churn: two daemons update while the archive publishes version 1 of its index,
  then three packages are rebuilt (version 2) and the other two update; all four install
  the same set, one after another. Mirror bytes for the packages both versions list
  unchanged / their size; goal <= 1.05 (layout 1 made two swarms that never met: 2.00);
- mixed architectures: two amd64 and two arm64 clients install the set; mirror bytes for
  the ``Architecture: all`` packages / their size; goal <= 1.05 (layout 1: 2.00).

Usage: .venv/bin/python bench/churn.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
for p in (str(HERE), str(CHECKOUT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _fleetlib import Group, read_access_log, start_mirror  # noqa: E402
from common import keep_or_remove, require_tools  # noqa: E402
from speed import start_daemons, status  # noqa: E402

from tests.fixtures.apt import AptClient  # noqa: E402
from tests.fixtures.repo import PackageSpec, Repo, build_repo  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GOAL = 1.05
SET = "ch-set"
CHANGED = ("ch-small-03", "ch-medium-1", "ch-all-2")


def specs() -> list[PackageSpec]:
    small = [
        PackageSpec(f"ch-small-{i:02d}", "1.0-1", data_size=8 * KiB + i * 29 * KiB)
        for i in range(12)
    ]
    medium = [
        PackageSpec(f"ch-medium-{i}", "1.0-1", data_size=MiB + i * 300 * KiB) for i in range(3)
    ]
    alls = [
        PackageSpec(f"ch-all-{i}", "1.0-1", arch="all", data_size=30 * KiB + i * 200 * KiB)
        for i in range(5)
    ]
    files = [*small, *medium, *alls]
    meta = PackageSpec(SET, "1.0-1", depends=", ".join(s.name for s in files), data_size=0)
    return [*files, meta]


def client(root: Path, repo: Repo, base: str, arch: str) -> AptClient:
    return AptClient(root, repo.sources_line(base), arch=arch, http_timeout=60, timeout=600)


def mirror_bytes(log: Path, start: int, filenames: set[str]) -> int:
    rows = read_access_log(log)[start:]
    return sum(int(r["bytes"]) for r in rows if r["path"].removeprefix("/debian/") in filenames)


def scenario_churn(group: Group, work: Path, repo: Repo, mirror: str, log: Path) -> float:
    daemons = start_daemons(group, work, [f"127.0.0.{i}" for i in range(2, 6)])
    try:
        clients = [
            client(work / f"apt{i}", repo, f"{d.base}/{mirror}/debian", "amd64")
            for i, d in enumerate(daemons)
        ]
        v1 = {p.name: p for p in repo.packages}
        for c in clients[:2]:
            c.update()
        for name in CHANGED:
            repo.update_package(name, "1.0-2")
        for c in clients[2:]:
            c.update()
        unchanged = {p.filename for p in repo.packages if v1[p.name].sha256 == p.sha256}
        size = sum(p.size for p in repo.packages if p.filename in unchanged)
        start = len(read_access_log(log))
        t0 = time.monotonic()
        for c in (clients[0], clients[2], clients[1], clients[3]):  # v1, v2, v1, v2
            c.install_download_only(SET)
        took = time.monotonic() - t0
        sent = mirror_bytes(log, start, unchanged)
        peers = [status(d.host, d.port)["totals"]["bytes_from_peers"] for d in daemons]
        print(
            f"index churn: {len(unchanged)} unchanged files, {size / 1e6:.1f} MB; mirror sent "
            f"{sent / 1e6:.1f} MB of them; from peers per daemon "
            f"{[round(p / 1e6, 1) for p in peers]} MB; four installs in {took:.1f} s",
            flush=True,
        )
        return sent / size
    finally:
        for d in daemons:
            group.stop(d.proc)


def scenario_arches(group: Group, work: Path, repo: Repo, mirror: str, log: Path) -> float:
    daemons = start_daemons(group, work, [f"127.0.0.{i}" for i in range(2, 6)])
    try:
        arches = ["amd64", "arm64", "amd64", "arm64"]
        clients = [
            client(work / f"apt{i}", repo, f"{d.base}/{mirror}/debian", arch)
            for i, (d, arch) in enumerate(zip(daemons, arches, strict=True))
        ]
        for c in clients:
            c.update()
        alls = {p.filename for p in repo.packages if repo.specs[p.name].arch == "all"}
        size = sum(p.size for p in repo.packages if p.filename in alls)
        start = len(read_access_log(log))
        t0 = time.monotonic()
        for c in clients:
            c.install_download_only(SET)
        took = time.monotonic() - t0
        sent = mirror_bytes(log, start, alls)
        print(
            f"mixed architectures: {len(alls)} Architecture: all files, {size / 1e6:.1f} MB; "
            f"mirror sent {sent / 1e6:.1f} MB of them; four installs in {took:.1f} s",
            flush=True,
        )
        return sent / size
    finally:
        for d in daemons:
            group.stop(d.proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    require_tools({"nginx": "nginx-light", "apt-get": "apt", "dpkg-deb": "dpkg", "gpg": "gnupg"})
    work = Path(tempfile.mkdtemp(prefix="dt-bench-churn-"))
    os.chmod(work, 0o755)
    group = Group()
    try:
        repo = build_repo(work / "repo", "bookworm", arch="amd64", packages=specs())
        repo.add_architecture("arm64")
        www = work / "www"
        www.mkdir()
        (www / "debian").symlink_to(repo.root)
        os.chmod(www, 0o755)
        port = start_mirror(group, work / "nginx", www)
        mirror, log = f"127.0.0.1:{port}", work / "nginx" / "access.log"
        arches = scenario_arches(group, work / "arches", repo, mirror, log)
        churn = scenario_churn(group, work / "churn", repo, mirror, log)
        print()
        ok = True
        for name, ratio in (
            ("index churn, unchanged files", churn),
            ("mixed arches, all files", arches),
        ):
            met = ratio <= GOAL
            ok &= met
            print(
                f"  {name:<32} mirror bytes / size {ratio:.3f}  (goal <= {GOAL}: "
                f"{'met' if met else 'NOT met'}; layout 1: 2.00)"
            )
        return 1 if args.strict and not ok else 0
    finally:
        group.stop_all()
        keep_or_remove(work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
