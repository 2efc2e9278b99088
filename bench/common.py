"""Helpers shared by the benchmarks: tools, free ports, processes, a tiny repository, nginx.

Everything runs on 127.0.0.1. Every process started through :class:`Processes` is
stopped at the end (``stop_all``, also registered with ``atexit`` and on SIGTERM), by
its own pid only.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
CHECKOUT = Path(__file__).resolve().parent.parent
DEBTORRENT = CHECKOUT / "bin" / "debtorrent"
ARCH = "amd64"  # the index only has to agree with itself; apt is not involved here


# --- tools --------------------------------------------------------------------------


def require_tools(tools: dict[str, str]) -> None:
    """Make sure each command exists: ``{command: debian package}``.

    Missing ones are installed with apt-get when running as root; otherwise the
    benchmark stops with a message naming the packages to install.
    """
    missing = {cmd: deb for cmd, deb in tools.items() if shutil.which(cmd) is None}
    if not missing:
        return
    debs = sorted(set(missing.values()))
    if os.geteuid() != 0:
        sys.exit(
            f"bench: missing {', '.join(sorted(missing))}; install with: "
            f"sudo apt-get install -y {' '.join(debs)}"
        )
    print(f"bench: installing {' '.join(debs)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *debs]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env)
        subprocess.run(cmd, env=env, check=True)
    still = [cmd for cmd in missing if shutil.which(cmd) is None]
    if still:
        sys.exit(f"bench: still missing after install: {', '.join(still)}")


# --- ports and processes ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """Wait until something accepts on 127.0.0.1:port (and ``proc`` is still alive)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


class Processes:
    """The processes a benchmark started; :meth:`stop_all` ends each by its pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.names: dict[int, str] = {}  # pid -> what it is, for messages
        atexit.register(self.stop_all)
        signal.signal(signal.SIGTERM, _exit_on_signal)

    def start(self, name: str, args: Sequence[str], log: Path, **kw) -> subprocess.Popen:
        out = open(log, "ab")
        try:
            proc = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kw
            )
        finally:
            out.close()
        self.procs.append(proc)
        self.names[proc.pid] = name
        return proc

    def dead(self) -> list[str]:
        """A line for each started process that ended without being stopped here."""
        lines = []
        for proc in self.procs:
            if proc.poll() is None:
                continue
            if proc.returncode < 0:
                how = f"was killed by signal {-proc.returncode}, not by this benchmark"
            elif proc.returncode == 0:
                how = "exited with status 0 unasked (a SIGTERM/SIGINT from outside the benchmark?)"
            else:
                how = f"exited with status {proc.returncode}"
            lines.append(f"{self.names[proc.pid]} (pid {proc.pid}) {how}")
        return lines

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def keep_or_remove(work: Path, keep: bool) -> None:
    """A benchmark's work directory at its end: kept and named (``--keep``), or removed."""
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


# --- a tiny repository --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RepoFile:
    """A .deb of the repository: ``filename`` is relative to the archive root."""

    filename: str
    size: int
    sha256: str


@dataclasses.dataclass
class BenchRepo:
    """``www`` is the web root; the archive root is ``www/<root>``."""

    www: Path
    root: str
    suite: str
    files: list[RepoFile]

    @property
    def release(self) -> str:
        return f"{self.root}/dists/{self.suite}/Release"

    @property
    def packages(self) -> str:
        return f"{self.root}/dists/{self.suite}/main/binary-{ARCH}/Packages"

    def path(self, f: RepoFile) -> str:
        """The file's path below the web root (what a mirror URL ends with)."""
        return f"{self.root}/{f.filename}"


def build_repo(
    www: Path, specs: Iterable[tuple[str, int]], root: str = "debian", suite: str = "bench"
) -> BenchRepo:
    """A minimal archive: ``.deb`` files of random bytes, a Packages index, a Release.

    ``specs`` are ``(package name, size in bytes)``. The daemon only checks a .deb
    against its index (Size, SHA256), and a Packages index against the Release, so
    nothing needs to be a real package or signed.
    """
    base = www / root
    files: list[RepoFile] = []
    stanzas: list[str] = []
    for name, size in specs:
        rel = f"pool/main/{name[0]}/{name}/{name}_1.0-1_{ARCH}.deb"
        data = os.urandom(size)
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        files.append(RepoFile(rel, size, digest))
        stanzas.append(
            f"Package: {name}\nVersion: 1.0-1\nArchitecture: {ARCH}\n"
            f"Maintainer: Bench <bench@example.org>\nDescription: benchmark file\n"
            f"Filename: {rel}\nSize: {size}\nSHA256: {digest}\n"
        )
    index = "\n".join(stanzas).encode()
    dist = base / "dists" / suite
    binary = dist / "main" / f"binary-{ARCH}"
    binary.mkdir(parents=True, exist_ok=True)
    (binary / "Packages").write_bytes(index)
    release = (
        f"Origin: Bench\nLabel: Bench\nSuite: {suite}\nCodename: {suite}\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n"
        f"Architectures: {ARCH}\nComponents: main\nDescription: benchmark archive\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} main/binary-{ARCH}/Packages\n"
    )
    (dist / "Release").write_text(release)
    for d, _dirs, _files in os.walk(www):  # nginx workers run as nobody
        os.chmod(d, 0o755)
    return BenchRepo(www, root, suite, files)


# --- nginx --------------------------------------------------------------------------


def nginx_conf(prefix: Path, servers: str, http_extra: str = "") -> Path:
    """Write ``prefix/nginx.conf``: one worker, sendfile on, keep-alive, temp paths under
    ``prefix``; ``servers`` (and ``http_extra``) go inside its ``http`` block."""
    prefix.mkdir(parents=True, exist_ok=True)
    temps = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
{http_extra}
{temps}
{servers}
}}
"""
    )
    return conf


def start_nginx(
    procs: Processes, prefix: Path, www: Path, servers: dict[str, int]
) -> subprocess.Popen:
    """One nginx, one worker, sendfile on, serving ``www`` on each port of ``servers``.

    ``servers`` maps a name to a port; the server named ``mirror`` writes an access log
    (``prefix/mirror.log``) so a benchmark can tell which files were fetched; the others
    log nothing.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    blocks = []
    for name, port in servers.items():
        log = f"access_log {prefix}/mirror.log;" if name == "mirror" else "access_log off;"
        blocks.append(
            f"    server {{ listen 127.0.0.1:{port}; server_name {name}; root {www}; {log} }}"
        )
    conf = nginx_conf(prefix, "\n".join(blocks))
    proc = procs.start(
        "nginx",
        ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        prefix / "stderr.log",
    )
    for port in servers.values():
        wait_port(port, proc)
    return proc


def start_debtorrent(
    procs: Processes, port: int, cache: Path, log: Path, level: str = "warning"
) -> subprocess.Popen:
    args = [
        sys.executable,
        str(DEBTORRENT),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--cache-dir",
        str(cache),
        "--log-level",
        level,
    ]
    args += ["--peer-port", str(free_port()), "--peer-bind", "127.0.0.1"]  # keep it local
    args += ["--discovery", "pex", "--dht-bootstrap", "none"]  # no LSD, no DHT
    # the mirror is on loopback (named to be reached); the bench archive is unsigned
    args += ["--allowed-mirrors", "*,127.0.0.1", "--verify-signatures", "off"]
    proc = procs.start("debtorrent", args, log, cwd=CHECKOUT)
    wait_port(port, proc)
    return proc


def get(port: int, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port<path> without any proxy; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_sha256(port: int, path: str, timeout: float = 60.0) -> tuple[int, int, str]:
    """GET a file, hashing it as it arrives; (status, length, sha256 hex)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        digest, length = hashlib.sha256(), 0
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            length += len(chunk)
        return resp.status, length, digest.hexdigest()
    finally:
        conn.close()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
