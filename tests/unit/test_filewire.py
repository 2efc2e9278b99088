"""The layout-2 data plane codec: files by SHA256, round trips and hostile payloads."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from debtorrent.errors import ProtocolError
from debtorrent.torrent import bencode
from debtorrent.torrent import filewire as fw
from debtorrent.torrent.layout import BLOCK_SIZE

H = hashlib.sha256(b"file").digest()


def wire_round_trip(msg):
    """Through bencode and back, as the peer connection carries it."""
    name, payload, trailing = fw.encode(msg)
    raw = bencode.encode(payload)
    return fw.decode(name, bencode.decode(raw, strict=False), trailing)


@pytest.mark.parametrize(
    "msg",
    [
        fw.Files((H[:8], b"\x00" * 8), (b"\xff" * 8,), full=True),
        fw.Files(),
        fw.Have(H, (0, 7, 5000)),
        fw.Request(H, 3, 2 * BLOCK_SIZE, BLOCK_SIZE),
        fw.Reject(H, 0, 0, 100),
        fw.Cancel(H, 1, BLOCK_SIZE, BLOCK_SIZE),
        fw.Piece(H, 2, 0, b"x" * BLOCK_SIZE),
        fw.HashesRequest(H),
        fw.HashesReply(H, b"\x01" * 64),
        fw.HashesReject(H),
        fw.FetchStarted(H, 1_764_000_000_000),
        fw.FetchFinished(H),
        fw.FetchAborted(H),
        fw.FetchAborted(H, failed=True),
    ],
)
def test_every_message_round_trips(msg) -> None:
    assert wire_round_trip(msg) == msg


def test_piece_bytes_travel_after_the_dictionary() -> None:
    name, payload, trailing = fw.encode(fw.Piece(H, 0, 0, b"block"))
    assert name == fw.DT_PIECE and trailing == b"block" and b"block" not in bencode.encode(payload)


def test_a_large_set_is_split_and_only_the_first_part_replaces() -> None:
    prefixes = [i.to_bytes(8, "big") for i in range(fw.MAX_PREFIXES + 10)]
    messages = fw.files_messages(prefixes, full=True)
    assert [len(m.added) for m in messages] == [fw.MAX_PREFIXES, 10]
    assert [m.full for m in messages] == [True, False]
    assert fw.files_messages([], full=True) == [fw.Files(full=True)]
    assert fw.files_messages([], full=False) == []


@pytest.mark.parametrize(
    ("name", "payload", "trailing"),
    [
        (fw.DT_FILES, {b"a": b"1234567"}, b""),  # not whole prefixes
        (fw.DT_FILES, {b"a": b"x" * 8 * (fw.MAX_PREFIXES + 1)}, b""),
        (fw.DT_FILES, [], b""),
        (fw.DT_HAVE, {b"h": H, b"p": []}, b""),
        (fw.DT_HAVE, {b"h": H, b"p": list(range(fw.MAX_HAVE_PIECES + 1))}, b""),
        (fw.DT_HAVE, {b"h": H[:31], b"p": [1]}, b""),
        (fw.DT_HAVE, {b"h": H, b"p": [-1]}, b""),
        (fw.DT_REQUEST, {b"h": H, b"p": 0, b"o": 0, b"l": fw.MAX_RUN + 1}, b""),
        (fw.DT_REQUEST, {b"h": H, b"p": 0, b"o": 100, b"l": 10}, b""),
        (fw.DT_REQUEST, {b"h": H, b"p": fw.MAX_PIECE, b"o": 0, b"l": 10}, b""),
        (fw.DT_REQUEST, {b"h": H, b"p": b"0", b"o": 0, b"l": 10}, b""),
        (fw.DT_CANCEL, {b"h": H, b"p": 0, b"o": 0, b"l": 0}, b""),
        (fw.DT_PIECE, {b"h": H, b"p": 0, b"o": 0}, b""),
        (fw.DT_PIECE, {b"h": H, b"p": 0, b"o": 0}, b"x" * (fw.MAX_RUN + 1)),
        (fw.DT_HASHES, {b"msg_type": 1, b"h": H, b"hashes": b"x" * 33}, b""),
        (fw.DT_HASHES, {b"msg_type": 9, b"h": H}, b""),
        (fw.DT_FETCHING, {b"msg_type": 0, b"h": H, b"t": -5}, b""),
        (fw.DT_FETCHING, {b"msg_type": 0, b"h": H}, b""),
        ("dt_unknown", {}, b""),
    ],
)
def test_malformed_payloads_are_protocol_errors(name, payload, trailing) -> None:
    with pytest.raises(ProtocolError):
        fw.decode(name, payload, trailing)


@given(
    st.sampled_from(fw.NAMES),
    st.dictionaries(
        st.sampled_from([b"a", b"r", b"f", b"h", b"p", b"o", b"l", b"t", b"msg_type", b"hashes"]),
        st.one_of(st.integers(-5, 1 << 30), st.binary(max_size=80), st.lists(st.integers(-3, 9))),
    ),
    st.binary(max_size=40),
)
def test_any_payload_decodes_or_is_a_protocol_error(name, payload, trailing) -> None:
    try:
        fw.decode(name, payload, trailing)
    except ProtocolError:
        pass
