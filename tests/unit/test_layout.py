"""Piece/file mapping for v1 and file-aligned layouts, over grids of parameters."""

from __future__ import annotations

import random
import time

import pytest

from debtorrent.errors import MetainfoError
from debtorrent.torrent.layout import BLOCK_SIZE, LAYOUT1_PIECE_LENGTH, Layout, Segment

KIB = 1024

SIZE_SETS = {
    "one": [1],
    "exact": [64 * KIB],
    "mixed": [0, 1, 16 * KIB, 16 * KIB + 1, 100 * KIB, 0, 3 * 64 * KIB - 1, 0],
    "zeros-around": [0, 0, 50_000, 0],
    "many-small": [7] * 30,
    "random": [random.Random(4).randrange(0, 300 * KIB) for _ in range(40)],
}
PIECE_LENGTHS = [16 * KIB, 32 * KIB, 64 * KIB, 256 * KIB]


def brute_force(sizes: list[int], piece_length: int, aligned: bool) -> list[list[Segment]]:
    """Every piece's segments, by intersecting each piece's byte range with every file's."""
    spans = []  # (file, first byte, end) in the concatenation of all files
    offset = 0
    for f, size in enumerate(sizes):
        spans.append((f, offset, offset + size))
        offset += size
    if aligned:
        ranges = [
            (start, min(start + piece_length, end))
            for _, begin, end in spans
            for start in range(begin, end, piece_length)
        ]
    else:
        ranges = [(a, min(a + piece_length, offset)) for a in range(0, offset, piece_length)]
    return [
        [
            Segment(f, max(a, begin) - begin, min(b, end) - max(a, begin))
            for f, begin, end in spans
            if min(b, end) > max(a, begin)
        ]
        for a, b in ranges
    ]


@pytest.mark.parametrize("aligned", [False, True], ids=["v1", "aligned"])
@pytest.mark.parametrize("piece_length", PIECE_LENGTHS)
@pytest.mark.parametrize("name", SIZE_SETS)
def test_layout_matches_brute_force(name: str, piece_length: int, aligned: bool) -> None:
    sizes = SIZE_SETS[name]
    layout = Layout(sizes, piece_length, aligned=aligned)
    expected = brute_force(sizes, piece_length, aligned)
    assert layout.num_pieces == len(expected)
    assert layout.total_size == sum(sizes)
    assert layout.num_files == len(sizes)
    assert layout.bitfield_length == (len(expected) + 7) // 8
    offset = 0
    for p, segs in enumerate(expected):
        assert layout.piece_files(p) == segs
        size = sum(s.length for s in segs)
        assert layout.piece_size(p) == size
        if aligned:
            assert len(segs) == 1
        else:
            assert layout.piece_offset(p) == offset
        assert layout.piece_offset(p) == layout.file_offset(segs[0].file_index) + segs[0].offset
        assert layout.piece_file(p) == segs[0].file_index
        offset += size
    for f, size in enumerate(sizes):
        covering = [p for p, segs in enumerate(expected) if any(s.file_index == f for s in segs)]
        assert list(layout.file_pieces(f)) == covering
        assert layout.file_size(f) == size
        if size == 0:
            assert len(layout.file_pieces(f)) == 0


@pytest.mark.parametrize(
    ("size", "blocks", "last"),
    [
        (1, 1, 1),
        (BLOCK_SIZE, 1, BLOCK_SIZE),
        (BLOCK_SIZE + 1, 2, 1),
        (LAYOUT1_PIECE_LENGTH, 16, BLOCK_SIZE),
        (LAYOUT1_PIECE_LENGTH - 5, 16, BLOCK_SIZE - 5),
    ],
)
def test_blocks(size: int, blocks: int, last: int) -> None:
    layout = Layout.file_aligned([size])
    assert layout.blocks_in_piece(0) == blocks
    assert layout.block_size(0, blocks - 1) == last
    assert all(layout.block_size(0, b) == BLOCK_SIZE for b in range(blocks - 1))
    with pytest.raises(IndexError):
        layout.block_size(0, blocks)


def test_layout1_numbering_runs_on_across_files() -> None:
    pl = LAYOUT1_PIECE_LENGTH
    layout = Layout.file_aligned([pl * 2 + 1, 0, 10, pl])
    assert layout.num_pieces == 3 + 0 + 1 + 1
    assert [layout.file_pieces(f) for f in range(4)] == [
        range(0, 3),
        range(3, 3),
        range(3, 4),
        range(4, 5),
    ]
    assert [layout.piece_size(p) for p in range(5)] == [pl, pl, 1, 10, pl]
    assert layout.piece_files(3) == [Segment(2, 0, 10)]


def test_v1_piece_spans_files_and_skips_empty_ones() -> None:
    layout = Layout.v1([10, 0, 20_000, 0, 30_000], 16 * KIB)
    assert layout.num_pieces == 4
    assert layout.piece_files(0) == [Segment(0, 0, 10), Segment(2, 0, 16 * KIB - 10)]
    assert layout.piece_files(1) == [
        Segment(2, 16 * KIB - 10, 20_000 - 16 * KIB + 10),
        Segment(4, 0, 2 * 16 * KIB - 20_010),
    ]
    assert layout.piece_size(3) == 50_010 - 3 * 16 * KIB
    assert layout.file_pieces(1) == range(0)


@pytest.mark.parametrize(
    ("sizes", "piece_length"),
    [([-1], 16 * KIB), ([1], 0), ([1], -16), ([1], 1.5), (["x"], 16 * KIB), ([2**63], 16 * KIB)],
)
def test_bad_input(sizes: list[object], piece_length: object) -> None:
    with pytest.raises(MetainfoError):
        Layout.v1(sizes, piece_length)  # type: ignore[arg-type]


def test_out_of_range_indices() -> None:
    layout = Layout.file_aligned([1, 2])
    for call in (layout.piece_size, layout.piece_files, layout.piece_offset, layout.piece_file):
        with pytest.raises(IndexError):
            call(2)
        with pytest.raises(IndexError):
            call(-1)
    with pytest.raises(IndexError):
        layout.file_pieces(2)


def test_empty_layouts() -> None:
    for layout in (Layout.v1([], 16 * KIB), Layout.file_aligned([0, 0])):
        assert layout.num_pieces == 0
        assert layout.total_size == 0
        assert layout.bitfield_length == 0


def test_bookworm_scale_builds_fast() -> None:
    rng = random.Random(7)
    # Shaped like bookworm main: 63,440 files, median ~58 KiB, a long tail.
    sizes = [int(rng.lognormvariate(11, 1.9)) for _ in range(63_440)]
    start = time.perf_counter()
    layout = Layout.file_aligned(sizes)
    v1 = Layout.v1(sizes, 1 << 20)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    expected = sum(-(-s // LAYOUT1_PIECE_LENGTH) for s in sizes)
    assert layout.num_pieces == expected
    last = layout.num_pieces - 1
    assert layout.piece_file(last) == max(f for f, s in enumerate(sizes) if s)
    for f in rng.sample(range(len(sizes)), 300):
        assert sum(layout.piece_size(p) for p in layout.file_pieces(f)) == sizes[f]
    assert v1.num_pieces == -(-sum(sizes) // (1 << 20))
