"""The peer wire codec: every message both ways, every limit, fuzzing, our extensions."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debtorrent.errors import ProtocolError
from debtorrent.torrent import wire
from debtorrent.torrent.wire import (
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Decoder,
    Extended,
    ExtensionHandshake,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    NotInterested,
    Piece,
    Port,
    RejectRequest,
    Request,
    Suggest,
    Unchoke,
    Unknown,
)

N = 20  # pieces in the test torrent; bitfields are 3 bytes, 4 spare bits
IH = bytes(range(20))
PID = b"-XX0001-abcdefghijkl"

MESSAGES: list[Any] = [
    KeepAlive(),
    Choke(),
    Unchoke(),
    Interested(),
    NotInterested(),
    Have(19),
    Request(3, 16384, 16384),
    Piece(2, 0, b"data" * 10),
    Cancel(3, 16384, 16384),
    Port(6881),
    Suggest(4),
    RejectRequest(5, 0, 100),
    AllowedFast(6),
    Extended(0, {b"m": {b"dt_hashes": 1}, b"v": b"x"}),
    Extended(3, {b"msg_type": 1}, b"trailing raw bytes"),
    Unknown(99, b"whatever"),
]


def decode_all(data: bytes, **kwargs: Any) -> list[Any]:
    return Decoder(N, **kwargs).feed(data)


def frame(msg_id: int, payload: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


# --- encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "data"),
    [
        (KeepAlive(), b"\0\0\0\0"),
        (Choke(), b"\0\0\0\x01\x00"),
        (Unchoke(), b"\0\0\0\x01\x01"),
        (Interested(), b"\0\0\0\x01\x02"),
        (NotInterested(), b"\0\0\0\x01\x03"),
        (Have(7), b"\0\0\0\x05\x04\0\0\0\x07"),
        (Bitfield(b"\xf0\x01"), b"\0\0\0\x03\x05\xf0\x01"),
        (Request(1, 2, 3), b"\0\0\0\x0d\x06\0\0\0\x01\0\0\0\x02\0\0\0\x03"),
        (Piece(1, 2, b"ab"), b"\0\0\0\x0b\x07\0\0\0\x01\0\0\0\x02ab"),
        (Cancel(1, 2, 3), b"\0\0\0\x0d\x08\0\0\0\x01\0\0\0\x02\0\0\0\x03"),
        (Port(0x1AE1), b"\0\0\0\x03\x09\x1a\xe1"),
        (Suggest(1), b"\0\0\0\x05\x0d\0\0\0\x01"),
        (HaveAll(), b"\0\0\0\x01\x0e"),
        (HaveNone(), b"\0\0\0\x01\x0f"),
        (RejectRequest(1, 2, 3), b"\0\0\0\x0d\x10\0\0\0\x01\0\0\0\x02\0\0\0\x03"),
        (AllowedFast(1), b"\0\0\0\x05\x11\0\0\0\x01"),
        (Extended(2, {"a": 1}, b"X"), b"\0\0\0\x0b\x14\x02d1:ai1eeX"),
    ],
)
def test_encoding_is_bep3_bep6_bep10(msg: Any, data: bytes) -> None:
    assert wire.encode(msg) == data


def test_piece_header_matches_piece_message() -> None:
    block = b"z" * 16384
    assert wire.encode_piece_header(4, 16384, len(block)) + block == wire.encode(
        Piece(4, 16384, block)
    )


def test_handshake_bytes_and_bits() -> None:
    data = wire.encode(Handshake(IH, PID))
    assert len(data) == wire.HANDSHAKE_LEN == 68
    assert data[:20] == b"\x13BitTorrent protocol"
    assert data[20:28] == bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])
    assert data[28:48] == IH and data[48:] == PID
    hs = Handshake(IH, PID)
    assert hs.supports_extensions and hs.supports_fast and not hs.supports_dht
    plain = Handshake(IH, PID, bytes(8))
    assert not (plain.supports_extensions or plain.supports_fast)
    with pytest.raises(ValueError):
        wire.encode(Handshake(IH[:19], PID))


def test_peer_id() -> None:
    a, b = wire.peer_id(), wire.peer_id()
    assert len(a) == 20 and a.startswith(b"-DT0100-") and a[8:].isalnum()
    assert a != b
    assert wire.peer_id(random.Random(1)) == wire.peer_id(random.Random(1))


# --- decoding -----------------------------------------------------------------------------


def test_round_trip_every_message_whole_and_byte_by_byte() -> None:
    stream = b"".join(wire.encode(m) for m in MESSAGES)
    assert decode_all(stream) == MESSAGES
    decoder = Decoder(N)
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == MESSAGES
    assert decoder.buffered == 0


def test_first_message_may_be_a_bitfield_or_have_all() -> None:
    bits = bytes([0b10100000, 0, 0b00010000])
    assert decode_all(wire.encode(Bitfield(bits)) + wire.encode(Have(1))) == [
        Bitfield(bits),
        Have(1),
    ]
    assert decode_all(wire.encode(HaveAll())) == [HaveAll()]
    # The extension handshake may come before the bitfield.
    ext = wire.encode(ExtensionHandshake.local().message())
    assert len(decode_all(ext + wire.encode(HaveNone()))) == 2


def test_handshake_then_messages_with_the_torrent_learnt_late() -> None:
    decoder = Decoder(None, handshake=True)
    stream = wire.encode(Handshake(IH, PID)) + wire.encode(Have(3)) + wire.encode(Unchoke())
    assert decoder.feed(stream[:30]) == []
    assert decoder.feed(stream[30:]) == [Handshake(IH, PID)]
    assert decoder.buffered == len(stream) - 68  # kept until the piece count is known
    decoder.set_num_pieces(N)
    assert decoder.feed(b"") == [Have(3), Unchoke()]


def test_handshake_without_fast_bit_forbids_fast_messages() -> None:
    decoder = Decoder(N, handshake=True)
    assert decoder.feed(wire.encode(Handshake(IH, PID, bytes(8))))[0].reserved == bytes(8)
    assert not decoder.fast and not decoder.extended
    with pytest.raises(ProtocolError, match="not negotiated"):
        decoder.feed(wire.encode(HaveAll()))
    other = Decoder(N, handshake=True)
    other.feed(wire.encode(Handshake(IH, PID, bytes(8))))
    with pytest.raises(ProtocolError, match="not negotiated"):
        other.feed(wire.encode(Extended(0, {})))


def test_not_a_bittorrent_peer_is_refused_at_the_first_byte() -> None:
    with pytest.raises(ProtocolError):
        Decoder(N, handshake=True).feed(b"G")
    with pytest.raises(ProtocolError):
        Decoder(N, handshake=True).feed(b"\x13BitTorrent protocoX")


def test_length_prefix_over_limit_fails_before_the_body_arrives() -> None:
    decoder = Decoder(N, max_message_len=1000)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 1001))
    # A huge prefix is refused the same way: nothing is allocated for it.
    with pytest.raises(ProtocolError):
        Decoder(N).feed(b"\xff\xff\xff\xff")
    # And the decoder stays failed.
    with pytest.raises(ProtocolError):
        decoder.feed(wire.encode(Choke()))
    assert decode_all(wire.encode(Piece(0, 0, b"x" * 990)), max_message_len=1000)


def test_truncated_message_waits_for_more() -> None:
    data = wire.encode(Request(1, 0, 16384))
    decoder = Decoder(N)
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [Request(1, 0, 16384)]


def piece_size(index: int) -> int:
    return 40_000 if index == N - 1 else 65_536


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(5, b"\xff\xff"), "bitfield of 2 bytes"),
        (frame(5, b"\xff\xff\xff\xf0"), "bitfield of 4 bytes"),
        (frame(5, b"\xff\xff\xf8"), "spare bits"),
        (wire.encode(Have(N)), "out of range"),
        (wire.encode(Suggest(N)), "out of range"),
        (wire.encode(AllowedFast(2**32 - 1)), "out of range"),
        (wire.encode(Request(N, 0, 16384)), "out of range"),
        (wire.encode(Request(0, 0, 0)), "block length"),
        (wire.encode(Request(0, 0, 8 * 16384 + 1)), "block length"),
        (wire.encode(Cancel(0, 0, 0)), "block length"),
        (wire.encode(RejectRequest(0, 0, 0)), "block length"),
        (wire.encode(Request(0, 65_536 - 100, 16384)), "past the end"),
        (wire.encode(Request(N - 1, 32_768, 16384)), "past the end"),
        (wire.encode(Piece(N - 1, 40_000, b"x")), "past the end"),
        (wire.encode(Piece(0, 0, b"")), "block length"),
        (wire.encode(Piece(N, 0, b"x")), "out of range"),
        (frame(7, b"\0\0\0\0\0\0"), "piece message"),
        (frame(0, b"x"), "payload bytes"),
        (frame(4, b"\0\0\0\0\0"), "payload bytes"),
        (frame(6, b"\0" * 11), "payload bytes"),
        (frame(9, b"\0"), "payload bytes"),
        (frame(14, b"x"), "payload bytes"),
        (frame(20, b""), "without an extension id"),
        (frame(20, b"\x01d1:ae"), "extended message 1"),
        (frame(20, b"\x01li1ee"), "not a dict"),
        (frame(20, b"\x00"), "extended message 0"),
    ],
)
def test_protocol_violations(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Decoder(N, piece_size=piece_size).feed(data)


def test_a_later_bitfield_or_have_all_is_accepted() -> None:
    """aria2 sends a bitfield mid-connection when it is shorter than the haves it stands
    for, and have-all once complete: accepted, as libtorrent and Transmission do."""
    stream = (
        wire.encode(Bitfield(b"\0\0\0"))
        + wire.encode(Have(1))
        + wire.encode(Bitfield(b"\xff\x00\x00"))
        + wire.encode(HaveAll())
        + wire.encode(HaveNone())
    )
    assert Decoder(N).feed(stream) == [
        Bitfield(b"\0\0\0"),
        Have(1),
        Bitfield(b"\xff\x00\x00"),
        HaveAll(),
        HaveNone(),
    ]


def test_extension_payloads_are_decoded_leniently() -> None:
    """Unsorted keys and leading zeros in an extension message are no protocol error
    (nothing there is hashed); libtorrent sends and accepts such payloads."""
    body = b"\x02d8:msg_typei02e4:filei3ee" + b"raw"
    assert Decoder(N).feed(frame(20, body)) == [Extended(2, {b"msg_type": 2, b"file": 3}, b"raw")]
    with pytest.raises(ProtocolError, match="repeated"):
        Decoder(N).feed(frame(20, b"\x02d1:ai1e1:ai2ee"))


def test_request_limits_are_configurable() -> None:
    assert decode_all(wire.encode(Request(0, 0, 65_536)), max_request_len=65_536)
    with pytest.raises(ProtocolError):
        decode_all(wire.encode(Request(0, 0, 65_536)), max_request_len=16_384)
    # Without piece sizes, only the length itself is bounded.
    assert decode_all(wire.encode(Request(0, 10**9, 16384))) == [Request(0, 10**9, 16384)]


def test_zero_piece_torrent_bitfield() -> None:
    assert Decoder(0).feed(frame(5, b"")) == [Bitfield(b"")]


def test_unknown_ids_are_returned_not_fatal() -> None:
    got = decode_all(frame(21, b"\x01\x02") + frame(255, b"") + wire.encode(Have(1)))
    assert got == [Unknown(21, b"\x01\x02"), Unknown(255, b""), Have(1)]


messages = st.one_of(
    st.sampled_from([KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested()]),
    st.builds(Have, st.integers(0, N - 1)),
    st.builds(Request, st.integers(0, N - 1), st.integers(0, 2**32 - 1), st.integers(1, 16384)),
    st.builds(
        Piece, st.integers(0, N - 1), st.integers(0, 2**20), st.binary(min_size=1, max_size=64)
    ),
    st.builds(Cancel, st.integers(0, N - 1), st.integers(0, 2**32 - 1), st.integers(1, 16384)),
    st.builds(Port, st.integers(0, 65535)),
    st.builds(AllowedFast, st.integers(0, N - 1)),
    st.builds(
        Extended,
        st.integers(0, 255),
        st.dictionaries(
            st.binary(max_size=5),
            st.integers(-(10**31), 10**31) | st.binary(max_size=5),
            max_size=3,
        ),
        st.binary(max_size=10),
    ),
    st.builds(Unknown, st.integers(21, 255), st.binary(max_size=10)),
)


@given(st.lists(messages, max_size=12), st.lists(st.integers(1, 40), max_size=20))
@settings(max_examples=200, deadline=None)
def test_fuzz_round_trip_in_arbitrary_chunks(msgs: list[Any], cuts: list[int]) -> None:
    stream = b"".join(wire.encode(m) for m in msgs)
    decoder = Decoder(N)
    got: list[Any] = []
    pos = 0
    for cut in cuts:
        got += decoder.feed(stream[pos : pos + cut])
        pos += cut
    got += decoder.feed(stream[pos:])
    assert got == msgs


@given(st.binary(max_size=300), st.booleans(), st.integers(1, 50))
@settings(max_examples=500, deadline=None)
def test_fuzz_arbitrary_bytes_only_protocol_error(data: bytes, hs: bool, chunk: int) -> None:
    decoder = Decoder(N, handshake=hs, max_message_len=200, piece_size=piece_size)
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
    except ProtocolError:
        pass


@given(st.lists(messages, min_size=1, max_size=5), st.data())
@settings(max_examples=200, deadline=None)
def test_fuzz_corrupted_stream_only_protocol_error(msgs: list[Any], data: st.DataObject) -> None:
    stream = bytearray(b"".join(wire.encode(m) for m in msgs))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        Decoder(N, max_message_len=5000).feed(bytes(stream))
    except ProtocolError:
        pass


# --- BEP 10 handshake ----------------------------------------------------------------------


def test_extension_handshake_round_trip() -> None:
    ours = ExtensionHandshake.local(port=6881)
    [msg] = decode_all(wire.encode(ours.message()))
    assert isinstance(msg, Extended) and msg.ext_id == 0
    theirs = ExtensionHandshake.parse(msg.payload)
    always = {
        name: i for name, i in wire.LOCAL_EXTENSIONS.items() if name not in wire.OPTIONAL_EXTENSIONS
    }
    assert theirs == ExtensionHandshake(m=always, v=wire.CLIENT_VERSION, p=6881, reqq=250)
    # the file plane of suite swarms (docs/layout2.md), each with its own id
    assert set(wire.LOCAL_EXTENSIONS) >= {"dt_files", "dt_piece", "dt_hashes", "dt_fetching"}
    assert len(set(wire.LOCAL_EXTENSIONS.values())) == len(wire.LOCAL_EXTENSIONS)


def test_extension_handshake_parse_is_strict_on_m_lenient_on_the_rest() -> None:
    parsed = ExtensionHandshake.parse(
        {
            b"m": {b"ut_metadata": 3, b"dt_hashes": 0, b"\xff": 4},
            b"v": b"\xffclient",
            b"p": 70000,
            b"reqq": -1,
            b"yourip": b"\x7f\0\0\x01",
        }
    )
    assert parsed.m == {"ut_metadata": 3}  # 0 means disabled; undecodable names skipped
    assert parsed.v == "\ufffdclient"
    assert parsed.p is None and parsed.reqq is None
    assert ExtensionHandshake.parse({}).m == {}
    # dt_run, the file plane's longest request served: kept when a positive integer
    run = ExtensionHandshake.local(run=65536)
    [msg] = decode_all(wire.encode(run.message()))
    assert ExtensionHandshake.parse(msg.payload).run == 65536
    for bad in (0, -5, b"65536", [1]):
        assert ExtensionHandshake.parse({b"m": {}, b"dt_run": bad}).run is None
    for bad in ({b"m": [1]}, {b"m": {b"x": 256}}, {b"m": {b"x": b"1"}}, {b"m": {b"x": -1}}):
        with pytest.raises(ProtocolError):
            ExtensionHandshake.parse(bad)
