"""The Announcer against a real opentracker (Debian's, whitelist-only) on loopback.

How the scenarios run: the Announcer does UDP through ``gevent.socket`` explicitly, so
UDP scenarios run right here, in pytest's process, which is not monkey-patched; the hub
runs while the test waits in ``gevent.sleep``. HTTP goes through urllib3, which only
cooperates once ``gevent.monkey.patch_all()`` has run, as the daemon's entry point does;
patching pytest's own process would leak into every other test, so HTTP scenarios run in
a child Python that patches first, imports this module and runs the same scenario
function, printing its result as JSON. Either way a scenario returns a plain dict that
the test asserts on, including the tracker log lines it produced.

Every process a test starts is stopped by it, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

OPENTRACKER = shutil.which("opentracker") or "/usr/bin/opentracker"
REPO = Path(__file__).resolve().parents[2]
HASH = hashlib.sha1(b"debtorrent tracker test").digest()
UNKNOWN_HASH = hashlib.sha1(b"not on the whitelist").digest()

pytestmark = pytest.mark.skipif(
    not os.access(OPENTRACKER, os.X_OK), reason="opentracker not installed (make debs)"
)


# --- opentracker ---------------------------------------------------------------------------


@dataclass
class Opentracker:
    """A running opentracker; ``port`` serves both HTTP (TCP) and UDP."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}/announce"

    @property
    def udp(self) -> str:
        return f"udp://127.0.0.1:{self.port}"


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def opentracker(hashes: list[bytes]) -> Iterator[Opentracker]:
    """Start opentracker with ``hashes`` whitelisted; stop it and clean up afterwards.

    It chroots into its directory and drops to user ``nobody``, so the directory is made
    under /tmp, world-readable (pytest's tmp_path is private to root).
    """
    directory = Path(tempfile.mkdtemp(prefix="debtorrent-opentracker-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        directory.chmod(0o755)
        (directory / "whitelist").write_text("".join(h.hex() + "\n" for h in hashes))
        (directory / "whitelist").chmod(0o644)
        for _ in range(3):  # another process may grab the port between probe and bind
            port = _free_port()
            cmd = [OPENTRACKER, "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
            cmd += ["-d", str(directory), "-w", "whitelist"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if _wait_listening(proc, port, 5.0):
                break
            _stop(proc)
            proc = None
        if proc is None:
            raise RuntimeError("opentracker did not start")
        yield Opentracker(port, directory, proc)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(directory, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def tracker() -> Iterator[Opentracker]:
    with opentracker([HASH]) as t:
        yield t


def _dead_port() -> int:
    """A loopback port nothing listens on: connects are refused at once (TCP and UDP)."""
    return _free_port()


# --- scenarios (run here or in the monkey-patched child) ----------------------------------


class _NoShuffle(random.Random):
    """Keeps tiers in the given order, so a test decides which tracker is tried first."""

    def shuffle(self, x: list[object]) -> None:  # type: ignore[override]
        return None


class _Logs(logging.Handler):
    """Collects the tracker module's log lines for the result."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")
        if record.exc_info:
            self.lines.append("TRACEBACK")


class _Peer:
    """One Announcer plus what it was told, for a scenario."""

    def __init__(self, tiers: list[list[str]], source: str, port: int, info_hash: bytes) -> None:
        from debtorrent.torrent.tracker import Announcer

        self.seen: set[tuple[str, int]] = set()
        self.last: list[tuple[str, int]] = []
        self.calls = 0
        self.announcer = Announcer(
            info_hash,
            hashlib.sha1(source.encode()).digest(),
            port,
            tiers,
            stats_callback=lambda: (0, 0, 1000),
            on_peers=self._on_peers,
            source_address=source,
            http_timeout=3.0,
            interval_bounds=(0.3, 0.3),
            retry_bounds=(0.2, 0.5),
            udp_timeout=0.5,
            udp_attempts=2,
            rng=_NoShuffle(),
        )

    def _on_peers(self, peers: list[tuple[str, int]]) -> None:
        self.calls += 1
        self.last = list(peers)
        self.seen.update(peers)


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Let the hub run until ``cond()`` holds or ``timeout`` passes."""
    import gevent

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.05)
    return True


@contextlib.contextmanager
def _scenario() -> Iterator[tuple[_Logs, list[_Peer]]]:
    """Capture tracker logs; stop every announcer the scenario made, however it ends."""
    handler = _Logs()
    logger = logging.getLogger("debtorrent.torrent.tracker")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    peers: list[_Peer] = []
    try:
        yield handler, peers
    finally:
        for p in peers:
            p.announcer.stop(2.0)
        logger.removeHandler(handler)


def scenario_pair(tiers: list[list[str]]) -> dict[str, Any]:
    """Two daemons on 127.0.0.2 and 127.0.0.3 announce one hash: each must learn the other."""
    with _scenario() as (logs, peers):
        a = _Peer(tiers, "127.0.0.2", 7001, HASH)
        b = _Peer(tiers, "127.0.0.3", 7002, HASH)
        peers += [a, b]
        a.announcer.start()
        b.announcer.start()
        met = _wait(lambda: ("127.0.0.3", 7002) in a.seen and ("127.0.0.2", 7001) in b.seen)
        return {"met": met, "a": sorted(a.seen), "b": sorted(b.seen), "logs": logs.lines}


def scenario_refused(tiers: list[list[str]]) -> dict[str, Any]:
    """A hash the whitelist lacks: failures are logged, retried, and nothing crashes."""
    with _scenario() as (logs, peers):
        a = _Peer(tiers, "127.0.0.2", 7001, UNKNOWN_HASH)
        peers.append(a)
        a.announcer.start()
        retried = _wait(lambda: a.announcer.failures >= 2)
        return {
            "retried": retried,
            "running": a.announcer.running,
            "calls": a.calls,
            "last_error": a.announcer.last_error,
            "logs": logs.lines,
        }


def scenario_failover(tiers: list[list[str]]) -> dict[str, Any]:
    """Dead trackers first: the announce must land on the live one, over a few rounds."""
    with _scenario() as (logs, peers):
        a = _Peer(tiers, "127.0.0.2", 7001, HASH)
        peers.append(a)
        a.announcer.start()
        ok = _wait(lambda: a.announcer.announces >= 3)
        return {
            "ok": ok,
            "current": a.announcer.current_tracker,
            "tiers": a.announcer.tiers.as_lists(),
            "seen": sorted(a.seen),
            "logs": logs.lines,
        }


def scenario_stopped(tiers: list[list[str]]) -> dict[str, Any]:
    """After A stops, B's next full announce no longer lists A."""
    with _scenario() as (logs, peers):
        a = _Peer(tiers, "127.0.0.2", 7001, HASH)
        b = _Peer(tiers, "127.0.0.3", 7002, HASH)
        peers += [a, b]
        a.announcer.start()
        b.announcer.start()
        met = _wait(lambda: ("127.0.0.2", 7001) in b.last)
        a.announcer.stop(2.0)
        calls = b.calls
        # a reply to an announce that began after A's 'stopped' was answered
        gone = _wait(lambda: b.calls >= calls + 2 and ("127.0.0.2", 7001) not in b.last)
        return {
            "met": met,
            "stopped_sent": a.announcer.stopped_sent,
            "a_running": a.announcer.running,
            "gone": gone,
            "b_last": b.last,
            "logs": logs.lines,
        }


SCENARIOS: dict[str, Callable[[list[list[str]]], dict[str, Any]]] = {
    "pair": scenario_pair,
    "refused": scenario_refused,
    "failover": scenario_failover,
    "stopped": scenario_stopped,
}

# The child: patch first, then import this module (and with it urllib3) and run.
_CHILD = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys\n"
    "from tests.integration.test_tracker import child_main\n"
    "child_main(sys.argv[1])\n"
)


def child_main(arg: str) -> None:
    """Entry point of the monkey-patched child: run one scenario, print its JSON."""
    request = json.loads(arg)
    result = SCENARIOS[request["scenario"]](request["tiers"])
    print(json.dumps(result), flush=True)


def run(name: str, tiers: list[list[str]]) -> dict[str, Any]:
    """Run a scenario: UDP-only ones here, anything with HTTP in a patched child."""
    if all(url.startswith("udp:") for tier in tiers for url in tier):
        return SCENARIOS[name](tiers)
    arg = json.dumps({"scenario": name, "tiers": tiers})
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, arg],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peer(ip: str, port: int) -> list[Any]:
    """A peer as it comes back through JSON (a list) or from in-process (a tuple)."""
    return [ip, port]


def _as_lists(peers: list[Any]) -> list[list[Any]]:
    return [list(p) for p in peers]


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "udp"])
def test_two_announcers_see_each_other(tracker: Opentracker, scheme: str) -> None:
    result = run("pair", [[getattr(tracker, scheme)]])
    assert result["met"], result
    a, b = _as_lists(result["a"]), _as_lists(result["b"])
    assert peer("127.0.0.3", 7002) in a and peer("127.0.0.2", 7001) in b
    # opentracker lists the announcer itself; the Announcer drops its own address
    assert peer("127.0.0.2", 7001) not in a and peer("127.0.0.3", 7002) not in b
    assert not [line for line in result["logs"] if line.startswith(("WARNING", "ERROR"))]


@pytest.mark.parametrize("scheme", ["http", "udp"])
def test_hash_not_on_whitelist_is_a_logged_tracker_error(tracker: Opentracker, scheme: str) -> None:
    url = getattr(tracker, scheme)
    result = run("refused", [[url]])
    assert result["retried"] and result["running"], result
    assert result["calls"] == 0
    failures = [line for line in result["logs"] if line.startswith("WARNING")]
    assert len(failures) >= 2
    expected = "not authorized" if scheme == "http" else "refused"
    assert all(url in line and expected in line for line in failures), failures
    assert "TRACEBACK" not in result["logs"]
    assert url in result["last_error"]


def test_dead_first_tracker_in_tier_falls_over_and_live_one_moves_first(
    tracker: Opentracker,
) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}/announce"
    result = run("failover", [[dead, tracker.http]])
    assert result["ok"], result
    assert result["current"] == tracker.http
    assert result["tiers"] == [[tracker.http, dead]]
    dead_lines = [line for line in result["logs"] if dead in line]
    # tried once; after that the live tracker is first in the tier and answers
    assert len(dead_lines) == 1 and "refused" in dead_lines[0].lower(), result["logs"]


def test_next_tier_only_when_the_whole_tier_fails(tracker: Opentracker) -> None:
    dead1 = f"udp://127.0.0.1:{_dead_port()}"
    dead2 = f"udp://127.0.0.1:{_dead_port()}"
    result = run("failover", [[dead1, dead2], [tracker.udp]])
    assert result["ok"], result
    assert result["current"] == tracker.udp
    # every round starts again with the first tier: both dead ones tried each time
    for dead in (dead1, dead2):
        assert sum(dead in line for line in result["logs"]) >= 3, result["logs"]


def test_stopped_removes_the_peer(tracker: Opentracker) -> None:
    result = run("stopped", [[tracker.http]])
    assert result["met"], result
    assert result["stopped_sent"] == [tracker.http]
    assert not result["a_running"]
    assert result["gone"], result


def test_silent_udp_tracker_times_out_after_retransmits(tracker: Opentracker) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives, never answers
        url = f"udp://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        result = run("failover", [[url], [tracker.udp]])
        elapsed = time.monotonic() - t0
    assert result["ok"] and result["current"] == tracker.udp, result
    lines = [line for line in result["logs"] if url in line]
    assert lines and all("no UDP reply after 2 attempts" in line for line in lines), lines
    # each round waits 0.5 s, retransmits, waits 1.0 s (udp_timeout=0.5, 2 attempts)
    assert elapsed >= 3 * 1.5
