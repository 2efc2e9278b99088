"""Helpers for bench/swarm.py and bench/fleet.py: processes with timed output lines,
ports, CPU time, and an nginx mirror with a rate cap.

Every process started through :class:`Group` is stopped by its own pid in
:meth:`Group.stop_all` (call it in a ``finally``; it is also registered with ``atexit``).
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from common import nginx_conf as common_nginx_conf

CHECKOUT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_tcp_udp(host: str = "127.0.0.1") -> int:
    for _ in range(50):
        port = free_port(host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free for TCP and UDP on {host}")


def wait_port(host: str, port: int, alive=None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"process died before {host}:{port} opened")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not open within {timeout} s")
        time.sleep(0.02)


def http_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"HEAD / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (and its waited-for children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra or {})
    return env


class Proc:
    """A child process whose stdout/stderr lines are read as they come, with times."""

    def __init__(self, name: str, args: Sequence[str], log: Path, **kw) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "w", buffering=1)
        self.lines: list[tuple[float, str, str]] = []  # (monotonic, stream, line)
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=kw.pop("env", clean_env()),
            **kw,
        )
        self.pid = self.proc.pid
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, kind: str) -> None:
        for line in stream:
            now = time.monotonic()
            with self._cond:
                self.lines.append((now, kind, line.rstrip("\n")))
                self._cond.notify_all()
            try:
                self._log.write(f"{now:.3f} {kind} {line}")
            except ValueError:  # closed
                pass
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_line(self, pattern: str, timeout: float, stream: str | None = None) -> float:
        """Monotonic time at which a line matching ``pattern`` (regex search) was read."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for when, kind, line in self.lines[seen:]:
                    if (stream is None or kind == stream) and rx.search(line):
                        return when
                seen = len(self.lines)
                if not self.alive() and all(not t.is_alive() for t in self._readers):
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}) before /{pattern}/; "
                        f"see {self.log_path}:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.name}: no /{pattern}/ within {timeout} s; see {self.log_path}"
                        f":\n{self.tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def match(self, pattern: str) -> re.Match | None:
        rx = re.compile(pattern)
        with self._cond:
            for _when, _kind, line in self.lines:
                m = rx.search(line)
                if m:
                    return m
        return None

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(f"  {k}: {line}" for _w, k, line in self.lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for t in self._readers:
            t.join(2)
        self._log.close()


class Group:
    """The processes one benchmark started; stop_all() ends each by its own pid."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.popens: list[subprocess.Popen] = []
        atexit.register(self.stop_all)

    def start(self, name: str, args: Sequence[str], log: Path, **kw) -> Proc:
        proc = Proc(name, args, log, **kw)
        self.procs.append(proc)
        return proc

    def popen(self, args: Sequence[str], log: Path, **kw) -> subprocess.Popen:
        """A plain child with output to a file (nginx, opentracker, daemons)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=kw.pop("env", clean_env()),
                **kw,
            )
        self.popens.append(proc)
        return proc

    def stop(self, proc: Proc | subprocess.Popen, timeout: float = 10.0) -> None:
        if isinstance(proc, Proc):
            proc.stop(timeout)
            if proc in self.procs:
                self.procs.remove(proc)
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.popens:
            self.popens.remove(proc)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)
        for p in reversed(list(self.popens)):
            self.stop(p)


# --- nginx as a capped mirror --------------------------------------------------------


def nginx_conf(prefix: Path, www: Path, host: str, port: int, rate: str | None) -> Path:
    """One worker, sendfile on, an access log with the bytes of each response body.

    ``rate`` (nginx syntax, e.g. ``4m``) caps each response with ``limit_rate``.
    """
    limit = f"limit_rate {rate};" if rate else ""
    log_format = (
        "    log_format bench '$remote_addr \"$request\" $status $body_bytes_sent '\n"
        "                     '\"$http_range\" $request_time $msec';"
    )
    server = f"""    server {{
        listen {host}:{port} sndbuf=64k;
        root {www};
        access_log {prefix}/access.log bench;
        {limit}
    }}"""
    return common_nginx_conf(prefix, server, log_format)


def start_mirror(group: Group, prefix: Path, www: Path, rate: str | None = None) -> int:
    """nginx serving *www* on 127.0.0.1 (access log ``prefix/access.log``, read with
    :func:`read_access_log`); returns its port once it listens."""
    port = free_port()
    conf = nginx_conf(prefix, www, "127.0.0.1", port, rate)
    proc = group.popen(
        ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        prefix / "stderr.log",
    )
    wait_port("127.0.0.1", port, alive=lambda: proc.poll() is None)
    return port


ACCESS_RE = re.compile(
    r'^(?P<addr>\S+) "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d+) (?P<bytes>\d+) '
    r'"(?P<range>[^"]*)" (?P<time>\S+) (?P<end>\S+)$'
)


def read_access_log(path: Path) -> list[dict]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        m = ACCESS_RE.match(line)
        if m:
            row = m.groupdict()
            row["bytes"] = int(row["bytes"])
            row["status"] = int(row["status"])
            row["time"] = float(row["time"])
            row["end"] = float(row["end"])
            out.append(row)
    return out


# --- a shared uplink: one token bucket over every connection ------------------------


class TokenBucket:
    """``rate`` bytes/s shared by every caller; a caller reserves its bytes, then
    sleeps until the bucket has produced them (so concurrent users split the rate)."""

    def __init__(self, rate: float, burst: int = 64 * 1024) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def consume(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class RateRelay:
    """A TCP relay on ``listen`` in front of ``upstream`` whose downstream direction
    (upstream -> client) shares one :class:`TokenBucket`: the mirror's uplink.

    The upstream socket's receive buffer is kept small, so what the upstream logs as
    sent is close to what clients received even when a client hangs up mid-body.
    """

    CHUNK = 16 * 1024

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], rate: float) -> None:
        self.upstream = upstream
        self.bucket = TokenBucket(rate)
        self.delivered = 0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(listen)
        self._server.listen(128)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        up = socket.socket()
        up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            up.connect(self.upstream)
        except OSError:
            client.close()
            up.close()
            return
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks.update((client, up))
        t = threading.Thread(target=self._pump, args=(client, up, False), daemon=True)
        t.start()
        self._pump(up, client, True)
        t.join()
        with self._lock:
            self._socks.difference_update((client, up))
        client.close()
        up.close()

    def _pump(self, src: socket.socket, dst: socket.socket, limited: bool) -> None:
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                if limited:
                    self.bucket.consume(len(data))
                dst.sendall(data)
                if limited:
                    with self._lock:
                        self.delivered += len(data)
        except OSError:
            pass
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR if s is src else socket.SHUT_WR)
            except OSError:
                pass

    def stop(self) -> None:
        self._stopping.set()
        self._server.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DelayRelay(RateRelay):
    """A TCP relay that adds a round trip of ``rtt`` seconds to the path to ``upstream``
    (half each way, on every byte, plus one round trip to open a connection): what a
    real uplink to a distant mirror adds, where this kernel has no ``tc netem``.

    Each direction queues what it reads with the moment it may go on, and one writer
    per direction sends it then, so order and throughput are kept while latency grows.
    """

    CHUNK = 64 * 1024

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], rtt: float) -> None:
        self.rtt = rtt
        super().__init__(listen, upstream, rate=float("inf"))

    def _serve(self, client: socket.socket) -> None:
        time.sleep(self.rtt)  # the upstream connection's own handshake
        super()._serve(client)

    def _pump(self, src: socket.socket, dst: socket.socket, limited: bool) -> None:
        pending: queue.Queue = queue.Queue()
        writer = threading.Thread(target=self._deliver, args=(pending, dst), daemon=True)
        writer.start()
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                pending.put((time.monotonic() + self.rtt / 2, data))
        except OSError:
            pass
        pending.put(None)
        writer.join()
        try:
            src.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @staticmethod
    def _deliver(pending: queue.Queue, dst: socket.socket) -> None:
        try:
            while (item := pending.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of all CPUs' time spent busy between two :func:`machine_cpu` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else float("nan")


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total
