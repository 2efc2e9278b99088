"""Discovery between daemons on loopback: no listening without a way in, PEX, swarm keys.

Multicast (LSD) needs the test LAN: see test_discovery_lan.py. Here every daemon runs
with ``--discovery pex`` or ``none`` (the fixture's default is ``pex``), so nothing
leaves 127.0.0.0/8.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from debtorrent.torrent import wire
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import wait_until
from tests.fixtures.net import free_port, loopback_aliases_usable, port_open
from tests.fixtures.peer import WirePeer, make_peer_id
from tests.fixtures.repo import Repo

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)


def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=5) as r:
        return json.loads(r.read())


def totals(d: Daemon) -> dict:
    return status(d)["totals"]


def logs(*daemons: Daemon) -> str:
    return "\n".join(f"===== {d.name}\n{d.log_tail(40)}" for d in daemons)


def test_no_discovery_no_tracker_no_peer_means_no_listening_port(daemon_factory) -> None:
    d = daemon_factory("--discovery", "none", bind="127.0.0.61")
    snap = status(d)
    assert snap["peer_port"] is None
    assert not port_open("127.0.0.61", d.peer_port)
    assert snap["discovery"]["enabled"] == []
    assert snap["discovery"]["hint"].startswith("No discovery is enabled")
    assert "the peer port stays closed" in d.log_text()
    # the same daemon with only a static peer listens again
    d.restart(["--discovery", "none", "--peer", "127.0.0.62:9"])
    assert port_open("127.0.0.61", d.peer_port)
    assert status(d)["peer_port"] == d.peer_port


def test_peer_exchange_introduces_peers_to_each_other(
    repo: Repo, mirror, daemon_factory, apt_factory
) -> None:
    """B and C only know A; A tells each about the other (ut_pex) and they connect."""
    a = daemon_factory(bind="127.0.0.63")
    b = daemon_factory("--peer", a.peer_address, bind="127.0.0.64")
    c = daemon_factory("--peer", a.peer_address, bind="127.0.0.65")
    for d in (a, b, c):
        apt_factory.path_form(d, mirror).update()
    try:
        wait_until(
            lambda: all(status(d)["connections"] >= 2 for d in (a, b, c)),
            60,
            "B and C connected through PEX",
            every=0.5,
        )
    except TimeoutError:
        raise AssertionError(logs(a, b, c)) from None
    by_b, by_c = (status(d)["discovery"] for d in (b, c))
    assert by_b["peers_by_source"]["pex"] + by_c["peers_by_source"]["pex"] == 1
    assert by_b["addresses_learnt"]["pex"] + by_c["addresses_learnt"]["pex"] >= 1
    assert status(a)["discovery"]["pex"]["sent"] >= 2


# --- swarm keys -------------------------------------------------------------------------------


def key_file(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    return str(path)


def test_a_daemon_without_the_swarm_key_never_receives_a_piece(
    repo: Repo, mirror, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    """A and B share a key; C has none and D another one, all told of A as a static
    peer. B gets the package from A; C and D never connect and fetch from the mirror."""
    key = key_file(tmp_path / "fleet.key", "a secret of the fleet, 32 bytes+")
    other = key_file(tmp_path / "other.key", "another fleet's secret, 32 bytes")
    a = daemon_factory("--swarm-key", key, bind="127.0.0.66")
    b = daemon_factory("--swarm-key", key, "--peer", a.peer_address, bind="127.0.0.67")
    c = daemon_factory("--peer", a.peer_address, bind="127.0.0.68")
    d = daemon_factory("--swarm-key", other, "--peer", a.peer_address, bind="127.0.0.69")
    clients = {x.name: apt_factory.path_form(x, mirror) for x in (a, b, c, d)}
    for client in clients.values():
        client.update()
    hashes = {x.name: status(x)["swarms"][0]["info_hash"] for x in (a, b, c, d)}
    assert hashes[a.name] == hashes[b.name]
    assert len({hashes[a.name], hashes[c.name], hashes[d.name]}) == 3
    wait_until(lambda: status(b)["connections"] >= 1, 15, "B connected to A")

    clients[a.name].install_download_only("dt-medium")
    size = repo.total_size({"dt-medium", "dt-base"})
    for x in (b, c, d):
        clients[x.name].install_download_only("dt-medium")
    assert totals(b)["bytes_from_peers"] == size, logs(a, b)
    for x in (c, d):
        t = totals(x)
        assert t["bytes_from_peers"] == 0 and t["bytes_from_mirror"] == size, t
        assert status(x)["connections"] == 0
    peers_of_a = [p["address"].rsplit(":", 1)[0] for p in status(a)["swarms"][0]["peer_list"]]
    assert peers_of_a == [b.bind]
    assert totals(a)["bytes_uploaded"] >= size


def test_an_intruder_who_overheard_the_info_hash_gets_nothing(
    repo: Repo, mirror, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    """Someone with the keyed info hash (overheard on the LAN) but not the key: no
    bitfield, no have, no piece, whatever it sends, and the connection is closed."""
    key = key_file(tmp_path / "fleet.key", "a secret of the fleet, 32 bytes+")
    a = daemon_factory("--swarm-key", key, bind="127.0.0.70")
    client = apt_factory.path_form(a, mirror)
    client.update()
    client.install_download_only("dt-medium")  # A has pieces to show
    snap = status(a)
    info_hash = bytes.fromhex(snap["swarms"][0]["info_hash"])
    num_pieces = snap["swarms"][0]["pieces"]
    reserved = bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])
    attempts = {
        "wrong proof": [
            wire.Extended(0, {"m": {"dt_swarmkey": 4}, "dt_swarm_nonce": b"n" * 16}),
            wire.Extended(4, {"proof": b"p" * 32}),
        ],
        "no proof, asks at once": [
            wire.Interested(),
            wire.Request(0, 0, 16384),
        ],
        "extension handshake only": [
            wire.Extended(0, {"m": {"dt_swarmkey": 4}, "dt_swarm_nonce": b"n" * 16}),
        ],
    }
    for what, messages in attempts.items():
        with WirePeer(
            "127.0.0.70", a.peer_port, source="127.0.0.71", num_pieces=num_pieces, timeout=20
        ) as intruder:
            intruder.handshake(info_hash, make_peer_id(b"intruder"), reserved)
            intruder.send(*messages)
            assert intruder.closed_by_remote(15), f"{what}: still connected"
            kinds = {type(m).__name__ for m in intruder.received}
            assert kinds <= {"Extended", "KeepAlive"}, f"{what}: received {kinds}"
            for m in intruder.received:
                # A's extension handshake, and A's own proof (bound to the intruder's
                # nonce and peer id: of no use anywhere else); nothing of the swarm
                if isinstance(m, wire.Extended) and m.ext_id != 0:
                    assert m.ext_id == 4 and set(m.payload) == {b"proof"}, f"{what}: {m}"
    assert status(a)["totals"]["bytes_uploaded"] == 0


def test_lan_only_stays_off_the_dht(daemon_factory) -> None:
    port = free_port("127.0.0.72")
    d = daemon_factory(
        "--discovery", "dht,pex", "--lan-only", "yes", bind="127.0.0.72", peer_port=port
    )
    snap = status(d)["discovery"]
    assert snap["lan_only"] is True and snap["enabled"] == ["pex"]
    assert snap["dht"]["running"] is False
