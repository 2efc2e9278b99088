"""The strict bencode codec: round trips, every non-canonical form refused, fuzzing."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debtorrent.errors import BencodeError
from debtorrent.torrent import bencode

# Values bencoding can express, as the decoder returns them (bytes everywhere).
values = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize(
    ("obj", "data"),
    [
        (0, b"i0e"),
        (-3, b"i-3e"),
        (2**64, b"i18446744073709551616e"),
        (b"", b"0:"),
        (b"spam", b"4:spam"),
        ([], b"le"),
        ({}, b"de"),
        ([b"a", 1, [b"b"]], b"l1:ai1el1:bee"),
        ({b"cow": b"moo", b"spam": b"eggs"}, b"d3:cow3:moo4:spam4:eggse"),
    ],
)
def test_known_encodings(obj: object, data: bytes) -> None:
    assert bencode.encode(obj) == data
    assert bencode.decode(data) == obj


def test_encode_sorts_keys_as_raw_bytes_and_accepts_str() -> None:
    # "Z" (0x5a) sorts before "a" (0x61); a str key and value are UTF-8 encoded.
    assert bencode.encode({"a": 1, b"Z": "é"}) == b"d1:Z2:\xc3\xa91:ai1ee"
    assert bencode.encode((1, 2)) == b"li1ei2ee"


@pytest.mark.parametrize("obj", [True, 1.5, None, {1: 2}, {"a": 1, b"a": 2}, object()])
def test_encode_refuses(obj: object) -> None:
    with pytest.raises(BencodeError):
        bencode.encode(obj)


def test_encode_refuses_cycles() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(BencodeError):
        bencode.encode(loop)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i03e",  # leading zero
        b"i-0e",  # negative zero
        b"i00e",
        b"ie",
        b"i-e",
        b"i+1e",
        b"i 1e",
        b"i1",  # unterminated
        b"i" + b"1" * 40 + b"e",  # absurdly long integer
        b"03:abc",  # leading zero in a length
        b"-1:a",
        b"5:abc",  # length beyond the input
        b"99999999999999999999:a",
        b"4spam",
        b"l",
        b"li1e",
        b"d",
        b"d1:ae",  # key without value
        b"di1ei1ee",  # non-string key
        b"d1:bi1e1:ai2ee",  # unsorted keys
        b"d1:ai1e1:ai2ee",  # duplicate keys
        b"i1ei2e",  # trailing data
        b"4:spamx",
        b"e",
        b"x",
        b"l" * 200 + b"e" * 200,  # too deep
    ],
)
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bencode.decode(data)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"d1:bi1e1:ai2ee", {b"a": 2, b"b": 1}),  # unsorted keys
        (b"i03e", 3),
        (b"i-0e", 0),
        (b"03:abc", b"abc"),
        (b"d4:spaml1:be1:a0:e", {b"a": b"", b"spam": [b"b"]}),
    ],
)
def test_lenient_mode_accepts_non_canonical_forms(data: bytes, value: object) -> None:
    """Where nothing is hashed (peer extension messages, tracker and DHT replies)."""
    assert bencode.decode(data, strict=False) == value
    assert bencode.decode_prefix(data + b"xyz", strict=False) == (value, len(data))
    with pytest.raises(BencodeError):
        bencode.decode(data)  # strict stays the default (info dictionaries)


@pytest.mark.parametrize(
    "data", [b"d1:ai1e1:ai2ee", b"i1ei2e", b"di1ei1ee", b"iae", b"i-e", b"5:abc", b"l"]
)
def test_lenient_mode_still_refuses_what_has_no_meaning(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bencode.decode(data, strict=False)


def test_depth_limit_is_exact() -> None:
    assert bencode.decode(b"l" * 64 + b"e" * 64) is not None
    with pytest.raises(BencodeError):
        bencode.decode(b"l" * 65 + b"e" * 65)
    assert bencode.decode(b"l" * 3 + b"e" * 3, max_depth=3) == [[[]]]
    with pytest.raises(BencodeError):
        bencode.decode(b"l" * 3 + b"e" * 3, max_depth=2)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert bencode.decode(bytearray(b"4:spam")) == b"spam"
    assert bencode.decode(memoryview(b"li1ee")) == [1]


def test_decode_prefix_returns_end_for_trailing_payload() -> None:
    data = b"d8:msg_typei1e5:piecei0ee" + b"RAWDATA"
    value, end = bencode.decode_prefix(data)
    assert value == {b"msg_type": 1, b"piece": 0}
    assert data[end:] == b"RAWDATA"
    value, end = bencode.decode_prefix(b"xxi7eyy", 2)
    assert (value, end) == (7, 5)
    with pytest.raises(BencodeError):
        bencode.decode_prefix(b"i1e", 9)


def test_spans_give_the_raw_info_bytes() -> None:
    info = b"d6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:" + b"\x01" * 20 + b"e"
    data = b"d8:announce3:url4:info" + info + b"5:zzzzzi1ee"
    meta, spans = bencode.decode_with_spans(data)
    start, end = spans[b"info"]
    assert data[start:end] == info
    assert meta[b"info"][b"length"] == 5
    assert data[slice(*spans[b"announce"])] == b"3:url"
    assert data[slice(*spans[b"zzzzz"])] == b"i1e"
    assert hashlib.sha1(data[start:end]).digest() == hashlib.sha1(info).digest()


def test_spans_need_a_top_level_dict() -> None:
    with pytest.raises(BencodeError):
        bencode.decode_with_spans(b"li1ee")
    with pytest.raises(BencodeError):
        bencode.decode_with_spans(b"de1:x")


@given(values)
@settings(max_examples=100, deadline=None)
def test_round_trip(obj: object) -> None:
    data = bencode.encode(obj)
    assert bencode.decode(data) == obj
    # Canonical: decoding then encoding reproduces the bytes.
    assert bencode.encode(bencode.decode(data)) == data


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_fuzz_decode_raises_only_bencode_error(data: bytes) -> None:
    try:
        value = bencode.decode(data)
    except BencodeError:
        return
    # Whatever is accepted is canonical.
    assert bencode.encode(value) == data


@given(values, st.data())
@settings(max_examples=150, deadline=None)
def test_fuzz_mutated_valid_input(obj: object, data: st.DataObject) -> None:
    encoded = bytearray(bencode.encode(obj))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(encoded)))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and pos < len(encoded):
            encoded[pos] = data.draw(st.sampled_from(b"ilde:-0123456789x"))
        elif op == "cut":
            del encoded[pos:]
        else:
            encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
    try:
        value = bencode.decode(bytes(encoded))
    except BencodeError:
        return
    assert bencode.encode(value) == bytes(encoded)
