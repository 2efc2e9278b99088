"""Where each piece's bytes live: the mapping between pieces, blocks and files.

Two layouts share one class:

- **v1** (BEP 3): the files are concatenated in order and cut into pieces of one fixed
  length, the last piece shorter; a piece may span several files.
- **file-aligned** ("layout 1" of the design, used for swarms derived from a ``Packages``
  index): every file is cut on its own into ``ceil(size / piece_length)`` pieces, the last
  one shorter, so a piece never spans two files and a zero-size file has no piece. Piece
  numbers run on across files in file order. This lets a single-piece file be checked
  against the SHA256 of the index and lets any file be served as soon as its own pieces
  are in.

A bookworm ``main`` index gives 63,000 files and 409,000 pieces, so nothing here is per
piece: the layout keeps a few ``array`` columns per file (size, byte offset, first piece)
and answers piece questions with :func:`bisect.bisect_right` over them.

Pieces are moved on the wire in blocks of :data:`BLOCK_SIZE` (16 KiB), the last block of
a piece shorter.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from typing import NamedTuple

from debtorrent.errors import MetainfoError

__all__ = ["BLOCK_SIZE", "LAYOUT1_PIECE_LENGTH", "Layout", "Segment"]

#: Bytes per request on the wire: what every BitTorrent client asks for and serves.
BLOCK_SIZE = 16 * 1024

#: The piece length of file-aligned swarms (layout 1): 256 KiB.
LAYOUT1_PIECE_LENGTH = 256 * 1024


class Segment(NamedTuple):
    """The part of one file a piece covers."""

    file_index: int
    offset: int  #: byte offset inside the file
    length: int


class Layout:
    """The piece/file geometry of one torrent or swarm.

    A v1 layout is immutable. A file-aligned one only grows (:meth:`extend`): a suite
    swarm (layout 2) adds files as indexes load, and nothing already numbered moves.

    Use :meth:`v1` or :meth:`file_aligned` rather than the constructor. Piece and file
    indices are checked and raise :class:`IndexError` when out of range, as a sequence
    would: they are programming errors here, since the wire decoder already rejects
    out-of-range indices from peers.
    """

    __slots__ = (
        "_first_piece",
        "_offsets",
        "_sizes",
        "aligned",
        "num_pieces",
        "piece_length",
        "total_size",
    )

    def __init__(self, file_sizes: Iterable[int], piece_length: int, *, aligned: bool) -> None:
        if isinstance(piece_length, bool) or not isinstance(piece_length, int):
            raise MetainfoError(f"piece length {piece_length!r} is not an integer")
        if piece_length <= 0:
            raise MetainfoError(f"piece length {piece_length} is not positive")
        try:
            sizes = array("q", file_sizes)
        except (TypeError, OverflowError) as exc:
            raise MetainfoError(f"file sizes must be 64-bit integers: {exc}") from None
        if sizes and min(sizes) < 0:
            raise MetainfoError("file sizes must not be negative")
        self._sizes = sizes
        self.piece_length = piece_length
        self.aligned = aligned
        #: byte offset of each file in the concatenation of all files, plus the total
        self._offsets = array("q", accumulate(sizes, initial=0))
        self.total_size = self._offsets[-1]
        if aligned:
            pl = piece_length
            counts = [(s + pl - 1) // pl for s in sizes]
            #: first piece of each file, plus the piece count; equal neighbours mean an
            #: empty file
            self._first_piece = array("q", accumulate(counts, initial=0))
            self.num_pieces = self._first_piece[-1]
        else:
            self._first_piece = array("q")
            self.num_pieces = -(-self.total_size // piece_length)

    def extend(self, file_sizes: Iterable[int]) -> range:
        """Append files to a file-aligned layout; returns the new files' indices."""
        if not self.aligned:
            raise ValueError("only a file-aligned layout grows")
        first = len(self._sizes)
        pl = self.piece_length
        for size in file_sizes:
            if not isinstance(size, int) or size < 0:
                raise MetainfoError(f"file size {size!r} is not a non-negative integer")
            self._sizes.append(size)
            self._offsets.append(self._offsets[-1] + size)
            self._first_piece.append(self._first_piece[-1] + (size + pl - 1) // pl)
        self.total_size = self._offsets[-1]
        self.num_pieces = self._first_piece[-1]
        return range(first, len(self._sizes))

    @classmethod
    def v1(cls, file_sizes: Iterable[int], piece_length: int) -> Layout:
        """Standard BEP 3 layout: fixed-length pieces over the concatenated files."""
        return cls(file_sizes, piece_length, aligned=False)

    @classmethod
    def file_aligned(
        cls, file_sizes: Iterable[int], piece_length: int = LAYOUT1_PIECE_LENGTH
    ) -> Layout:
        """Layout 1: each file cut into its own pieces, numbered on across files."""
        return cls(file_sizes, piece_length, aligned=True)

    def __repr__(self) -> str:
        kind = "file_aligned" if self.aligned else "v1"
        return (
            f"<Layout {kind} files={self.num_files} pieces={self.num_pieces} "
            f"piece_length={self.piece_length} total={self.total_size}>"
        )

    # --- files ------------------------------------------------------------------------

    @property
    def num_files(self) -> int:
        return len(self._sizes)

    @property
    def bitfield_length(self) -> int:
        """Bytes in a BEP 3 bitfield for this layout."""
        return (self.num_pieces + 7) // 8

    def file_size(self, file_index: int) -> int:
        return self._sizes[self._check_file(file_index)]

    def file_offset(self, file_index: int) -> int:
        """Byte offset of the file in the concatenation of all files."""
        return self._offsets[self._check_file(file_index)]

    def file_pieces(self, file_index: int) -> range:
        """The pieces holding any byte of the file (empty for a zero-size file)."""
        f = self._check_file(file_index)
        if self.aligned:
            return range(self._first_piece[f], self._first_piece[f + 1])
        size = self._sizes[f]
        if size == 0:
            return range(0)
        start = self._offsets[f]
        return range(start // self.piece_length, -(-(start + size) // self.piece_length))

    # --- pieces -----------------------------------------------------------------------

    def piece_size(self, piece: int) -> int:
        p = self._check_piece(piece)
        pl = self.piece_length
        if self.aligned:
            f = bisect_right(self._first_piece, p) - 1
            if p == self._first_piece[f + 1] - 1:
                return self._sizes[f] - (p - self._first_piece[f]) * pl
            return pl
        return min(pl, self.total_size - p * pl)

    def piece_offset(self, piece: int) -> int:
        """Byte offset of the piece's first byte in the concatenation of all files."""
        p = self._check_piece(piece)
        if self.aligned:
            f = bisect_right(self._first_piece, p) - 1
            return self._offsets[f] + (p - self._first_piece[f]) * self.piece_length
        return p * self.piece_length

    def piece_file(self, piece: int) -> int:
        """The file holding the piece's first byte (the only one, for file-aligned)."""
        p = self._check_piece(piece)
        if self.aligned:
            return bisect_right(self._first_piece, p) - 1
        # Empty files share an offset with their successor; bisect_right skips them.
        return bisect_right(self._offsets, p * self.piece_length) - 1

    def piece_files(self, piece: int) -> list[Segment]:
        """The file segments a piece covers, in order; zero-size files never appear."""
        offset = self.piece_offset(piece)
        remaining = self.piece_size(piece)
        f = self.piece_file(piece)
        segments: list[Segment] = []
        while remaining > 0:
            inside = offset - self._offsets[f]
            length = min(remaining, self._sizes[f] - inside)
            if length > 0:
                segments.append(Segment(f, inside, length))
                remaining -= length
                offset += length
            f += 1
        return segments

    # --- blocks -----------------------------------------------------------------------

    def blocks_in_piece(self, piece: int) -> int:
        return -(-self.piece_size(piece) // BLOCK_SIZE)

    def block_size(self, piece: int, block: int) -> int:
        """Length of block number *block* (not a byte offset) of *piece*."""
        size = self.piece_size(piece)
        if not 0 <= block < -(-size // BLOCK_SIZE):
            raise IndexError(f"block {block} out of range for piece {piece}")
        return min(BLOCK_SIZE, size - block * BLOCK_SIZE)

    # --- checks -----------------------------------------------------------------------

    def _check_piece(self, piece: int) -> int:
        if not 0 <= piece < self.num_pieces:
            raise IndexError(f"piece {piece} out of range (0..{self.num_pieces - 1})")
        return piece

    def _check_file(self, file_index: int) -> int:
        if not 0 <= file_index < len(self._sizes):
            raise IndexError(f"file {file_index} out of range (0..{len(self._sizes) - 1})")
        return file_index
