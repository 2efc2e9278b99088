"""Tracker request builders, reply parsers, scheduling policy and loop, without sockets.

The parsers face bytes from any tracker on the Internet, so besides the known forms they
are fuzzed: whatever the input, they return a reply or raise TrackerError, nothing else.
"""

from __future__ import annotations

import random
import struct
import time
import urllib.parse
from collections.abc import Callable

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debtorrent.errors import TrackerError
from debtorrent.torrent import bencode
from debtorrent.torrent.tracker import (
    UDP_PROTOCOL_ID,
    AnnounceParams,
    Announcer,
    AnnounceReply,
    Event,
    Tiers,
    build_http_announce_url,
    build_udp_announce,
    build_udp_connect,
    clamp_interval,
    parse_http_reply,
    parse_udp_announce,
    parse_udp_connect,
    retry_delay,
    udp_transaction_id,
)

HASH = bytes(range(20))
PEER_ID = b"-DT0100-" + b"\x00\xff &=?#+%/\x80\x7f"


def params(**kw: object) -> AnnounceParams:
    base: dict[str, object] = {"info_hash": HASH, "peer_id": PEER_ID, "port": 6881}
    base.update(kw)
    return AnnounceParams(**base)  # type: ignore[arg-type]


# --- HTTP request ------------------------------------------------------------------------


def query_of(url: str) -> dict[str, bytes]:
    """Decode a query as a tracker does: each value back to raw bytes."""
    query = urllib.parse.urlsplit(url).query
    return {
        k: urllib.parse.unquote_to_bytes(v) for k, v in (p.split("=", 1) for p in query.split("&"))
    }


def test_http_url_encodes_raw_bytes_and_every_field() -> None:
    url = build_http_announce_url(
        "http://t.example:6969/announce",
        params(uploaded=1, downloaded=2, left=3, event=Event.STARTED, numwant=30, key=0xABC),
    )
    assert url.startswith("http://t.example:6969/announce?info_hash=%00%01%02")
    q = query_of(url)
    assert q["info_hash"] == HASH
    assert q["peer_id"] == PEER_ID
    assert q == q | {
        "port": b"6881",
        "uploaded": b"1",
        "downloaded": b"2",
        "left": b"3",
        "compact": b"1",
        "event": b"started",
        "numwant": b"30",
        "key": b"00000abc",
    }
    # nothing that would end or split the query is left unencoded
    assert "#" not in url and url.count("?") == 1 and " " not in url


def test_http_url_no_event_no_numwant_no_key() -> None:
    q = query_of(build_http_announce_url("http://t/a", params(numwant=None)))
    assert "event" not in q and "numwant" not in q and "key" not in q


@pytest.mark.parametrize("event", [Event.STARTED, Event.COMPLETED, Event.STOPPED])
def test_http_url_event_names(event: Event) -> None:
    q = query_of(build_http_announce_url("http://t/a", params(event=event)))
    assert q["event"] == event.name.lower().encode()


def test_http_url_keeps_existing_query() -> None:
    url = build_http_announce_url("https://t/a?passkey=xyz", params())
    assert url.startswith("https://t/a?passkey=xyz&info_hash=")
    assert query_of(url)["passkey"] == b"xyz"


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_http_url_round_trips_any_bytes(info_hash: bytes, peer_id: bytes) -> None:
    q = query_of(
        build_http_announce_url("http://t/a", params(info_hash=info_hash, peer_id=peer_id))
    )
    assert q["info_hash"] == info_hash and q["peer_id"] == peer_id


@pytest.mark.parametrize(
    "bad",
    [
        {"info_hash": b"short"},
        {"peer_id": b"x" * 21},
        {"port": 70000},
        {"left": -1},
        {"key": 1 << 32},
    ],
)
def test_params_reject_caller_bugs(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        params(**bad)


# --- HTTP reply --------------------------------------------------------------------------


def test_http_reply_opentracker_compact() -> None:
    # as captured from Debian's opentracker
    body = (
        b"d8:completei1e10:downloadedi0e10:incompletei0e8:intervali1736e"
        b"12:min intervali868e5:peers6:\x7f\x00\x00\x01\x1a\xe1e"
    )
    reply = parse_http_reply(body)
    assert reply == AnnounceReply(
        interval=1736, min_interval=868, peers=(("127.0.0.1", 6881),), complete=1, incomplete=0
    )


def test_http_reply_dict_peers_and_peers6() -> None:
    body = bencode.encode(
        {
            "interval": 900,
            "peers": [
                {"ip": b"10.0.0.1", "port": 1, "peer id": b"x" * 20},
                {"ip": b"::1", "port": 2},
                {"ip": b"host.example", "port": 3},  # names are not resolved: skipped
                {"ip": b"10.0.0.2", "port": 0},  # undialable: skipped
                {"ip": b"10.0.0.1", "port": 1},  # duplicate
            ],
            "peers6": b"\x20\x01" + b"\x00" * 13 + b"\x05\x00\x50",
            "warning message": "be nice\n",
        }
    )
    reply = parse_http_reply(body)
    assert reply.peers == (("10.0.0.1", 1), ("::1", 2), ("2001::5", 80))
    assert reply.warning == "be nice?"
    assert reply.complete is None and reply.min_interval is None


def test_http_reply_failure_reason() -> None:
    body = b"d14:failure reason63:Requested download is not authorized for use with this tracker.e"
    with pytest.raises(TrackerError, match="not authorized"):
        parse_http_reply(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502</html>",
        b"le",
        b"d5:peers5:abcdee",  # not a multiple of 6
        b"d6:peers617:" + b"\x00" * 17 + b"e",
        b"d5:peersi3ee",
        b"d8:intervali-5ee",
        b"d8:interval3:abce",
        b"d5:peersl3:abcee",
        b"d8:intervali1e8:intervali2ee",  # repeated key: not canonical
    ],
)
def test_http_reply_malformed(body: bytes) -> None:
    with pytest.raises(TrackerError):
        parse_http_reply(body)


def test_http_reply_failure_text_is_bounded_and_printable() -> None:
    body = bencode.encode({"failure reason": b"\x1b[31m" + b"x" * 5000})
    with pytest.raises(TrackerError) as info:
        parse_http_reply(body)
    assert "\x1b" not in str(info.value) and len(str(info.value)) < 300


# Values a tracker might put in a reply, nested a little.
bvalues = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
reply_keys = st.sampled_from(
    [
        b"interval",
        b"min interval",
        b"peers",
        b"peers6",
        b"complete",
        b"incomplete",
        b"failure reason",
        b"warning message",
        b"ip",
        b"port",
    ]
)
peer_dicts = st.fixed_dictionaries(
    {},
    optional={
        b"ip": st.sampled_from([b"1.2.3.4", b"::", b"\xff", b"999.1.1.1"]) | st.binary(max_size=6),
        b"port": st.integers(-5, 70000) | st.binary(max_size=2),
    },
)
replies = st.dictionaries(
    reply_keys,
    bvalues | st.binary(max_size=40) | st.lists(peer_dicts | bvalues, max_size=4),
    max_size=6,
)


def must_parse_or_refuse(parse: object, data: bytes, *args: object, **kw: object) -> None:
    try:
        result = parse(data, *args, **kw)  # type: ignore[operator]
    except TrackerError:
        return
    if isinstance(result, AnnounceReply):
        for ip, port in result.peers:
            assert isinstance(ip, str) and 0 < port <= 0xFFFF


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_http_reply_fuzz_bytes(data: bytes) -> None:
    must_parse_or_refuse(parse_http_reply, data)


@settings(max_examples=500)
@given(replies)
def test_http_reply_fuzz_structured(reply: dict[bytes, object]) -> None:
    must_parse_or_refuse(parse_http_reply, bencode.encode(reply))


@given(st.binary(max_size=40), st.integers(0, 255))
def test_http_reply_fuzz_mutated(noise: bytes, pos: int) -> None:
    good = bencode.encode({"interval": 60, "peers": b"\x01\x02\x03\x04\x00\x05" * 2})
    pos %= len(good)
    must_parse_or_refuse(parse_http_reply, good[:pos] + noise + good[pos + len(noise) :])


# --- UDP requests ------------------------------------------------------------------------


def test_udp_connect_packet() -> None:
    pkt = build_udp_connect(0xDEADBEEF)
    assert pkt == struct.pack(">QII", UDP_PROTOCOL_ID, 0, 0xDEADBEEF)
    assert pkt.hex() == "0000041727101980" + "00000000" + "deadbeef"


def test_udp_announce_packet_layout() -> None:
    p = params(uploaded=3, downloaded=1, left=2, event=Event.STOPPED, numwant=None, key=7)
    pkt = build_udp_announce(0x1122334455667788, 0x99, p)
    assert len(pkt) == 98
    fields = struct.unpack(">QII20s20sQQQIIIiH", pkt)
    assert fields == (0x1122334455667788, 1, 0x99, HASH, PEER_ID, 1, 2, 3, 3, 0, 7, -1, 6881)


@pytest.mark.parametrize("event,code", [(Event.NONE, 0), (Event.COMPLETED, 1), (Event.STARTED, 2)])
def test_udp_event_codes(event: Event, code: int) -> None:
    pkt = build_udp_announce(1, 2, params(event=event, numwant=50))
    assert struct.unpack_from(">I", pkt, 80)[0] == code
    assert struct.unpack_from(">i", pkt, 92)[0] == 50


# --- UDP replies -------------------------------------------------------------------------


def test_udp_connect_reply() -> None:
    data = bytes.fromhex("00000000000004d2c489b71262fb0cce")  # from opentracker
    assert parse_udp_connect(data, 1234) == 0xC489B71262FB0CCE
    with pytest.raises(TrackerError, match="transaction"):
        parse_udp_connect(data, 1235)
    with pytest.raises(TrackerError, match="too short"):
        parse_udp_connect(data[:12], 1234)


def test_udp_announce_reply_from_opentracker() -> None:
    data = bytes.fromhex("00000001000000630000072200000000000000027f0000011b587f0000011ae1")
    reply = parse_udp_announce(data, 0x63)
    assert reply.interval == 0x722 and reply.incomplete == 0 and reply.complete == 2
    assert reply.peers == (("127.0.0.1", 7000), ("127.0.0.1", 6881))


def test_udp_announce_reply_ipv6() -> None:
    data = struct.pack(">IIIII", 1, 5, 60, 1, 1) + b"\x00" * 15 + b"\x01" + b"\x1a\xe1"
    assert parse_udp_announce(data, 5, ipv6=True).peers == (("::1", 6881),)
    with pytest.raises(TrackerError, match="multiple"):
        parse_udp_announce(data[:-6], 5, ipv6=True)


def test_udp_announce_refusal_of_whitelist_only_opentracker() -> None:
    with pytest.raises(TrackerError, match="refused"):
        parse_udp_announce(bytes.fromhex("0000000100000063"), 0x63)


def test_udp_error_reply() -> None:
    data = bytes.fromhex("0000000300000063") + b"Connection ID missmatch.\x00"
    with pytest.raises(TrackerError, match=r"says: Connection ID missmatch\.$"):
        parse_udp_announce(data, 0x63)
    with pytest.raises(TrackerError, match="missmatch"):
        parse_udp_connect(data, 0x63)


def test_udp_wrong_action() -> None:
    with pytest.raises(TrackerError, match="action"):
        parse_udp_announce(bytes.fromhex("00000000000000630000000000000001"), 0x63)
    with pytest.raises(TrackerError, match="action"):
        parse_udp_connect(bytes.fromhex("00000001000000630000000000000001"), 0x63)


def test_udp_transaction_id() -> None:
    assert udp_transaction_id(b"\0\0\0\1\0\0\0\x63") == 0x63
    assert udp_transaction_id(b"\0" * 7) is None


@settings(max_examples=500)
@given(st.binary(max_size=120), st.integers(0, 2**32 - 1), st.booleans())
def test_udp_fuzz(data: bytes, tid: int, ipv6: bool) -> None:
    must_parse_or_refuse(parse_udp_announce, data, tid, ipv6=ipv6)
    must_parse_or_refuse(parse_udp_connect, data, tid)


@settings(max_examples=500)
@given(st.integers(0, 4), st.binary(max_size=120), st.booleans())
def test_udp_fuzz_matching_header(action: int, body: bytes, ipv6: bool) -> None:
    """Past the header check: the body parsing must hold up too."""
    data = struct.pack(">II", action, 9) + body
    must_parse_or_refuse(parse_udp_announce, data, 9, ipv6=ipv6)
    must_parse_or_refuse(parse_udp_connect, data, 9)


# --- scheduling policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    "interval,min_interval,expected",
    [(1736, 868, 1736), (0, None, 60), (10**9, None, 3600), (None, None, 1800), (100, 900, 900)],
)
def test_clamp_interval(interval: int | None, min_interval: int | None, expected: float) -> None:
    reply = AnnounceReply(interval=interval, min_interval=min_interval)
    assert clamp_interval(reply) == expected


def test_clamp_interval_bounds_win_over_min_interval() -> None:
    assert clamp_interval(AnnounceReply(interval=5, min_interval=10**6)) == 3600
    assert clamp_interval(AnnounceReply(interval=1736), 0.5, 1.0) == 1.0


def test_retry_delay_doubles_to_cap() -> None:
    assert [retry_delay(n) for n in range(1, 10)] == [15, 30, 60, 120, 240, 480, 960, 1800, 1800]
    assert retry_delay(10**6) == 1800
    assert retry_delay(1, 0.1, 1.0) == 0.1 and retry_delay(5, 0.1, 1.0) == 1.0


def test_tiers_shuffle_within_tier_only() -> None:
    tiers = Tiers([["a1", "a2", "a3"], [], ["b1", "b2"]], random.Random(4))
    order = list(tiers)
    assert sorted(order[:3]) == ["a1", "a2", "a3"] and sorted(order[3:]) == ["b1", "b2"]
    seen = {tuple(Tiers([["a", "b", "c", "d"]], random.Random(seed))) for seed in range(50)}
    assert len(seen) > 1


def test_tiers_promote_moves_to_front_of_own_tier() -> None:
    tiers = Tiers([["a", "b", "c"], ["x", "y"]], _NoShuffle())
    tiers.promote("c")
    tiers.promote("y")
    assert tiers.as_lists() == [["c", "a", "b"], ["y", "x"]]
    assert list(tiers) == ["c", "a", "b", "y", "x"]


def test_tiers_dedup_and_empty() -> None:
    assert Tiers([["a", "a", ""]], _NoShuffle()).as_lists() == [["a"]]
    with pytest.raises(TrackerError):
        Tiers([[], [""]])


class _NoShuffle(random.Random):
    """Keeps the tier order as given, so a test can say which tracker comes first."""

    def shuffle(self, x: list[object]) -> None:  # type: ignore[override]
        return None


# --- the announcer's loop, with the network replaced -------------------------------------


class _FakeAnnouncer(Announcer):
    """An Announcer whose trackers are scripted: records each (url, event) it sends.

    ``script[url]`` is a list of outcomes used in turn (the last one repeats): an
    AnnounceReply, a TrackerError to raise, or "hang" to block until killed.
    """

    def __init__(self, tiers: list[list[str]], script: dict[str, list[object]]) -> None:
        self.got: list[list[tuple[str, int]]] = []
        super().__init__(
            HASH,
            PEER_ID,
            6881,
            tiers,
            stats_callback=lambda: (1, 2, 3),
            on_peers=self.got.append,
            source_address="127.0.0.9",
            interval_bounds=(0.05, 0.05),
            retry_bounds=(0.01, 0.04),
            rng=_NoShuffle(),
        )
        self.script = script
        self.sent: list[tuple[str, Event]] = []

    def _announce_to(self, url: str, params: AnnounceParams) -> AnnounceReply:
        self.sent.append((url, params.event))
        outcomes = self.script[url]
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if outcome == "hang":
            gevent.sleep(3600)
        if isinstance(outcome, TrackerError):
            raise outcome
        assert isinstance(outcome, AnnounceReply)
        return outcome


OK = AnnounceReply(interval=1800, peers=(("127.0.0.9", 6881), ("10.0.0.1", 1)))


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def test_announcer_events_started_regular_completed_stopped() -> None:
    a = _FakeAnnouncer([["t"]], {"t": [OK]})
    a.start()
    assert _until(lambda: len(a.sent) >= 3)
    a.completed()
    assert _until(lambda: Event.COMPLETED in [e for _, e in a.sent])
    assert _until(lambda: a.sent[-1][1] is Event.NONE)
    a.stop(1.0)
    events = [e for _, e in a.sent]
    assert events[0] is Event.STARTED and events[1] is Event.NONE
    assert events.count(Event.STARTED) == 1 and events.count(Event.COMPLETED) == 1
    assert events[-1] is Event.STOPPED and a.stopped_sent == ["t"] and not a.running
    # its own address (source_address, port) is not handed over
    assert a.got[0] == [("10.0.0.1", 1)]


def test_announcer_keeps_started_until_a_tracker_accepts_it() -> None:
    a = _FakeAnnouncer([["t"]], {"t": [TrackerError("down"), TrackerError("down"), OK]})
    a.start()
    assert _until(lambda: a.announces >= 2)
    a.stop(1.0)
    events = [e for _, e in a.sent]
    assert events[:4] == [Event.STARTED, Event.STARTED, Event.STARTED, Event.NONE]
    assert a.failures == 0


def test_announcer_bep12_order_and_backoff() -> None:
    down = TrackerError("down")
    a = _FakeAnnouncer([["a1", "a2"], ["b1"]], {"a1": [down], "a2": [down], "b1": [down]})
    a.start()
    assert _until(lambda: a.failures >= 4)
    a.stop(1.0)
    assert [u for u, _ in a.sent[:6]] == ["a1", "a2", "b1", "a1", "a2", "b1"]
    assert a.stopped_sent == [] and "b1: down" in (a.last_error or "")


def test_announcer_promotes_the_tracker_that_answers() -> None:
    down = TrackerError("down")
    a = _FakeAnnouncer([["a1", "a2", "a3"]], {"a1": [down], "a2": [OK], "a3": [OK]})
    a.start()
    assert _until(lambda: a.announces >= 3)
    a.stop(1.0)
    assert [u for u, _ in a.sent[:4]] == ["a1", "a2", "a2", "a2"]
    assert a.tiers.as_lists() == [["a2", "a1", "a3"]]


def test_announcer_stop_is_bounded_when_the_tracker_hangs() -> None:
    a = _FakeAnnouncer([["t"]], {"t": [OK, OK, "hang"]})
    a.start()
    assert _until(lambda: a.announces >= 2)
    t0 = time.monotonic()
    a.stop(0.3)
    assert time.monotonic() - t0 < 1.0
    assert not a.running and a.stopped_sent == []


def test_announcer_survives_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    a = _FakeAnnouncer([["t"]], {"t": [OK]})
    a._on_peers = lambda peers: 1 / 0  # type: ignore[method-assign]
    a.start()
    assert _until(lambda: a.announces >= 3)
    a.stop(1.0)
    assert "on_peers callback failed" in caplog.text
