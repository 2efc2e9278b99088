"""Benchmark: debtorrent -> debtorrent against libtorrent -> libtorrent, same bytes, one run.

One set of files of random bytes (>= 200 MiB, a mix of large, medium and small files)
becomes a standard v1 ``.torrent`` with 256 KiB pieces. Two seeds start once and seed
the whole run: debtorrent's standalone v1 entry on 127.0.0.2, and libtorrent (the wheel
in the venv; TCP only, uTP and encryption off, DHT/LSD/UPnP/NAT-PMP off) on 127.0.0.4.
Each round a fresh downloader fetches the whole set from its own kind of seed over
loopback, into an empty directory: debtorrent (``python -m
debtorrent.torrent.standalone``) on 127.0.0.3, libtorrent on 127.0.0.5. The order of the
two alternates between rounds. Every downloaded file is checked against the SHA256 of
the original before its transfer counts.

Timing excludes process start-up: for debtorrent, from the downloader's log line saying
its (empty) files were checked, just before it dials the seed, to its ``complete``
line; for libtorrent, from the torrent being added (with the seed's address) to it
seeding. CPU seconds of the downloader and of the seed over the transfer come from
``/proc``. Two cross pairs (debtorrent -> libtorrent and libtorrent -> debtorrent) are
timed too, to tell the upload side from the download side; they are not in the goal.

The data lives on tmpfs (/dev/shm) when there is room, so the disk does not blur the
comparison. Goal: debtorrent MB/s / libtorrent MB/s >= 1.0 (medians of the rounds).

Usage: .venv/bin/python bench/swarm.py [--rounds N] [--size-mib N] [--no-cross]
    [--keep] [--strict]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _fleetlib import CHECKOUT, Group, Proc, cpu_seconds
from common import keep_or_remove

MiB = 1024 * 1024
PIECE = 256 * 1024
GOAL = 1.0
DT_SEED, DT_LEECH, LT_SEED, LT_LEECH = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
TRANSFER_TIMEOUT = 300.0


# --- libtorrent, as a child process ------------------------------------------------------


def lt_child(role: str, torrent: str, directory: str, bind: str, peer: str | None) -> int:
    """Seed (``seed``) or download (``leech``) with libtorrent; lines on stdout."""
    import libtorrent as lt

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    settings = {
        "listen_interfaces": f"{bind}:0",
        "outgoing_interfaces": bind,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.enabled),
        "alert_mask": 0,
    }
    ses = lt.session(settings)
    print(f"listening {ses.listen_port()}", flush=True)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = directory
    handle = ses.add_torrent(params)
    if peer:
        host, _, port = peer.rpartition(":")
        handle.connect_peer((host, int(port)))
    print("added", flush=True)
    while not stop:
        status = handle.status()
        if status.is_seeding:
            break
        if status.errc.value():
            print(f"error {status.errc.message()}", flush=True)
            return 1
        time.sleep(0.005)
    print("complete", flush=True)
    while not stop:
        time.sleep(0.1)
    return 0


# --- the data ----------------------------------------------------------------------------


def make_set(root: Path, total_mib: int) -> dict[str, str]:
    """Files of random bytes under ``root``; returns relative path -> SHA256.

    Two thirds of the bytes in 32 MiB files, a quarter in 4 MiB files, the rest in
    small files of odd sizes, like a package set (and so pieces end inside files).
    """
    rng = random_bytes()
    big = (total_mib * 2 // 3) // 32
    medium = (total_mib // 4) // 4
    small_bytes = total_mib * MiB - big * 32 * MiB - medium * 4 * MiB
    sizes: list[int] = [32 * MiB + 4097 * i for i in range(big)] + [
        4 * MiB - 777 * i for i in range(medium)
    ]
    while small_bytes > 0:
        size = min(small_bytes, 300_000 + 1234 * len(sizes))
        sizes.append(size)
        small_bytes -= size
    digests = {}
    for i, size in enumerate(sizes):
        rel = f"d{i % 4}/file{i:03d}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng(size)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def random_bytes():
    import random

    r = random.Random(20261124)
    return r.randbytes


def verify(directory: Path, digests: dict[str, str]) -> None:
    for rel, digest in digests.items():
        h = hashlib.sha256()
        with open(directory / rel, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise RuntimeError(f"{directory / rel}: SHA256 differs from the original")


# --- one transfer ------------------------------------------------------------------------


def dt_args(torrent: Path, directory: Path, bind: str, peer: str | None) -> list[str]:
    args = [sys.executable, "-m", "debtorrent.torrent.standalone", "--torrent", str(torrent)]
    args += ["--dir", str(directory), "--bind", bind, "--log-level", "info"]
    if peer:
        args += ["--peer", peer]
    return args


def lt_args(role: str, torrent: Path, directory: Path, bind: str, peer: str | None) -> list[str]:
    args = [sys.executable, __file__, "--lt-child", role, str(torrent), str(directory), bind]
    return [*args, peer or ""]


def transfer(
    group: Group,
    work: Path,
    kind: str,
    torrent: Path,
    seed: Proc,
    seed_addr: str,
    digests: dict[str, str],
    total: int,
    tag: str,
) -> dict[str, float]:
    """One download from ``seed``; kind is the downloader's, 'dt' or 'lt'."""
    directory = work / f"leech-{tag}"
    directory.mkdir()
    log = work / f"leech-{tag}.log"
    if kind == "dt":
        args = dt_args(torrent, directory, DT_LEECH, seed_addr)
        ready = r"pieces on disk"  # logged after the recheck, right before dialling
    else:
        args = lt_args("leech", torrent, directory, LT_LEECH, seed_addr)
        ready = r"^added$"
    leech = group.start(f"{kind} leech {tag}", args, log, cwd=CHECKOUT)
    try:
        leech.wait_line(r"^listening \d+", 60)
        t0 = leech.wait_line(ready, 120)
        cpu_seed0 = cpu_seconds(seed.pid)
        cpu_leech0 = cpu_seconds(leech.pid)
        t1 = leech.wait_line(r"^complete$", TRANSFER_TIMEOUT, stream="out")
        cpu_leech1 = cpu_seconds(leech.pid)
        cpu_seed1 = cpu_seconds(seed.pid)
    finally:
        group.stop(leech)
    verify(directory / "set", digests)
    shutil.rmtree(directory)
    seconds = t1 - t0
    return {
        "seconds": seconds,
        "mbps": total / 1e6 / seconds,
        "cpu_leech": cpu_leech1 - cpu_leech0,
        "cpu_seed": cpu_seed1 - cpu_seed0,
    }


# --- main --------------------------------------------------------------------------------


def workdir(size: int) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir():
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 4 * size + 512 * MiB:
            return Path(tempfile.mkdtemp(prefix="dt-bench-swarm-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="dt-bench-swarm-"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=210)
    parser.add_argument("--no-cross", action="store_true", help="skip the cross pairs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the goal is missed")
    parser.add_argument("--lt-child", nargs=5, metavar=("ROLE", "TORRENT", "DIR", "BIND", "PEER"))
    args = parser.parse_args()
    if args.lt_child:
        role, torrent, directory, bind, peer = args.lt_child
        return lt_child(role, torrent, directory, bind, peer or None)
    if args.size_mib < 200:
        parser.error("--size-mib must be at least 200")
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        sys.exit("bench: the libtorrent wheel is missing: .venv/bin/pip install libtorrent")

    work = workdir(args.size_mib * MiB)
    group = Group()
    try:
        return run(work, group, args)
    finally:
        group.stop_all()
        keep_or_remove(work, args.keep)


def run(work: Path, group: Group, args: argparse.Namespace) -> int:
    from debtorrent.torrent.metainfo import create_torrent, parse_torrent

    seed_dir = work / "seed"
    digests = make_set(seed_dir / "set", args.size_mib)
    torrent = work / "set.torrent"
    torrent.write_bytes(create_torrent(seed_dir / "set", PIECE, files=sorted(digests)))
    meta = parse_torrent(torrent.read_bytes())
    total = meta.total_size
    print(
        f"set: {len(digests)} files, {total / MiB:.1f} MiB, {meta.num_pieces} pieces of "
        f"{PIECE // 1024} KiB, in {work}",
        flush=True,
    )

    dt_seed = group.start(
        "dt seed", dt_args(torrent, seed_dir, DT_SEED, None), work / "dt-seed.log", cwd=CHECKOUT
    )
    lt_seed = group.start(
        "lt seed", lt_args("seed", torrent, seed_dir, LT_SEED, None), work / "lt-seed.log"
    )
    dt_port = _port(dt_seed)
    lt_port = _port(lt_seed)
    dt_seed.wait_line(r"^complete$", 120, stream="out")
    lt_seed.wait_line(r"^complete$", 120, stream="out")
    dt_addr, lt_addr = f"{DT_SEED}:{dt_port}", f"{LT_SEED}:{lt_port}"
    print("seeds ready: debtorrent on", dt_addr, "libtorrent on", lt_addr, flush=True)

    pairs = [
        ("dt", dt_seed, dt_addr, "debtorrent -> debtorrent"),
        ("lt", lt_seed, lt_addr, "libtorrent -> libtorrent"),
    ]
    results: dict[str, list[dict[str, float]]] = {
        "debtorrent -> debtorrent": [],
        "libtorrent -> libtorrent": [],
        "debtorrent -> libtorrent": [],
        "libtorrent -> debtorrent": [],
    }
    for r in range(args.rounds):
        order = [0, 1] if r % 2 == 0 else [1, 0]
        for i in order:
            kind, seed, addr, name = pairs[i]
            res = transfer(group, work, kind, torrent, seed, addr, digests, total, f"{kind}{r}")
            results[name].append(res)
            print(f"  round {r + 1}: {name}: {_fmt(res)}", flush=True)
        if not args.no_cross:
            for leech_kind, seed, addr, name in (
                ("lt", dt_seed, dt_addr, "debtorrent -> libtorrent"),
                ("dt", lt_seed, lt_addr, "libtorrent -> debtorrent"),
            ):
                res = transfer(
                    group,
                    work,
                    leech_kind,
                    torrent,
                    seed,
                    addr,
                    digests,
                    total,
                    f"x{leech_kind}{r}",
                )
                results[name].append(res)
                print(f"  round {r + 1}: {name}: {_fmt(res)}", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    def per_cpu(name: str) -> float:
        return statistics.median(
            total / 1e6 / (x["cpu_leech"] + x["cpu_seed"]) for x in results[name]
        )

    dt = med("debtorrent -> debtorrent", "mbps")
    lt = med("libtorrent -> libtorrent", "mbps")
    ratio = dt / lt
    print()
    print(
        f"{total / MiB:.0f} MiB, {len(digests)} files, 256 KiB pieces, loopback TCP; "
        f"median of {args.rounds} rounds"
    )
    header = f"{'pair (seed -> downloader)':<28} {'MB/s':>8} {'s':>7} {'CPU dl s':>9} "
    header += f"{'CPU seed s':>10} {'MB/CPU s':>9}  per round MB/s"
    print(header)
    for name, rows in results.items():
        if not rows:
            continue
        print(
            f"{name:<28} {med(name, 'mbps'):>8.1f} {med(name, 'seconds'):>7.2f} "
            f"{med(name, 'cpu_leech'):>9.2f} {med(name, 'cpu_seed'):>10.2f} "
            f"{per_cpu(name):>9.0f}  " + " ".join(f"{x['mbps']:.0f}" for x in rows)
        )
    ok = ratio >= GOAL
    print(
        f"ratio debtorrent/libtorrent: {ratio:.2f}   goal >= {GOAL:.1f}  {'ok' if ok else 'MISSED'}"
    )
    print(
        "CPU per byte, debtorrent pair / libtorrent pair: "
        f"{per_cpu('libtorrent -> libtorrent') / per_cpu('debtorrent -> debtorrent'):.2f} x "
        "(MB/CPU s counts both processes: steadier than MB/s on a busy machine)"
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    return 1 if args.strict and not ok else 0


def _port(proc: Proc) -> int:
    proc.wait_line(r"^listening \d+", 60, stream="out")
    m = proc.match(r"^listening (\d+)")
    assert m is not None
    return int(m.group(1))


def _fmt(res: dict[str, float]) -> str:
    return (
        f"{res['mbps']:.1f} MB/s ({res['seconds']:.2f} s; CPU downloader "
        f"{res['cpu_leech']:.2f} s, seed {res['cpu_seed']:.2f} s)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
