"""The piece picker, with state written as compact strings.

``setup_picker("2213", "* ")``: piece availabilities 2, 2, 1, 3 and we have piece 0.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debtorrent.torrent.layout import BLOCK_SIZE, Layout
from debtorrent.torrent.picker import ENDGAME_DELAY, HIGH, NORMAL, Block, Picker, PieceSet


class Clock:
    """An injectable clock: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup_picker(
    availability: str,
    have: str = "",
    *,
    blocks: int = 1,
    seed: int = 0,
    enable: bool = True,
    clock: Clock | None = None,
) -> Picker:
    """One file of ``len(availability)`` pieces of *blocks* blocks each."""
    n = len(availability)
    layout = Layout.v1([n * blocks * BLOCK_SIZE], blocks * BLOCK_SIZE)
    have_set = pieces(have.ljust(n))
    picker = Picker(layout, have=have_set, rng=random.Random(seed), clock=clock or Clock())
    for p, count in enumerate(availability):
        for _ in range(int(count)):
            picker.inc_availability(p)
    if enable:
        picker.set_file_priority(0, NORMAL)
    return picker


def pieces(marks: str) -> PieceSet:
    """``"* *"`` -> the PieceSet {0, 2} of 3 pieces."""
    s = PieceSet(len(marks))
    for i, c in enumerate(marks):
        if c == "*":
            s.add(i)
    return s


def everything(n: int) -> PieceSet:
    return PieceSet.full(n)


def picked_pieces(blocks: list[Block]) -> list[int]:
    return [b.piece for b in blocks]


# --- PieceSet -------------------------------------------------------------------------------


def test_pieceset_bits_are_bep3_order() -> None:
    s = pieces("*  *     *")
    assert s.to_bytes() == bytes([0b10010000, 0b01000000])
    assert list(s) == [0, 3, 9]
    assert len(s) == 3 and s.size == 10
    assert 3 in s and 4 not in s and 10 not in s and -1 not in s
    assert not s.add(3) and s.add(4) and len(s) == 4
    assert s.discard(0) and not s.discard(0) and 0 not in s
    assert PieceSet.from_bytes(s.to_bytes(), 10).to_bytes() == s.to_bytes()


def test_pieceset_full_and_validation() -> None:
    for n in (0, 1, 7, 8, 9, 409_000):
        full = PieceSet.full(n)
        assert len(full) == n and full.complete
    assert PieceSet.full(10).to_bytes() == b"\xff\xc0"
    with pytest.raises(ValueError):
        PieceSet.from_bytes(b"\xff\xe0", 10)  # spare bit set
    with pytest.raises(ValueError):
        PieceSet.from_bytes(b"\xff", 10)
    with pytest.raises(IndexError):
        PieceSet(4).add(4)


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n)))))
@settings(max_examples=100, deadline=None)
def test_pieceset_behaves_like_a_set(case: tuple[int, set[int]]) -> None:
    n, members = case
    members = {m for m in members if m < n}
    s = PieceSet(n)
    for m in members:
        s.add(m)
    assert list(s) == sorted(members)
    assert len(s) == len(members)
    assert list(PieceSet.from_bytes(s.to_bytes(), n)) == sorted(members)


# --- what gets picked -----------------------------------------------------------------------


def test_rarest_first() -> None:
    picker = setup_picker("3132333")
    first, second, third = picked_pieces(picker.pick("A", everything(7), 3))
    assert (first, second) == (1, 3)
    assert third in {0, 2, 4, 5, 6}


def test_have_and_unavailable_pieces_are_skipped() -> None:
    picker = setup_picker("2213", "* ")
    peer_has = pieces(" ** ")
    assert picked_pieces(picker.pick("A", peer_has, 10)) == [2, 1]


def test_nothing_enabled_nothing_picked() -> None:
    picker = setup_picker("1111", enable=False)
    assert picker.pick("A", everything(4), 10) == []
    assert not picker.interesting(everything(4))
    picker.set_file_priority(0, NORMAL)
    assert picker.interesting(everything(4))
    assert not picker.interesting(pieces("    "))
    assert picker.interesting(pieces("  * "), only={2})
    assert not picker.interesting(pieces("  * "), only={1, 3})


def test_blocks_of_a_piece_in_order_and_the_last_one_shorter() -> None:
    layout = Layout.file_aligned([2 * BLOCK_SIZE + 100])
    picker = Picker(layout)
    picker.set_file_priority(0, NORMAL)
    assert picker.pick("A", everything(1), 2) == [
        Block(0, 0, BLOCK_SIZE),
        Block(0, BLOCK_SIZE, BLOCK_SIZE),
    ]
    assert picker.pick("B", everything(1), 1) == [Block(0, 2 * BLOCK_SIZE, 100)]
    assert picker.pick("C", everything(1), 0) == []


def test_high_priority_file_first_then_rarest() -> None:
    # Three files of two pieces; file 1 is what apt asked for, though its pieces are common.
    layout = Layout.file_aligned([2 * BLOCK_SIZE] * 3, BLOCK_SIZE)
    picker = Picker(layout, rng=random.Random(1))
    for p, count in enumerate("119911"):
        for _ in range(int(count)):
            picker.inc_availability(p)
    picker.set_file_priority(0, NORMAL)
    picker.set_file_priority(1, HIGH)
    picked = picked_pieces(picker.pick("A", everything(6), 10))
    assert sorted(picked[:2]) == [2, 3]
    assert sorted(picked[2:]) == [0, 1]  # file 2 is not enabled
    assert picker.file_priority(1) == HIGH and picker.file_priority(2) == 0


def test_started_pieces_are_finished_first() -> None:
    picker = setup_picker("3331", blocks=4)
    first = picker.pick("A", pieces("*   "), 1)
    assert first == [Block(0, 0, BLOCK_SIZE)]
    # Piece 3 is rarer, but piece 0 is under way.
    assert picked_pieces(picker.pick("B", everything(4), 3)) == [0, 0, 0]
    assert picked_pieces(picker.pick("B", everything(4), 1)) == [3]


def test_random_tie_break_is_injectable() -> None:
    firsts = {picker_first(seed) for seed in range(30)}
    assert len(firsts) > 3  # ties really are broken at random
    assert picker_first(5) == picker_first(5)  # and reproducibly


def picker_first(seed: int) -> int:
    return setup_picker("2222222222", seed=seed).pick("A", everything(10), 1)[0].piece


def test_only_restricts_to_allowed_fast_pieces() -> None:
    picker = setup_picker("1111")
    assert picked_pieces(picker.pick("A", everything(4), 4, only={2})) == [2]


def test_requested_blocks_are_not_picked_again_before_endgame() -> None:
    picker = setup_picker("11", blocks=2)
    a = picker.pick("A", everything(2), 2)
    b = picker.pick("B", everything(2), 2)
    assert not set(a) & set(b)
    assert picker.requests_of("A") == sorted(a)


# --- endgame --------------------------------------------------------------------------------


def test_endgame_duplicates_and_cancels() -> None:
    clock = Clock()
    picker = setup_picker("22", blocks=2, clock=clock)
    a = picker.pick("A", everything(2), 4)
    assert len(a) == 4 and picker.in_endgame()
    assert picker.pick("B", everything(2), 2) == []  # A's blocks are not late yet
    clock.now += ENDGAME_DELAY
    b = picker.pick("B", everything(2), 2)
    assert len(b) == 2 and set(b) <= set(a)  # duplicates of A's requests
    # A third peer gets the blocks asked of only one peer so far.
    c = picker.pick("C", everything(2), 2)
    assert set(c) == set(a) - set(b)
    got = picker.block_received("B", b[0].piece, b[0].begin)
    assert got.new and sorted(got.cancels) == [("A", b[0])]
    assert b[0] not in picker.requests_of("A")
    again = picker.block_received("A", b[0].piece, b[0].begin)
    assert not again.new and again.cancels == []


def test_no_endgame_while_any_wanted_block_is_unrequested() -> None:
    picker = setup_picker("11", blocks=1)
    picker.pick("A", pieces("* "), 1)
    assert not picker.in_endgame()
    assert picker.pick("A", pieces("* "), 1) == []  # piece 1 is free: no duplicates yet
    # A piece nobody has yet (a peer still fetching the file announces it later) holds
    # endgame back: asking B for what A was asked would only double the bytes sent.
    clock = Clock()
    picker = setup_picker("10", clock=clock)
    picker.pick("A", pieces("* "), 1)
    clock.now += ENDGAME_DELAY
    assert not picker.in_endgame()
    assert picker.pick("B", pieces("* "), 1) == []
    picker.inc_availability(1)
    picker.pick("A", pieces("**"), 1)  # now every wanted piece is requested
    assert picker.in_endgame()
    assert picker.pick("B", pieces("* "), 1) == [Block(0, 0, BLOCK_SIZE)]  # piece 0 is late


# --- requests ending, data arriving ---------------------------------------------------------


def test_cancel_and_drop_free_the_blocks() -> None:
    picker = setup_picker("1", blocks=3)
    blocks = picker.pick("A", everything(1), 3)
    assert picker.cancel_request("A", 0, BLOCK_SIZE)
    assert not picker.cancel_request("A", 0, BLOCK_SIZE)
    assert not picker.cancel_request("Z", 0, 0)
    assert picker.pick("B", everything(1), 1) == [blocks[1]]
    assert picker.drop_peer("A") == [blocks[0], blocks[2]]
    assert picker.requests_of("A") == []
    assert picker.pick("C", everything(1), 2) == [blocks[0], blocks[2]]


def test_piece_complete_verified_and_file_complete() -> None:
    picker = setup_picker("11", blocks=2)
    blocks = picker.pick("A", pieces("* "), 2)
    assert picker.block_received("A", 0, 0) == (True, False, [])
    assert picker.block_received("A", 0, BLOCK_SIZE).piece_complete
    assert picker.partial_pieces() == [0]
    assert picker.piece_senders(0) == {"A"}
    picker.piece_verified(0)
    assert 0 in picker.have and not picker.is_wanted(0)
    assert picker.partial_pieces() == [] and picker.num_wanted == 1
    assert not picker.file_complete(0)
    assert picker.block_received("A", 0, 0).new is False  # we have it already
    assert len(blocks) == 2


def test_piece_failed_names_the_senders_and_frees_the_piece() -> None:
    picker = setup_picker("2", blocks=2)
    picker.pick("A", everything(1), 1)
    picker.pick("B", everything(1), 1)
    picker.block_received("A", 0, 0)
    assert picker.block_received("B", 0, BLOCK_SIZE).piece_complete
    assert picker.piece_failed(0) == {"A", "B"}
    assert picker.partial_pieces() == [] and picker.is_wanted(0)
    assert len(picker.pick("C", everything(1), 5)) == 2


def test_unrequested_and_misaligned_blocks() -> None:
    picker = setup_picker("10", blocks=2)
    assert picker.block_received("W", 0, BLOCK_SIZE).new  # e.g. a web seed stream
    assert not picker.block_received("W", 0, 100).new
    assert not picker.block_received("W", 0, 5 * BLOCK_SIZE).new
    picker.set_file_priority(0, 0)
    assert not picker.block_received("W", 1, 0).new  # no longer wanted and not started
    assert picker.block_received("W", 0, 0).piece_complete  # started: kept


def test_availability_bookkeeping() -> None:
    picker = setup_picker("000")
    bits = pieces("* *")
    picker.add_bitfield(bits)
    picker.add_seed()
    assert [picker.availability(p) for p in range(3)] == [2, 1, 2]
    picker.remove_bitfield(bits)
    picker.remove_seed()
    picker.inc_availability(1)
    picker.dec_availability(1)
    assert [picker.availability(p) for p in range(3)] == [0, 0, 0]


def test_v1_shared_pieces_take_the_highest_priority() -> None:
    # Files of 1.5 pieces each: piece 1 holds the end of file 0 and the start of file 1.
    pl = BLOCK_SIZE
    layout = Layout.v1([pl + pl // 2, pl + pl // 2], pl)
    picker = Picker(layout)
    picker.set_file_priority(0, NORMAL)
    assert [picker.is_wanted(p) for p in range(3)] == [True, True, False]
    picker.set_file_priority(1, HIGH)
    picker.set_file_priority(0, 0)
    assert [picker.is_wanted(p) for p in range(3)] == [False, True, True]
    for p in range(3):
        picker.inc_availability(p)
    assert picked_pieces(picker.pick("A", everything(3), 5)) in ([1, 2], [2, 1])


def test_have_set_size_must_match() -> None:
    with pytest.raises(ValueError):
        Picker(Layout.file_aligned([1, 1]), have=PieceSet(3))


def test_layout1_swarm_scale() -> None:
    rng = random.Random(2)
    sizes = [int(rng.lognormvariate(11, 1.9)) for _ in range(63_440)]
    layout = Layout.file_aligned(sizes)
    picker = Picker(layout, rng=rng)
    big = max(range(len(sizes)), key=sizes.__getitem__)
    picker.set_file_priority(big, HIGH)
    picker.add_seed()
    blocks = picker.pick("mirror", everything(layout.num_pieces), 64)
    assert len(blocks) == 64
    assert all(b.piece in layout.file_pieces(big) for b in blocks)


# --- a whole download, randomised ---------------------------------------------------------


@given(
    st.integers(1, 6),
    st.lists(st.integers(0, 4 * BLOCK_SIZE), min_size=1, max_size=6),
    st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_random_swarm_downloads_everything(n_peers: int, sizes: list[int], seed: int) -> None:
    """Peers with random pieces, random failures and cancels: every invariant holds and
    the download completes."""
    rng = random.Random(seed)
    layout = Layout.file_aligned(sizes, 2 * BLOCK_SIZE)
    picker = Picker(layout, rng=rng)
    n = layout.num_pieces
    peers = {f"p{i}": PieceSet(n) for i in range(n_peers)}
    for p in range(n):
        owners = rng.sample(sorted(peers), rng.randint(1, n_peers))
        for o in owners:
            peers[o].add(p)
    for bits in peers.values():
        picker.add_bitfield(bits)
    for f in range(len(sizes)):
        picker.set_file_priority(f, rng.choice([NORMAL, HIGH]))
    received: set[tuple[int, int]] = set()
    for _ in range(2000):
        if picker.num_wanted == 0:
            break
        name = rng.choice(sorted(peers))
        endgame = picker.in_endgame()
        got = picker.pick(name, peers[name], rng.randint(1, 4))
        for block in got:
            assert block.piece in peers[name] and block.piece not in picker.have
            assert (block.piece, block.begin) not in received
            assert 0 < block.length <= BLOCK_SIZE
            assert block.begin + block.length <= layout.piece_size(block.piece)
        assert len(set(got)) == len(got)
        if not endgame:
            others = {b for peer in peers if peer != name for b in picker.requests_of(peer)}
            assert not others & set(got)
        for block in got:
            roll = rng.random()
            if roll < 0.1:
                picker.cancel_request(name, block.piece, block.begin)
                continue
            result = picker.block_received(name, block.piece, block.begin)
            if result.new:
                received.add((block.piece, block.begin))
            if result.piece_complete:
                received = {r for r in received if r[0] != block.piece}
                if rng.random() < 0.2:
                    assert name in picker.piece_failed(block.piece)
                else:
                    picker.piece_verified(block.piece)
    assert picker.num_wanted == 0
    assert len(picker.have) == n
    assert all(picker.file_complete(f) for f in range(len(sizes)))


def test_outstanding_requests_of_a_piece_had_another_way() -> None:
    """The mirror completes a piece peers were asked for: each request is listed once
    (to be cancelled), and none remains once the piece is verified."""
    picker = setup_picker("22", blocks=2)
    a = picker.pick("A", everything(2), 2)  # both blocks of the rarest-first piece
    piece = a[0].piece
    b = picker.pick("B", everything(2), 4)  # the other piece (no duplicates: none late)
    asked = sorted((peer, blk) for peer, blk in picker.outstanding(piece))
    want = sorted([("A", blk) for blk in a] + [("B", blk) for blk in b if blk.piece == piece])
    assert asked == want and len(asked) >= 2
    picker.piece_verified(piece)
    assert picker.outstanding(piece) == []
    assert all(blk.piece != piece for blk in picker.requests_of("A") + picker.requests_of("B"))
    assert picker.outstanding(1 - piece) != []  # the other piece's requests stay
