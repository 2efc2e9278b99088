"""Hostile peers against a running daemon's peer port, while apt is being served.

``test_hostile_peer.py`` plays a liar and the codec's limits against the standalone
engine; here the target is the daemon itself (``bin/debtorrent``, one process serving
apt and peers on one gevent hub), with the swarm of a real ``Packages`` index loaded by
``apt-get update`` through it.

Every case runs under :func:`under_attack`: a thread keeps asking the daemon for a cached
``.deb`` meanwhile (each answer must come in under ``PROMPT`` seconds), and the daemon's
VmRSS must not grow by more than ``MAX_RSS_GROWTH``. The connection must be closed, and
the address banned where the design says so: three protocol errors ban an address
(``Session.strike``), bad piece data bans at once (``Swarm.check_piece``). A lost
connection, an unfinished handshake or a handshake for an unknown swarm are not
violations: closed, not counted. Cases that ban use their own 127.0.0.x source address.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from debtorrent.archive.packages import scan_packages
from debtorrent.policy import PeerTimeouts
from debtorrent.torrent import wire
from debtorrent.torrent.layout import Layout
from tests.conftest import require_tools
from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import closed_by_peer, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import FakeSeed, WirePeer, make_peer_id
from tests.fixtures.repo import Repo

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

HANDSHAKE_TIMEOUT = PeerTimeouts().handshake
MiB = 1024 * 1024
PROMPT = 2.0  # seconds an apt request for a cached file may take during an attack
PROBE_TIMEOUT = 5.0
MAX_RSS_GROWTH = 32 * MiB
MAX_PEERS = 20
DAEMON_HOST = "127.0.0.20"
FAST = bytes([0, 0, 0, 0, 0, 0, 0, 0x04])  # reserved bytes with the BEP 6 bit


# ---- the daemon under attack ------------------------------------------------------------------
@dataclass
class Target:
    """The daemon, its swarm, and a cached file to ask for while it is attacked."""

    daemon: Daemon
    mirror: MirrorServer
    repo: Repo
    info_hash: bytes
    num_pieces: int
    layout: Layout
    had_piece: int  # a piece the daemon has (the whole cached .deb)
    had_data: bytes
    probe_path: str

    def rss(self) -> int:
        with open(f"/proc/{self.daemon.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.daemon.pid}/fd"))

    def status(self) -> dict:
        return json.loads(http_get(self.daemon, "/status.json")[1])

    def peer(self, source: str, **kw) -> WirePeer:
        return WirePeer(
            self.daemon.bind, self.daemon.peer_port, source=source, num_pieces=self.num_pieces, **kw
        )

    def full_piece(self) -> int:
        """A piece of the full piece length (a large file's first piece)."""
        return next(
            p
            for p in range(self.num_pieces)
            if self.layout.piece_size(p) == self.layout.piece_length
        )

    def missing_piece(self) -> int:
        return next(p for p in range(self.num_pieces) if p != self.had_piece)


def http_get(daemon: Daemon, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def peer_id() -> bytes:
    return make_peer_id(os.urandom(6).hex().encode())


@pytest.fixture(scope="module")
def target(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One daemon for the module (--max-peers 20), its index loaded by apt-get update."""
    require_tools("apt-get")
    base = tmp_path_factory.mktemp("hostile-peers")
    mirror = MirrorServer(repo.root).start()
    daemon = Daemon(
        base / "daemon",
        bind=DAEMON_HOST,
        name="attacked",
        extra_args=["--state-dir", str(base / "state"), "--max-peers", str(MAX_PEERS)],
    )
    try:
        daemon.start()
        AptClient.path_form(base / "apt", repo, daemon.url, mirror.address).update()
        deb = repo.package("dt-docs")
        probe_path = f"/{mirror.address}/debian/{deb.url_path}"
        status, body = http_get(daemon, probe_path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == deb.sha256
        swarm = json.loads(http_get(daemon, "/status.json")[1])["swarms"][0]
        index = scan_packages(repo.packages_index().read_bytes())
        layout = Layout.file_aligned(index.sizes)
        assert layout.num_pieces == swarm["pieces"]
        (had_piece,) = layout.file_pieces(index.positions[deb.filename])
        deadline = time.monotonic() + 5
        while json.loads(http_get(daemon, "/status.json")[1])["swarms"][0]["pieces_had"] < 1:
            assert time.monotonic() < deadline, "the cached .deb is not seeded"
            time.sleep(0.05)
        yield Target(
            daemon=daemon,
            mirror=mirror,
            repo=repo,
            info_hash=bytes.fromhex(swarm["info_hash"]),
            num_pieces=swarm["pieces"],
            layout=layout,
            had_piece=had_piece,
            had_data=deb.path.read_bytes(),
            probe_path=probe_path,
        )
    finally:
        daemon.stop()
        mirror.stop()


@pytest.fixture(autouse=True)
def _report_daemon_log(request: pytest.FixtureRequest, target: Target) -> None:
    request.node.dt_daemons = [target.daemon]  # log tail in the report of a failing test


# ---- watching the daemon while it is attacked -----------------------------------------------
class Prober(threading.Thread):
    """Asks for the cached .deb over and over (a new connection each time), timing it."""

    def __init__(self, target: Target, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.every = every
        self.stopping = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.rss0 = 0

    def run(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                status, body = http_get(self.target.daemon, self.target.probe_path, PROBE_TIMEOUT)
                if status != 200 or body != self.target.had_data:
                    self.errors.append(f"status {status}, {len(body)} bytes")
            except OSError as exc:
                self.errors.append(f"{exc!r} after {time.monotonic() - t0:.1f} s")
            self.latencies.append(time.monotonic() - t0)
            if self.stopping.wait(self.every):
                return

    def stop(self) -> None:
        deadline = time.monotonic() + 15
        while not self.latencies and time.monotonic() < deadline:
            time.sleep(0.01)  # at least one answer during the attack
        self.stopping.set()
        self.join(timeout=15)


@contextmanager
def under_attack(target: Target, what: str) -> Iterator[Prober]:
    """Probe apt and measure RSS around an attack; assert the daemon took it well."""
    assert target.daemon.running
    prober = Prober(target)
    prober.rss0 = target.rss()
    prober.start()
    try:
        yield prober
    finally:
        prober.stop()
    rss1 = target.rss()
    worst = max(prober.latencies)
    print(
        f"{what}: {len(prober.latencies)} apt requests meanwhile, slowest {worst:.3f} s, "
        f"{len(prober.errors)} failed; RSS {prober.rss0 / MiB:.1f} -> {rss1 / MiB:.1f} MiB"
    )
    assert target.daemon.running, f"the daemon died under {what}"
    assert rss1 - prober.rss0 < MAX_RSS_GROWTH, (
        f"RSS grew by {(rss1 - prober.rss0) / MiB:.1f} MiB under {what}"
    )
    assert not prober.errors, f"apt requests failed under {what}: {prober.errors[:5]}"
    assert worst < PROMPT, f"an apt request took {worst:.2f} s under {what}"


def banned(target: Target, source: str) -> bool:
    """A new connection from ``source`` is closed without the daemon's handshake."""
    with target.peer(source) as p:
        try:
            p.handshake(target.info_hash, peer_id(), wait=False)
            return p.closed_by_remote(5.0) and p.remote_handshake is None
        except OSError:
            return True


def handshaken(target: Target, source: str, reserved: bytes = b"\0" * 8) -> WirePeer:
    p = target.peer(source)
    assert p.handshake(target.info_hash, peer_id(), reserved) is not None, "no handshake"
    return p


def connections_drop_to_zero(target: Target, timeout: float = 5.0) -> None:
    wait_until(lambda: target.status()["connections"] == 0, timeout, "connections closed")


# ---- protocol violations: each closes the connection; the third bans the address ------------
def _violations() -> dict[str, Callable[[Target], bytes]]:
    def bitfield(t: Target, length: int, last: int = 0) -> bytes:
        bits = bytearray(length)
        if bits:
            bits[-1] = last
        return wire.encode(wire.Bitfield(bytes(bits)))

    nbytes = lambda t: (t.num_pieces + 7) // 8  # noqa: E731
    return {
        "length prefix 2^32-1": lambda t: b"\xff\xff\xff\xff" + b"\0" * 64,
        "message longer than the limit": lambda t: (
            struct.pack(">IB", wire.MAX_MESSAGE_LEN + 1, 20) + b"\0" * 65536
        ),
        "bitfield one byte short": lambda t: bitfield(t, nbytes(t) - 1),
        "bitfield one byte long": lambda t: bitfield(t, nbytes(t) + 1),
        "bitfield with spare bits set": lambda t: bitfield(t, nbytes(t), last=0x01),
        "have for a piece that does not exist": lambda t: wire.encode(wire.Have(t.num_pieces)),
        "have for piece 2^32-1": lambda t: wire.encode(wire.Have(2**32 - 1)),
        "request beyond the end of a piece": lambda t: wire.encode(
            wire.Request(t.full_piece(), t.layout.piece_length - 1000, 16384)
        ),
        "request beyond the end of the short last piece": lambda t: wire.encode(
            wire.Request(t.num_pieces - 1, 0, t.layout.piece_size(t.num_pieces - 1) + 1)
        ),
        "request larger than the block limit": lambda t: wire.encode(
            wire.Request(t.full_piece(), 0, wire.MAX_REQUEST_LEN + 1)
        ),
        "request for a piece that does not exist": lambda t: wire.encode(
            wire.Request(t.num_pieces, 0, 16384)
        ),
    }


VIOLATIONS = _violations()


@pytest.mark.parametrize("what", list(VIOLATIONS))
def test_protocol_violation_closes_and_three_ban(target: Target, what: str) -> None:
    source = f"127.0.0.{100 + list(VIOLATIONS).index(what)}"
    payload = VIOLATIONS[what](target)
    errors0 = target.status()["totals"]["protocol_errors"]
    with under_attack(target, what):
        for attempt in range(3):
            with handshaken(target, source) as p:
                p.send(payload)
                assert p.closed_by_remote(5.0), f"{what}: connection {attempt + 1} left open"
        wait_until(
            lambda: f"banned peer {source}" in target.daemon.log_text(), 5, f"{source} banned"
        )
        assert banned(target, source), f"{what}: {source} can still connect"
    assert target.status()["totals"]["protocol_errors"] >= errors0 + 3
    connections_drop_to_zero(target)


# ---- not violations: closed (or ignored), never counted -----------------------------------
def test_truncated_messages_then_close_are_not_struck(target: Target) -> None:
    """Half a message, then the peer goes away: a lost connection, not an offence."""
    source = "127.0.0.130"
    errors0 = target.status()["totals"]["protocol_errors"]
    with under_attack(target, "truncated messages"):
        for cut in (
            wire.encode(wire.Request(target.had_piece, 0, 1024))[:7],
            struct.pack(">IB", 512 * 1024, 7) + b"\0" * 200_000,  # half of a big piece
            wire.encode(wire.Bitfield(b"\0" * ((target.num_pieces + 7) // 8)))[:-1],
            b"\0\0",
        ):
            with handshaken(target, source) as p:
                p.send(cut)
                p.sock.shutdown(socket.SHUT_WR)
                assert p.closed_by_remote(5.0), "connection left open after the peer's FIN"
        # a truncated handshake too
        with target.peer(source) as p:
            p.send(wire.encode(wire.Handshake(target.info_hash, peer_id(), b"\0" * 8))[:40])
            p.sock.shutdown(socket.SHUT_WR)
            assert p.closed_by_remote(5.0)
    connections_drop_to_zero(target)
    assert target.status()["totals"]["protocol_errors"] == errors0
    assert f"banned peer {source}" not in target.daemon.log_text()
    with handshaken(target, source):
        pass


def test_wrong_info_hash_is_closed_and_not_banned(target: Target) -> None:
    source = "127.0.0.131"
    with under_attack(target, "handshakes for an unknown swarm"):
        for _ in range(5):
            with target.peer(source) as p:
                other = hashlib.sha1(os.urandom(8)).digest()
                p.handshake(other, peer_id(), wait=False)
                assert p.closed_by_remote(3.0), "handshake for an unknown swarm left open"
                assert p.remote_handshake is None, "answered a handshake for another swarm"
    assert f"banned peer {source}" not in target.daemon.log_text()
    with handshaken(target, source):
        pass


def test_requests_for_pieces_it_lacks_get_nothing_and_real_ones_are_served(
    target: Target,
) -> None:
    """Unchoked, a request for a piece the daemon lacks is rejected (BEP 6), not served
    and not an offence; on the same connection a request for its piece gets real bytes."""
    source = "127.0.0.132"
    with under_attack(target, "requests for pieces it does not have"):
        with handshaken(target, source, FAST) as p:
            p.send(wire.Interested())
            p.wait_for(wire.Unchoke, timeout=15)
            missing = target.missing_piece()
            p.send(wire.Request(missing, 0, min(16384, target.layout.piece_size(missing))))
            reject = p.wait_for(wire.RejectRequest, timeout=5)
            assert reject.index == missing
            size = len(target.had_data)
            p.send(wire.Request(target.had_piece, 0, size))
            piece = p.wait_for(wire.Piece, timeout=5)
            assert (piece.index, piece.begin, piece.block) == (
                target.had_piece,
                0,
                target.had_data,
            )
            assert not any(isinstance(m, wire.Piece) and m.index == missing for m in p.received), (
                "sent data for a piece it does not have"
            )
            assert not p.eof
    assert f"banned peer {source}" not in target.daemon.log_text()


FLOOD_BYTES = 16 * MiB  # about a million requests
FLOOD_SECONDS = 4.0


def _flood(p: WirePeer, request: bytes, total: int, seconds: float = 60.0) -> int:
    """Send ``request`` messages without reading, until ``total`` bytes are sent or
    ``seconds`` have passed; the bytes sent (the daemon's reading paces the sender)."""
    chunk = request * (65536 // len(request))
    sent = 0
    deadline = time.monotonic() + seconds
    p.sock.settimeout(30)
    try:
        while sent < total and time.monotonic() < deadline:
            p.sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the daemon may close a flooder: also fine
    return sent


def _caught_up(target: Target, timeout: float = 60.0) -> None:
    """Wait until the daemon answers promptly again (it has read all it was sent)."""

    def prompt() -> bool:
        t0 = time.monotonic()
        try:
            http_get(target.daemon, "/status.json", timeout=PROMPT)
        except OSError:
            return False
        return time.monotonic() - t0 < PROMPT / 4

    wait_until(prompt, timeout, "the daemon answers promptly again")


def test_flood_of_requests_while_choked(target: Target) -> None:
    """Requests as fast as the daemon reads them for 4 s, never interested, so never
    unchoked: no data, memory flat, and apt still served.

    Regression (fixed): apt requests time out (> 5 s) during the flood. The
    peer's reader greenlet (``PeerConnection._reader``) loops on ``sock.recv`` and
    decodes without ever yielding to the hub while the socket has data (gevent's recv
    only switches when it would block), so one peer sending faster than the daemon
    decodes (~1.5 MB/s of requests here) starves every other greenlet: the apt side,
    other peers, the choker.
    """
    source = "127.0.0.133"
    try:
        with under_attack(target, "a flood of requests while choked (plain BEP 3)"):
            with handshaken(target, source) as p:
                t0 = time.monotonic()
                request = wire.encode(wire.Request(target.had_piece, 0, 1024))
                sent = _flood(p, request, 4 * FLOOD_BYTES, FLOOD_SECONDS)
                print(f"flood: {sent / MiB:.1f} MiB of requests in {time.monotonic() - t0:.1f} s")
                p.closed_by_remote(1.0)  # read what came back
                assert not any(isinstance(m, wire.Piece) for m in p.received), "sent data"
    finally:
        _caught_up(target)
    connections_drop_to_zero(target)


def test_flood_of_requests_while_choked_with_the_fast_extension(target: Target) -> None:
    """The same flood from a peer that negotiated BEP 6 and never reads its socket.

    Regression (fixed): every request from a choked fast peer is answered
    with a reject request (``PeerConnection._on_request`` -> ``send(RejectRequest)``),
    queued without limit in ``PeerConnection._out`` while the writer is blocked on the
    full socket; ``MAX_QUEUED_REQUESTS`` only limits requests while unchoked. Measured:
    RSS grows ~4 MB for each MB of requests, for as long as the peer keeps sending
    (the writer's 120 s send timeout is the only bound). This test also meets the
    starvation of the plain flood test; the memory check comes first.
    """
    source = "127.0.0.134"
    try:
        with under_attack(target, "a flood of requests while choked (BEP 6)") as prober:
            with handshaken(target, source, FAST) as p:
                t0 = time.monotonic()
                request = wire.encode(wire.Request(target.had_piece, 0, 1024))
                sent = _flood(p, request, FLOOD_BYTES)
                print(f"flood: {sent / MiB:.1f} MiB of requests in {time.monotonic() - t0:.1f} s")
                _caught_up(target)  # everything sent is read; the connection is still open
                growth = target.rss() - prober.rss0
                print(f"RSS growth with the flooder still connected: {growth / MiB:.1f} MiB")
                assert growth < MAX_RSS_GROWTH, (
                    f"RSS grew by {growth / MiB:.1f} MiB for {sent / MiB:.1f} MiB of requests"
                )
                p.closed_by_remote(1.0)
                assert not any(isinstance(m, wire.Piece) for m in p.received), "sent data"
    finally:
        _caught_up(target)
    connections_drop_to_zero(target)


# ---- handshakes that never complete -----------------------------------------------------------
SLOWLORIS = 300


def test_slowloris_half_handshakes_are_closed_after_the_handshake_timeout(
    target: Target,
) -> None:
    """Hundreds of sockets send half a handshake and stop: each is closed after
    HANDSHAKE_TIMEOUT (10 s), none earlier than that, and apt is served meanwhile."""
    half = wire.encode(wire.Handshake(target.info_hash, peer_id(), b"\0" * 8))[:30]
    socks: list[socket.socket] = []
    fds0 = target.fds()
    try:
        with under_attack(target, f"{SLOWLORIS} half handshakes"):
            t0 = time.monotonic()
            for i in range(SLOWLORIS):
                s = socket.create_connection(
                    (target.daemon.bind, target.daemon.peer_port),
                    timeout=5,
                    source_address=(f"127.0.0.{140 + i % 20}", 0),
                )
                s.sendall(half)
                socks.append(s)
            # the daemon accepted every one (a descriptor each) before any is judged
            fds = wait_until(
                lambda: (n := target.fds()) >= fds0 + SLOWLORIS and n,
                HANDSHAKE_TIMEOUT / 2,
                "every half handshake accepted",
            )
            early = closed_by_peer(socks)
            print(f"{fds} descriptors open in the daemon with {SLOWLORIS} half handshakes")
            assert early == 0, f"{early} half handshakes closed before the timeout"
            deadline = t0 + HANDSHAKE_TIMEOUT + 5
            while (closed := closed_by_peer(socks)) < len(socks):
                assert time.monotonic() < deadline, (
                    f"only {closed} of {len(socks)} half handshakes closed after "
                    f"{time.monotonic() - t0:.1f} s"
                )
                time.sleep(0.2)
            print(f"all closed {time.monotonic() - t0:.1f} s after the first one opened")
    finally:
        for s in socks:
            s.close()


def test_trickled_handshake_is_closed_after_the_handshake_timeout(target: Target) -> None:
    """A handshake sent one byte a second never completes within HANDSHAKE_TIMEOUT.

    Regression (fixed): the handshake timeout is a per-recv socket timeout
    (``Session._accept``: ``sock.settimeout(HANDSHAKE_TIMEOUT)`` then ``recv`` in a loop),
    so every byte restarts it: a peer sending one byte every 9 s holds the socket (and
    a greenlet) for ~10 minutes without ever completing the 68-byte handshake, and
    the connection counts against no cap.
    """
    hs = wire.encode(wire.Handshake(target.info_hash, peer_id(), b"\0" * 8))
    with under_attack(target, "a handshake trickled a byte a second"):
        with target.peer("127.0.0.160") as p:
            t0 = time.monotonic()
            closed = False
            for i in range(int(HANDSHAKE_TIMEOUT) + 4):
                try:
                    p.send(hs[i : i + 1])
                except OSError:
                    closed = True
                    break
                if p.closed_by_remote(1.0):
                    closed = True
                    break
            elapsed = time.monotonic() - t0
            assert closed, f"unfinished handshake still open after {elapsed:.1f} s"
            assert p.remote_handshake is None


# ---- a burst of 1,000 connection attempts against --max-peers 20 ----------------------------
def test_burst_of_1000_connections_the_caps_hold(target: Target) -> None:
    hs = [wire.encode(wire.Handshake(target.info_hash, peer_id(), b"\0" * 8)) for _ in range(1000)]
    socks: list[socket.socket] = []
    refused = 0
    seen = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(target.status()["connections"])
            except OSError:
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with under_attack(target, "1,000 connections in a burst"):
            watcher.start()
            for i, data in enumerate(hs):
                try:
                    s = socket.create_connection(
                        (target.daemon.bind, target.daemon.peer_port),
                        timeout=5,
                        source_address=(f"127.0.0.{170 + i % 40}", 0),
                    )
                    s.sendall(data)
                    socks.append(s)
                except OSError:
                    refused += 1

            # the daemon answers the handshake of the admitted ones and closes the rest:
            # settled once every socket still open is a connection the status counts
            def settled() -> bool:
                kept = len(socks) - closed_by_peer(socks)
                return kept == target.status()["connections"]

            wait_until(settled, 15, "every connection admitted or closed", every=0.2)
            kept = len(socks) - closed_by_peer(socks)
            status = target.status()
            stop.set()
            watcher.join(timeout=5)
            print(
                f"burst: {len(socks)} connected, {refused} failed to connect, {kept} kept open; "
                f"status connections max {max(seen)}, now {status['connections']}"
            )
            assert max(seen) <= MAX_PEERS, f"{max(seen)} connections > --max-peers {MAX_PEERS}"
            assert status["connections"] <= MAX_PEERS
            assert kept <= MAX_PEERS, f"{kept} sockets kept open > --max-peers {MAX_PEERS}"
            assert kept >= 1, "no connection admitted at all"
    finally:
        stop.set()
        for s in socks:
            s.close()
    connections_drop_to_zero(target, timeout=10)


# ---- bad data: the sender is banned at once, apt still gets the right file ----------------------
def test_wrong_block_data_bans_the_sender_and_apt_gets_the_right_file(
    target: Target, repo: Repo, tmp_path: Path
) -> None:
    """A second daemon has the liar as its only --peer; apt asks it for a one-piece
    .deb (verifiable by the index SHA256): the liar's piece fails, the liar is banned
    at once (no three strikes), and the file comes from the mirror, intact."""
    liar_host = "127.0.0.161"
    fake = FakeSeed(
        target.info_hash,
        target.num_pieces,
        lambda index, begin, length: b"\x5a" * length,
        host=liar_host,
    ).start()
    leech = Daemon(
        tmp_path / "leech",
        bind="127.0.0.21",
        name="leech",
        extra_args=["--state-dir", str(tmp_path / "state"), "--peer", fake.address],
    )
    try:
        leech.start()
        AptClient.path_form(tmp_path / "apt", repo, leech.url, target.mirror.address).update()
        wait_until(lambda: fake.handshakes >= 1, 10, "the leech dials the liar")
        deb = repo.package("dt-tool")
        status, body = http_get(leech, f"/{target.mirror.address}/debian/{deb.url_path}", 30)
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == deb.sha256, "apt got the liar's bytes"
        log = leech.log_text()
        assert fake.blocks_sent >= 1, "the liar was never asked for data"
        assert f"banned peer {liar_host}" in log
        assert "failed verification" in log
        wait_until(lambda: fake.closed_by_remote >= 1, 5, "the liar's connection closed")
        assert not fake.errors, fake.errors
    finally:
        leech.stop()
        fake.stop()
