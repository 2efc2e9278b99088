"""KRPC codec and compact info (BEP 5): round trips, strictness, and fuzzed hostile input.

The rule: any datagram either decodes into a well-typed message or raises KrpcError;
nothing else escapes, and nothing large is built from a hostile list.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from debtorrent.errors import KrpcError
from debtorrent.torrent import bencode
from debtorrent.torrent.dht import krpc
from debtorrent.torrent.dht.compact import (
    NodeInfo,
    decode_nodes,
    decode_peer,
    encode_nodes,
    encode_peer,
    usable_endpoint,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ID = bytes(range(20))
OTHER = bytes(range(20, 40))


def test_compact_peer_round_trip_both_families():
    assert decode_peer(encode_peer("192.0.2.7", 6881)) == ("192.0.2.7", 6881)
    assert decode_peer(encode_peer("2001:db8::7", 51413)) == ("2001:db8::7", 51413)
    assert len(encode_peer("192.0.2.7", 1)) == 6
    assert len(encode_peer("2001:db8::7", 1)) == 18


@pytest.mark.parametrize(
    ("ip", "port"),
    [("192.0.2.7", 0), ("0.0.0.0", 80), ("239.1.2.3", 80), ("255.255.255.255", 9), ("::", 1)],
)
def test_unusable_endpoints_are_skipped(ip, port):
    assert not usable_endpoint(ip, port)
    assert decode_peer(encode_peer(ip, port)) is None


def test_compact_nodes_round_trip_and_family_split():
    nodes = [NodeInfo(ID, "192.0.2.1", 1), NodeInfo(OTHER, "2001:db8::1", 2)]
    assert decode_nodes(encode_nodes(nodes)) == nodes[:1]
    assert decode_nodes(encode_nodes(nodes, ipv6=True), ipv6=True) == nodes[1:]


def test_compact_nodes_refuse_partial_entries_and_too_many():
    blob = encode_nodes([NodeInfo(ID, "192.0.2.1", 1)] * 3)
    with pytest.raises(KrpcError):
        decode_nodes(blob[:-1])
    with pytest.raises(KrpcError, match="at most 2"):
        decode_nodes(blob, limit=2)


def test_compact_nodes_skip_a_bad_entry_keep_the_rest():
    good = NodeInfo(ID, "192.0.2.1", 1)
    blob = encode_nodes([good, NodeInfo(OTHER, "192.0.2.2", 0)])
    assert decode_nodes(blob) == [good]


QUERIES = [
    krpc.Query(b"aa", "ping", ID),
    krpc.Query(b"ab", "find_node", ID, target=OTHER),
    krpc.Query(b"ac", "get_peers", ID, info_hash=OTHER),
    krpc.Query(b"ad", "announce_peer", ID, info_hash=OTHER, port=6881, token=b"tok"),
    krpc.Query(b"ae", "announce_peer", ID, info_hash=OTHER, token=b"t", implied_port=True),
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.method)
def test_queries_round_trip(query):
    decoded = krpc.decode(krpc.encode(query))
    if query.implied_port:
        assert decoded.implied_port and decoded.info_hash == query.info_hash
    else:
        assert decoded == query


def test_read_only_flag_round_trips():
    decoded = krpc.decode(krpc.encode(QUERIES[0], read_only=True))
    assert decoded.read_only


def test_response_and_error_round_trip():
    response = krpc.Response(
        b"xy",
        ID,
        nodes=(NodeInfo(OTHER, "192.0.2.9", 9),),
        nodes6=(NodeInfo(OTHER, "2001:db8::9", 9),),
        values=(("192.0.2.10", 10), ("2001:db8::10", 10)),
        token=b"token",
    )
    assert krpc.decode(krpc.encode(response)) == response
    error = krpc.Error(b"xy", 203, "bad token")
    assert krpc.decode(krpc.encode(error)) == error


def test_unknown_method_decodes_so_it_can_be_answered_204():
    query = krpc.decode(bencode.encode({"t": b"zz", "y": b"q", "q": b"vote", "a": {"id": ID}}))
    assert isinstance(query, krpc.Query) and query.method == "vote"


def test_unsorted_keys_are_accepted():
    data = b"d1:ad2:id20:" + ID + b"e1:q4:ping1:t2:aa1:y1:qe"
    shuffled = b"d1:y1:q1:t2:aa1:q4:ping1:ad2:id20:" + ID + b"ee"
    assert krpc.decode(shuffled) == krpc.decode(data)


def _query(**args) -> bytes:
    return bencode.encode({"t": b"tt", "y": b"q", "q": b"announce_peer", "a": args})


@pytest.mark.parametrize(
    "args",
    [
        {"id": ID[:19], "info_hash": OTHER, "port": 1, "token": b"t"},
        {"id": ID, "info_hash": 5, "port": 1, "token": b"t"},
        {"id": ID, "info_hash": OTHER, "port": 0, "token": b"t"},
        {"id": ID, "info_hash": OTHER, "port": 70000, "token": b"t"},
        {"id": ID, "info_hash": OTHER, "port": 1},
        {"id": ID, "info_hash": OTHER, "port": 1, "token": b"x" * 65},
        {"id": ID, "info_hash": OTHER, "port": 1, "token": b"t", "implied_port": 2},
    ],
)
def test_bad_query_arguments_carry_the_transaction_id_for_a_203(args):
    with pytest.raises(KrpcError) as info:
        krpc.decode(_query(**args))
    assert info.value.t == b"tt" and info.value.code == 203


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"garbage",
        b"i42e",
        b"le",
        bencode.encode({"y": b"q"}),
        bencode.encode({"t": b"", "y": b"q"}),
        bencode.encode({"t": b"x" * 33, "y": b"r", "r": {"id": ID}}),
        bencode.encode({"t": 1, "y": b"r", "r": {"id": ID}}),
        bencode.encode({"t": b"t", "y": b"z"}),
        bencode.encode({"t": b"t", "y": b"r"}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": b"short"}}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "nodes": [b"x"]}}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "nodes": b"x" * 27}}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "values": b"abcdef"}}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "values": [1, 2]}}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "values": [b"abcde"]}}),
        bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "token": 7}}),
        bencode.encode({"t": b"t", "y": b"e", "e": b"not a list"}),
        b"d1:ad2:id20:" + ID + b"e1:q4:ping1:q4:ping1:t2:aa1:y1:qe",  # repeated key
        b"l" * 100 + b"e" * 100,  # deep nesting
    ],
)
def test_malformed_datagrams_raise_krpc_error(message):
    with pytest.raises(KrpcError):
        krpc.decode(message)


def test_huge_lists_are_refused_before_use():
    values = [encode_peer("192.0.2.1", 1)] * (krpc.MAX_VALUES + 1)
    with pytest.raises(KrpcError, match="values"):
        krpc.decode(bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "values": values}}))
    nodes = encode_nodes([NodeInfo(ID, "192.0.2.1", 1)] * (krpc.MAX_NODES + 1))
    with pytest.raises(KrpcError, match="nodes"):
        krpc.decode(bencode.encode({"t": b"t", "y": b"r", "r": {"id": ID, "nodes": nodes}}))
    with pytest.raises(KrpcError, match="datagram"):
        krpc.decode(b"x" * (krpc.MAX_PACKET + 1))


def test_error_body_is_read_leniently():
    assert krpc.decode(bencode.encode({"t": b"t", "y": b"e", "e": []})) == krpc.Error(b"t", 201, "")
    got = krpc.decode(bencode.encode({"t": b"t", "y": b"e", "e": [202, b"\xff" * 300]}))
    assert got.code == 202 and len(got.message) == 200


@FUZZ
@given(st.binary(max_size=600))
def test_fuzzed_bytes_never_escape_krpc_error(data):
    try:
        message = krpc.decode(data)
    except KrpcError:
        return
    assert isinstance(message, krpc.Query | krpc.Response | krpc.Error)


_values = st.recursive(
    st.integers(-(10**6), 10**6) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from([b"id", b"nodes", b"values", b"token", b"x"]), inner)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    t=st.one_of(st.binary(max_size=40), st.integers(-(10**9), 10**9)),
    y=st.sampled_from([b"q", b"r", b"e", b"x", 3]),
    q=st.sampled_from([b"ping", b"find_node", b"get_peers", b"announce_peer", b"\xff", 5]),
    body=st.dictionaries(
        st.sampled_from(
            [b"id", b"target", b"info_hash", b"port", b"token", b"implied_port", b"nodes"]
        ),
        _values | st.binary(min_size=20, max_size=20),
    ),
)
def test_fuzzed_messages_with_the_right_shape_never_escape(t, y, q, body):
    data = bencode.encode({b"t": t, b"y": y, b"q": q, b"a": body, b"r": body, b"e": [1, b"x"]})
    try:
        message = krpc.decode(data)
    except KrpcError:
        return
    assert isinstance(message, krpc.Query | krpc.Response | krpc.Error)
    if isinstance(message, krpc.Query) and message.method == "announce_peer":
        assert message.token and message.info_hash and len(message.info_hash) == 20
