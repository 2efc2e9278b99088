"""The pure parts of discovery: BEP 14 messages and limits, BEP 11 payloads, swarm keys.

Hostile input is fuzzed: every parser returns a well-formed value or raises
ProtocolError; the flood limits are driven with far more than they admit.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from debtorrent.config import load_config
from debtorrent.errors import ConfigError, PeerError, ProtocolError
from debtorrent.torrent import lsd, pex, wire
from debtorrent.torrent.metainfo import keyed_info_hash
from debtorrent.torrent.swarmkey import KeyGate, SwarmKey, load_swarm_key

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HASHES = [hashlib.sha1(bytes([i])).digest() for i in range(100)]


# --- LSD messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("ipv6", [False, True])
def test_announces_fit_1400_bytes_and_carry_every_hash(ipv6):
    packets = lsd.announce_packets(HASHES, 6881, "cafe", ipv6=ipv6)
    assert len(packets) > 1
    assert all(len(p) <= lsd.MAX_PACKET for p in packets)
    seen = []
    for packet in packets:
        announce = lsd.parse_announce(packet)
        assert announce.port == 6881 and announce.cookie == "cafe"
        seen += announce.info_hashes
    assert seen == HASHES
    host = b"[ff15::efc0:988f]:6771" if ipv6 else b"239.192.152.143:6771"
    assert b"Host: " + host + b"\r\n" in packets[0]


def test_announce_format_is_bep14():
    (packet,) = lsd.announce_packets(HASHES[:1], 9989, "c00k1e")
    assert packet == (
        b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 9989\r\n"
        b"Infohash: " + HASHES[0].hex().encode() + b"\r\ncookie: c00k1e\r\n\r\n\r\n"
    )


def test_parse_is_case_insensitive_and_tolerates_bare_newlines_and_unknown_headers():
    data = (
        b"BT-SEARCH * HTTP/1.1\nhost: x\nPORT: 7\nX-Whatever: y\n"
        b"INFOHASH: " + HASHES[1].hex().upper().encode() + b"\n\n"
    )
    announce = lsd.parse_announce(data)
    assert announce == lsd.Announce(7, (HASHES[1],), None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n\r\n",  # no hash
        b"BT-SEARCH * HTTP/1.1\r\nInfohash: " + b"a" * 40 + b"\r\n\r\n",  # no port
        b"BT-SEARCH * HTTP/1.1\r\nPort: 0\r\nInfohash: " + b"a" * 40 + b"\r\n\r\n",
        b"BT-SEARCH * HTTP/1.1\r\nPort: 65536\r\nInfohash: " + b"a" * 40 + b"\r\n\r\n",
        b"BT-SEARCH * HTTP/1.1\r\nPort: -1\r\nInfohash: " + b"a" * 40 + b"\r\n\r\n",
        b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: " + b"g" * 40 + b"\r\n\r\n",
        b"BT-SEARCH * HTTP/1.1\r\nPort 1\r\n\r\n",
        b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: " + b"a" * 40 + b"\r\n" + b"x" * 1500,
    ],
)
def test_hostile_announces_are_refused(data):
    with pytest.raises(ProtocolError):
        lsd.parse_announce(data)


def test_hashes_per_packet_are_capped_and_deduplicated():
    lines = b"".join(b"Infohash: " + h.hex().encode() + b"\r\n" for h in HASHES[:20] * 2)
    announce = lsd.parse_announce(b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n" + lines[:1400])
    assert len(announce.info_hashes) == len(set(announce.info_hashes)) <= lsd.MAX_HASHES


@FUZZ
@given(st.binary(max_size=1600))
def test_fuzzed_datagrams_parse_or_raise_protocol_error(data):
    try:
        announce = lsd.parse_announce(data)
    except ProtocolError:
        return
    assert 0 < announce.port < 65536 and 0 < len(announce.info_hashes) <= lsd.MAX_HASHES


@FUZZ
@given(
    st.lists(
        st.sampled_from([b"Port", b"Infohash", b"cookie", b"Host", b"PORT"]).flatmap(
            lambda k: st.tuples(st.just(k), st.binary(max_size=50))
        ),
        max_size=30,
    )
)
def test_fuzzed_headers_parse_or_raise_protocol_error(headers):
    data = b"BT-SEARCH * HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    try:
        announce = lsd.parse_announce(data)
    except ProtocolError:
        return
    assert all(len(h) == 20 for h in announce.info_hashes)


@pytest.mark.parametrize(
    ("ip", "lan"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.1.1", True),
        ("127.0.0.5", True),
        ("198.18.4.5", True),
        ("fd00::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:192.168.1.1", True),
        ("192.0.2.1", False),
        ("8.8.8.8", False),
        ("100.64.0.1", False),
        ("2001:db8::1", False),
        ("not an ip", False),
    ],
)
def test_lan_addresses(ip, lan):
    assert lsd.is_lan_address(ip) is lan


def test_local_source_includes_our_own_networks_and_never_multicast():
    import ipaddress

    ours = [ipaddress.ip_network("192.0.2.0/24")]
    assert lsd.is_local_source("192.0.2.9", ours)
    assert not lsd.is_local_source("203.0.113.9", ours)
    assert not lsd.is_local_source("239.192.152.143", ours)
    assert not lsd.is_local_source("0.0.0.0", ours)


# --- LSD schedule and flood limits ---------------------------------------------------------


def test_schedule_new_swarms_soon_everything_every_5_minutes_never_within_a_minute():
    s = lsd.Schedule(debounce=1.0)
    a, b, c = HASHES[:3]
    assert s.due(0.0, []) is None
    s.add(a, 10.0)
    s.add(b, 10.5)
    assert s.due(10.5, [a, b]) is None  # gathering the burst
    assert s.due(11.0, [a, b]) == [a, b]
    s.add(c, 20.0)
    assert s.next_time() == 71.0  # one round a minute
    assert s.due(30.0, [a, b, c]) is None
    assert s.due(71.0, [a, b, c]) == [c]
    assert s.due(200.0, [a, b, c]) is None
    assert s.due(300.0, [a, b, c]) == [a, b, c]  # the full round, 5 minutes on
    s.add(a, 301.0)
    s.remove(a)
    assert s.due(400.0, [a, b, c]) is None


def test_intake_bounds_a_flood_from_one_source_and_from_many():
    intake = lsd.Intake()
    mine = HASHES[0]
    announce = lsd.Announce(1000, (mine,), "x")
    accepted = sum(len(intake.accept(announce, "192.168.1.5", [mine], now=0.0)) for _ in range(100))
    assert accepted == intake.per_source_burst
    total = 0
    for i in range(2000):
        src = f"10.0.{i // 250}.{i % 250}"
        total += len(intake.accept(lsd.Announce(1000 + i, (mine,), "x"), src, [mine], now=1.0))
    assert total <= intake.new_burst + 1
    assert len(intake._sources) <= intake.max_sources


def test_intake_remembers_other_swarms_boundedly_and_recalls_once():
    intake = lsd.Intake()
    for i in range(2000):
        announce = lsd.Announce(2000 + i, (HASHES[i % 50],), "x")
        intake.accept(announce, f"10.1.{i // 250}.{i % 250}", [], now=float(i) / 100)
    assert len(intake) <= intake.max_remembered
    recalled = intake.recall(HASHES[49], now=20.0)
    assert recalled and all(port >= 2000 for _ip, port in recalled)
    assert intake.recall(HASHES[49], now=20.0) == []
    assert intake.recall(HASHES[48], now=10_000.0) == []  # too old


# --- PEX ----------------------------------------------------------------------------------------


def test_pex_round_trip_both_families_with_flags():
    added = [("192.0.2.1", 6881, pex.FLAG_SEED), ("2001:db8::1", 51413, pex.FLAG_REACHABLE)]
    dropped = [("192.0.2.2", 1), ("2001:db8::2", 2)]
    payload = wire.Extended(3, pex.encode_pex(added, dropped)).payload
    raw = {k.encode(): v for k, v in payload.items()}
    message = pex.decode_pex(raw)
    assert message.added == tuple(added) and message.dropped == tuple(dropped)


def test_pex_reads_at_most_50_per_family_and_skips_port_zero():
    blob = b"".join(bytes([10, 0, i // 256, i % 256]) + (1).to_bytes(2, "big") for i in range(500))
    message = pex.decode_pex({b"added": blob + bytes(6), b"added.f": b"\x00" * 3})
    assert len(message.added) == pex.MAX_PER_MESSAGE
    assert pex.decode_pex({b"added": bytes(6)}).added == ()


@pytest.mark.parametrize(
    "payload",
    [[], {b"added": 5}, {b"added": b"12345"}, {b"added6": b"x" * 17}, {b"dropped": [b"x"]}],
)
def test_pex_refuses_wrong_types_and_lengths(payload):
    with pytest.raises(ProtocolError):
        pex.decode_pex(payload)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"x"]),
        st.binary(max_size=400) | st.integers() | st.lists(st.binary(max_size=4), max_size=3),
    )
)
def test_fuzzed_pex_payloads_decode_or_raise_protocol_error(payload):
    try:
        message = pex.decode_pex(payload)
    except ProtocolError:
        return
    assert len(message.added) <= 2 * pex.MAX_PER_MESSAGE


def test_pex_state_sends_differences_bounded():
    state = pex.PexState()
    current = {(f"10.0.0.{i}", 1): 0 for i in range(120)}
    added, dropped = state.update(current)
    assert len(added) == 50 and dropped == []
    added, _ = state.update(current)
    assert len(added) == 50
    added, _ = state.update(current)
    assert len(added) == 20
    assert state.update(current) is None
    del current[("10.0.0.0", 1)]
    added, dropped = state.update(current)
    assert added == [] and dropped == [("10.0.0.0", 1)]
    huge = {(f"10.1.{i // 250}.{i % 250}", 1): 0 for i in range(5000)}
    for _ in range(20):
        state.update(huge)
    assert len(state.told) <= pex.MAX_TOLD


# --- swarm keys ---------------------------------------------------------------------------------


def test_keyed_info_hash_changes_every_hash_per_key():
    ih = HASHES[0]
    k1, k2 = os.urandom(32), os.urandom(32)
    assert keyed_info_hash(ih, None) == ih
    assert len(keyed_info_hash(ih, k1)) == 20
    assert keyed_info_hash(ih, k1) != ih
    assert keyed_info_hash(ih, k1) != keyed_info_hash(ih, k2)
    assert keyed_info_hash(ih, k1) == keyed_info_hash(ih, k1)
    assert keyed_info_hash(HASHES[1], k1) != keyed_info_hash(ih, k1)


def test_key_file_is_read_stripped_and_must_be_long_enough(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"  0123456789abcdef0123\n")
    same = tmp_path / "same"
    same.write_bytes(b"0123456789abcdef0123")
    assert load_swarm_key(str(path)) == load_swarm_key(str(same))
    path.write_bytes(b"short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        load_swarm_key(str(path))
    with pytest.raises(ConfigError, match="No such file"):
        load_swarm_key(str(tmp_path / "missing"))


def _hs(gate: KeyGate) -> dict:
    fields = {k.encode(): v for k, v in gate.handshake_fields().items()}
    return {b"m": {b"dt_swarmkey": 4}, **fields}


def _pair(key_a: bytes, key_b: bytes, ih: bytes = HASHES[0]):
    a = KeyGate(SwarmKey(key_a), ih, b"A" * 20)
    b = KeyGate(SwarmKey(key_b), ih, b"B" * 20)
    return a, b


def test_two_holders_of_the_key_prove_it_to_each_other():
    key = os.urandom(32)
    a, b = _pair(key, key)
    proof_a = a.on_handshake(_hs(b), b"B" * 20)
    proof_b = b.on_handshake(_hs(a), b"A" * 20)
    a.on_proof({b"proof": proof_b["proof"]})
    b.on_proof({b"proof": proof_a["proof"]})
    assert a.proven and b.proven


def test_a_wrong_key_or_no_key_fails():
    a, b = _pair(os.urandom(32), os.urandom(32))
    proof_b = b.on_handshake(_hs(a), b"A" * 20)
    a.on_handshake(_hs(b), b"B" * 20)
    with pytest.raises(PeerError, match="wrong"):
        a.on_proof({b"proof": proof_b["proof"]})
    assert not a.proven
    c, _ = _pair(os.urandom(32), os.urandom(32))
    with pytest.raises(PeerError, match="does not use"):
        c.on_handshake({b"m": {b"ut_pex": 3}}, b"B" * 20)


def test_a_proof_cannot_be_replayed_or_reflected():
    key = os.urandom(32)
    a, b = _pair(key, key)
    proof_b = b.on_handshake(_hs(a), b"A" * 20)
    # replay: the same proof on a new connection of A (a fresh nonce)
    a2, _ = _pair(key, key)
    a2.on_handshake(_hs(b), b"B" * 20)
    with pytest.raises(PeerError):
        a2.on_proof(proof_b)
    # reflection: an attacker sends A's own nonce back and claims A's peer id
    a3, _ = _pair(key, key)
    with pytest.raises(PeerError, match="nonce"):
        a3.on_handshake(_hs(a3), b"M" * 20)
    a4, _ = _pair(key, key)
    mirror = KeyGate(SwarmKey(key), HASHES[0], b"M" * 20)
    proof_from_a4 = a4.on_handshake(_hs(mirror), b"A" * 20)  # peer claims A's own id
    with pytest.raises(PeerError, match="own id"):
        a4.on_proof(proof_from_a4)


def test_before_the_proof_only_handshake_proof_and_keepalive_pass():
    gate, _ = _pair(os.urandom(32), os.urandom(32))
    assert gate.may_send(wire.Extended(0, {}), proof_id=7)
    assert gate.may_send(wire.Extended(7, {}), proof_id=7)
    assert gate.may_send(wire.KeepAlive(), proof_id=7)
    for message in (wire.Bitfield(b"\xff"), wire.Have(1), wire.Extended(3, {}), wire.Unchoke()):
        assert not gate.may_send(message, proof_id=7)
    assert gate.may_receive(wire.Extended(4, {}), proof_id=4)
    assert not gate.may_receive(wire.Piece(0, 0, b"x"), proof_id=4)
    assert not gate.may_receive(wire.Extended(3, {}), proof_id=4)


# --- options ---------------------------------------------------------------------------------


def test_discovery_options_parse():
    config = load_config({})
    assert config.discovery == ("lsd", "dht", "pex")
    assert config.lan_only is False
    assert config.dht_port == 0
    assert all(not host[0].isdigit() for host, _port in config.dht_bootstrap)  # names only
    config = load_config(
        {
            "discovery": "lsd,pex",
            "lan-only": "yes",
            "dht-bootstrap": ["127.0.0.1:6881"],
            "dht-port": "6881",
        }
    )
    assert config.discovery == ("lsd", "pex") and config.lan_only is True
    assert config.dht_bootstrap == [("127.0.0.1", 6881)] and config.dht_port == 6881
    assert load_config({"discovery": "none", "dht-bootstrap": ["none"]}).discovery == ()
    assert load_config({"dht-bootstrap": ["none"]}).dht_bootstrap == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("discovery", "lsd,tracker"),
        ("discovery", "none lsd"),
        ("lan-only", "maybe"),
        ("dht-port", "70000"),
        ("dht-bootstrap", ["nope"]),
    ],
)
def test_bad_discovery_options_are_config_errors(name, value):
    with pytest.raises(ConfigError):
        load_config({name: value})


# --- the session's door for addresses ----------------------------------------------------------


def test_lan_only_drops_addresses_outside_the_lan_from_every_source():
    from types import SimpleNamespace

    from debtorrent.torrent.peer_list import CANDIDATE_SOURCES, PeerList
    from debtorrent.torrent.session import Session, SessionSettings

    swarm = SimpleNamespace(info_hash=b"s" * 20, closed=False)
    addresses = [("192.168.1.5", 1), ("8.8.8.8", 2), ("fd00::5", 3), ("2001:db8::1", 4)]

    def listed(session: Session) -> set:
        session.peer_lists[swarm.info_hash] = peers = PeerList()
        for source in CANDIDATE_SOURCES:
            session.add_candidates(swarm, addresses, source)
        return {c.address for c in peers}

    lan = Session(SessionSettings(discovery=("lsd", "dht", "pex"), lan_only=True))
    assert not lan.discovery.use_dht  # LAN-only keeps the DHT off whatever is asked
    assert listed(lan) == {("192.168.1.5", 1), ("fd00::5", 3)}
    assert lan.candidates["pex"] == 2
    assert listed(Session(SessionSettings(discovery=("pex",)))) == set(addresses)
