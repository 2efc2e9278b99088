"""Local service discovery (BEP 14) on the test LAN: network namespaces on one bridge.

Daemons run inside LAN hosts with the built-in discovery defaults (LSD, the DHT with its
default bootstrap names, PEX), as a package install has them: in a test-LAN host nothing
can leave (no default route, no reachable name server, multicast only on the bridge).
The test process is the LAN's controller (``.1``): apt runs there, and the mirror runs
in a host of its own. Root only; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from debtorrent.torrent import lsd, wire
from debtorrent.torrent.metainfo import create_torrent
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import sha256_file, wait_until
from tests.fixtures.ltnode import LtNode
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.netns import Host, TestLan
from tests.fixtures.peer import Standalone, WirePeer, make_peer_id
from tests.fixtures.repo import Repo

pytestmark = pytest.mark.root

APT_PORT, PEER_PORT = 9988, 9989  # the defaults: every host is a machine of its own


def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=5) as r:
        return json.loads(r.read())


def logs(*daemons: Daemon) -> str:
    return "\n".join(f"===== {d.name}\n{d.log_tail(40)}" for d in daemons)


@pytest.fixture
def lan_setup(request, lan_factory, repo: Repo, tmp_path: Path):
    """``lan_setup(hosts) -> (lan, mirror, start_daemon)``; everything stopped at the end."""
    started: list[Daemon] = []
    mirrors: list[MirrorServer] = []
    request.node.dt_daemons = started

    def make(hosts: int) -> tuple[TestLan, MirrorServer, callable]:
        lan = lan_factory(hosts)
        with lan.mirror.inside():
            mirror = MirrorServer(repo.root, host=lan.mirror.address).start()
        mirrors.append(mirror)

        def start_daemon(host: Host, *extra: str) -> Daemon:
            d = Daemon(
                tmp_path / host.name,
                bind=host.address,
                port=APT_PORT,
                peer_port=PEER_PORT,
                extra_args=["--allowed-clients", lan.controller, *extra],
                name=host.name,
                wrap=host.wrap,
            )
            started.append(d)
            return d.start(timeout=20)

        return lan, mirror, start_daemon

    yield make
    for d in started:
        d.stop()
    for m in mirrors:
        m.stop()


# --- the LAN itself ------------------------------------------------------------------------------


def test_the_test_lan_carries_multicast_routes_nothing_out_and_leaves_nothing(lan_factory):
    lan = lan_factory(2, rate="50mbit")
    a, b = lan.hosts
    assert a.run(["ip", "route"]).stdout.count("default") == 0
    qdisc = a.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert "netem" in qdisc or "tbf" in qdisc, qdisc
    with b.inside():
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        receiver.bind((lsd.GROUP4, lsd.LSD_PORT))
        group = socket.inet_aton(lsd.GROUP4) + socket.inet_aton(b.address)
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        receiver.settimeout(5)
    with a.inside():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((a.address, 0))
        outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sender.sendto(b"hello", (lsd.GROUP4, lsd.LSD_PORT))
        assert receiver.recvfrom(100) == (b"hello", (a.address, sender.getsockname()[1]))
        with pytest.raises(OSError):  # ENETUNREACH: no route off the LAN
            outside.sendto(b"x", ("192.0.2.1", 9))
    finally:
        for s in (receiver, sender, outside):
            s.close()
    lan.close()
    assert lan.leftovers() == []


# --- daemons ------------------------------------------------------------------------------------


def test_daemons_find_each_other_on_the_lan_with_no_configuration(
    repo: Repo, lan_setup, apt_factory
) -> None:
    """Three daemons as installed (no tracker, no peer): LSD connects them, and a package
    the first fetched comes to the two others from the LAN, not the mirror."""
    lan, mirror, start = lan_setup(3)
    daemons = [start(h) for h in lan.hosts]
    clients = [apt_factory.path_form(d, mirror) for d in daemons]
    for client in clients:
        client.update()
    try:
        wait_until(
            lambda: all(status(d)["connections"] >= 2 for d in daemons),
            30,
            "every daemon connected to the two others",
            every=0.2,
        )
    except TimeoutError:
        raise AssertionError(logs(*daemons)) from None
    sources = [status(d)["discovery"] for d in daemons]
    assert all(s["enabled"] == ["lsd", "dht", "pex"] for s in sources)
    assert sum(s["peers_by_source"]["lsd"] for s in sources) >= 3, sources
    assert all(s["lsd"]["interfaces"] == ["eth0"] for s in sources)
    clients[0].install_download_only("dt-medium")
    for client in clients[1:]:
        client.install_download_only("dt-medium")
    medium = repo.package("dt-medium")
    assert mirror.bytes_sent(f"/debian/{medium.filename}") == medium.size
    got = [status(d)["totals"]["bytes_from_peers"] for d in daemons[1:]]
    assert sum(got) >= 2 * medium.size, got


def test_hostile_and_flooding_lsd_packets_cost_little(repo: Repo, lan_setup, apt_factory) -> None:
    """Garbage, announces from outside the LAN, and a flood naming 50 ports of one host:
    the daemon stays up, counts them, dials a handful, and its memory barely moves."""
    lan, mirror, start = lan_setup(2)
    target, attacker = lan.hosts
    d = start(target)
    apt_factory.path_form(d, mirror).update()
    info_hash = bytes.fromhex(status(d)["swarms"][0]["info_hash"])
    attacker.run(["ip", "addr", "add", "203.0.113.5/32", "dev", "eth0"]).check_returncode()
    # the target can reach that address (so only the source check keeps it from dialling)
    target.run(["ip", "route", "add", "203.0.113.5/32", "dev", "eth0"]).check_returncode()
    # a hundred more addresses of the LAN's /24 (unused by the hosts): many "machines"
    prefix = attacker.address.rsplit(".", 1)[0]
    many = [f"{prefix}.{100 + i}" for i in range(100)]
    for address in many:
        attacker.run(["ip", "addr", "add", f"{address}/32", "dev", "eth0"]).check_returncode()
    with attacker.inside():
        listeners = [socket.create_server((attacker.address, 0)) for _ in range(50)]
        decoy = socket.create_server(("203.0.113.5", 0))  # named only from outside
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((attacker.address, 0))
        outsider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        outsider.bind(("203.0.113.5", 0))
        crowd = []
        for address in many:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, 0))
            crowd.append(s)
    group = (lsd.GROUP4, lsd.LSD_PORT)
    rss_before = _rss(d.pid)
    try:
        for s in (sender, outsider, *crowd):
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            s.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(attacker.address)
            )
        garbage = [b"", b"\xff" * 1500, b"BT-SEARCH * HTTP/1.1\r\nPort: 0\r\n\r\n", b"x" * 1400]
        for data in garbage * 5:
            sender.sendto(data, group)
        for packet in lsd.announce_packets([info_hash], decoy.getsockname()[1], "out"):
            outsider.sendto(packet, group)
        ports = [s.getsockname()[1] for s in listeners]
        for i in range(2000):
            port = ports[i % len(ports)]
            sender.sendto(lsd.announce_packets([info_hash], port, f"f{i}")[0], group)
            if i % 50 == 49:
                time.sleep(0.02)  # a socket buffer holds ~150 of these: a flood, not a burst
        rng = random.Random(5)
        for i in range(5000):  # swarms we do not have, from a crowd: remembered, boundedly
            hashes = [rng.randbytes(20) for _ in range(25)]
            crowd[i % len(crowd)].sendto(lsd.announce_packets(hashes, 1000 + i, "m")[0], group)
            if i % 50 == 49:
                time.sleep(0.02)
        accepted = _accepted(listeners, settle=3.0)
        from_outside = _accepted([decoy], settle=0.5)
        _settled(lambda: status(d)["discovery"]["lsd"]["received"])
    finally:
        for s in (*listeners, decoy, sender, outsider, *crowd):
            s.close()
    snap = status(d)["discovery"]["lsd"]
    print(
        f"hostile LSD: {snap}, connections accepted {accepted}, RSS {rss_before} -> {_rss(d.pid)}"
    )
    assert snap["received"] >= 3000
    assert snap["malformed"] >= 10
    assert snap["dropped"] >= 1000  # the outsider's and the flood over the limits
    assert 1 <= accepted <= lsd.Intake.per_source_burst + 4
    assert from_outside == 0  # 203.0.113.5 is not on this LAN: its announce was dropped
    assert _rss(d.pid) - rss_before < 8 * 1024 * 1024
    assert d.running


def _rss(pid: int | None) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _settled(read, quiet: float = 1.0, limit: float = 30.0) -> int:
    """The value of ``read()`` once it stopped changing for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def _accepted(listeners: list[socket.socket], settle: float) -> int:
    """Connections the daemon opened to the attacker's ports, until none comes for
    ``settle`` seconds."""
    for s in listeners:
        s.setblocking(False)
    count, quiet_since = 0, time.monotonic()
    while time.monotonic() - quiet_since < settle:
        for s in listeners:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.close()
            count += 1
            quiet_since = time.monotonic()
        time.sleep(0.05)
    return count


def test_swarm_key_members_meet_and_an_eavesdropper_on_the_lan_gets_nothing(
    repo: Repo, lan_setup, apt_factory, tmp_path: Path
) -> None:
    """A and B hold the key, C does not: A and B meet through LSD; C hears their
    announces and never connects; an eavesdropper who takes the keyed info hash from an
    announce gets no bitfield and no piece."""
    lan, mirror, start = lan_setup(4)
    key = tmp_path / "fleet.key"
    key.write_text("the fleet's secret: 0123456789abcdef\n")
    a = start(lan.hosts[0], "--swarm-key", str(key))
    b = start(lan.hosts[1], "--swarm-key", str(key))
    c = start(lan.hosts[2])
    eavesdropper = lan.hosts[3]
    with eavesdropper.inside():
        ear = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ear.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ear.bind((lsd.GROUP4, lsd.LSD_PORT))
        mreq = socket.inet_aton(lsd.GROUP4) + socket.inet_aton(eavesdropper.address)
        ear.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        ear.settimeout(30)
    try:
        clients = [apt_factory.path_form(d, mirror) for d in (a, b, c)]
        for client in clients:
            client.update()
        wait_until(lambda: status(a)["connections"] >= 1, 30, "A and B connected", every=0.2)
        clients[0].install_download_only("dt-medium")
        clients[1].install_download_only("dt-medium")
        clients[2].install_download_only("dt-medium")
        size = repo.total_size({"dt-medium", "dt-base"})
        assert status(b)["totals"]["bytes_from_peers"] == size
        assert status(c)["totals"]["bytes_from_peers"] == 0
        wait_until(lambda: status(c)["discovery"]["lsd"]["received"] >= 2, 30, "C heard them")
        assert status(c)["connections"] == 0
        heard = None
        while heard is None:
            data, (ip, _port) = ear.recvfrom(2000)
            if ip == a.bind:
                heard = lsd.parse_announce(data)
    finally:
        ear.close()
    keyed = status(a)["swarms"][0]["info_hash"]
    assert heard.info_hashes[0].hex() == keyed != status(c)["swarms"][0]["info_hash"]
    with eavesdropper.inside():
        intruder = WirePeer(a.bind, heard.port, timeout=20)
    with intruder:
        intruder.handshake(heard.info_hashes[0], make_peer_id(b"eaves"), bytes(8))
        try:
            intruder.send(wire.Interested(), wire.Request(0, 0, 16384))
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed: it cannot prove the key without the extension protocol
        assert intruder.closed_by_remote(15)
        assert {type(m).__name__ for m in intruder.received} <= {"KeepAlive"}
    assert status(a)["swarms"][0]["peer_list"][0]["address"].startswith(b.bind)
    assert status(c)["connections"] == 0


# --- libtorrent ---------------------------------------------------------------------------------


@pytest.fixture
def v1_torrent(tmp_path: Path):
    """A standard v1 torrent of three files (1.5 MiB) and its content in ``seed/``."""
    seed = tmp_path / "seed"
    src = seed / "lsd-interop"
    src.mkdir(parents=True)
    rng = random.Random(14)
    for name, size in (("a.bin", 1_000_000), ("b.bin", 500_000), ("c.txt", 77)):
        (src / name).write_bytes(rng.randbytes(size))
    torrent = tmp_path / "lsd-interop.torrent"
    torrent.write_bytes(create_torrent(src, piece_length=65536))
    return torrent, seed


def _same_content(a: Path, b: Path) -> None:
    for f in sorted(a.rglob("*")):
        if f.is_file():
            assert sha256_file(b / f.relative_to(a)) == sha256_file(f), f.name


def test_debtorrent_hears_libtorrents_lsd_announces(lan_factory, v1_torrent, tmp_path):
    pytest.importorskip("libtorrent")
    torrent, seed = v1_torrent
    lan = lan_factory(2)
    lt_host, dt_host = lan.hosts
    lt = LtNode(
        tmp_path / "lt",
        f"{lt_host.address}:6881",
        wrap=lt_host.wrap,
        lsd=True,
        torrent=torrent,
        save=seed,
    )
    dt = Standalone(
        tmp_path / "dt",
        torrent,
        tmp_path / "dt-dir",
        bind=dt_host.address,
        discovery="lsd",
        wrap=dt_host.wrap,
        name="dt-leech",
    )
    try:
        lt.wait_line("complete", 20)
        dt.start()
        dt.wait_complete(60)
        lt.wait_line(f"peer {dt_host.address}:", 10)
    finally:
        dt.stop()
        lt.stop()
    _same_content(seed, tmp_path / "dt-dir")


def test_libtorrent_hears_debtorrents_lsd_announces(lan_factory, v1_torrent, tmp_path):
    pytest.importorskip("libtorrent")
    torrent, seed = v1_torrent
    lan = lan_factory(2)
    dt_host, lt_host = lan.hosts
    dt = Standalone(
        tmp_path / "dt",
        torrent,
        seed,
        bind=dt_host.address,
        discovery="lsd",
        wrap=dt_host.wrap,
        name="dt-seed",
    )
    dt.start()
    try:
        dt.wait_complete(20)  # the seed's own pieces verified
        lt = LtNode(
            tmp_path / "lt",
            f"{lt_host.address}:6881",
            wrap=lt_host.wrap,
            lsd=True,
            torrent=torrent,
            save=tmp_path / "lt-dir",
        )
        try:
            lt.wait_line("complete", 90)
            lt.wait_line(f"peer {dt_host.address}:", 5)
        finally:
            lt.stop()
    finally:
        dt.stop()
    _same_content(seed, tmp_path / "lt-dir")


def test_lsd_over_ipv6_between_debtorrents(lan_factory, v1_torrent, tmp_path):
    """A seed listening on every address (``::``) and a downloader bound to its
    unique-local IPv6 address only: they meet through ff15::efc0:988f alone."""
    torrent, seed = v1_torrent
    lan = lan_factory(2)
    seed_host, leech_host = lan.hosts
    seeder = Standalone(
        tmp_path / "v6-seed-work",
        torrent,
        seed,
        bind="::",
        discovery="lsd",
        wrap=seed_host.wrap,
        name="v6-seed",
        extra=["--log-level", "debug"],
    )
    leech = Standalone(
        tmp_path / "v6-leech-work",
        torrent,
        tmp_path / "leech-dir",
        bind=leech_host.address6,
        discovery="lsd",
        wrap=leech_host.wrap,
        name="v6-leech",
        extra=["--log-level", "debug"],
    )
    seeder.start()
    try:
        seeder.wait_complete(20)
        leech.start()
        leech.wait_complete(60)
    finally:
        leech.stop()
        seeder.stop()
    _same_content(seed, tmp_path / "leech-dir")
    heard = [
        line for line in seeder.log_text().splitlines() if "LSD: " in line and "announces" in line
    ]
    assert heard and all(leech_host.address6 in line for line in heard), heard
