"""Which blocks to ask which peer for: the piece picker, with no I/O at all.

The picker is built from a layout (piece count, piece sizes, the pieces of each file)
and is told everything else: what each peer has (availability), which pieces we have
verified, which files are enabled and how urgently, which blocks were requested from
whom and which arrived. From that, :meth:`Picker.pick` chooses blocks for one peer:

1. only pieces of enabled files that we do not have, and that the peer has;
2. pieces of higher-priority files first: the file apt is waiting for is
   :data:`HIGH`, other enabled files (being seeded on) :data:`NORMAL`;
3. within a priority, pieces already started first, so they complete, get verified and
   can be announced and served sooner, and fewer half pieces pile up;
4. then the rarest (fewest peers have it), ties broken at random by an injectable RNG
   so that peers starting together do not all pick the same piece;
5. **endgame**: once every block still missing of every wanted piece is requested, a
   peer may be asked for blocks already requested from others (the ones
   with fewest requesters first); when one copy arrives, :meth:`Picker.block_received`
   says which duplicate requests to cancel.

A web seed (the mirror) is just another peer: register it with :meth:`Picker.add_seed`
and let it pick like the others.

Cost: availability is one ``array`` entry per piece (409,000 for bookworm ``main``);
the pieces we want are a dict keyed by piece, which stays small because nothing is
wanted until apt asks for its file. A pick is O(wanted pieces) plus a sort of the ones
the peer has.

Peers are any hashable object (the connection, its address, its peer id).
"""

from __future__ import annotations

import heapq
import re
import time
from array import array
from collections.abc import Callable, Container, Hashable, Iterator
from random import Random
from typing import NamedTuple, Protocol

from debtorrent.torrent.layout import BLOCK_SIZE, Segment

ENDGAME_DELAY = 1.0  # seconds a block is waited for before a second peer is asked too

__all__ = [
    "DISABLED",
    "HIGH",
    "NORMAL",
    "Block",
    "BlockResult",
    "LayoutView",
    "Picker",
    "PieceSet",
]

#: File priorities: a disabled file is never downloaded; :data:`HIGH` is what apt waits for.
DISABLED = 0
NORMAL = 1
HIGH = 7

Peer = Hashable

_NONZERO_RUNS = re.compile(rb"[^\x00]+")
_BIT_OFFSETS = [tuple(j for j in range(8) if byte & (0x80 >> j)) for byte in range(256)]

_FREE, _REQUESTED, _RECEIVED = 0, 1, 2


class LayoutView(Protocol):
    """What the picker needs of a :class:`~debtorrent.torrent.layout.Layout`."""

    num_pieces: int
    aligned: bool

    def piece_size(self, piece: int) -> int: ...
    def file_pieces(self, file_index: int) -> range: ...
    def piece_files(self, piece: int) -> list[Segment]: ...


class PieceSet:
    """A set of piece numbers stored as a BEP 3 bitfield (bit 7 of byte 0 is piece 0).

    What a peer has (from its bitfield and ``have`` messages) and what we have; the
    bytes go on the wire unchanged. ``len()`` is the number of members, :attr:`size`
    the number of pieces in the torrent.
    """

    __slots__ = ("_bits", "_count", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._bits = bytearray((size + 7) // 8)
        self._count = 0

    @classmethod
    def from_bytes(cls, bits: bytes, size: int) -> PieceSet:
        """From a bitfield already checked by the wire decoder (length, spare bits)."""
        if len(bits) != (size + 7) // 8:
            raise ValueError(f"bitfield of {len(bits)} bytes for {size} pieces")
        spare = len(bits) * 8 - size
        if spare and bits[-1] & ((1 << spare) - 1):
            raise ValueError("bitfield has spare bits set")
        new = cls(0)
        new.size = size
        new._bits = bytearray(bits)
        new._count = int.from_bytes(bits, "big").bit_count()
        return new

    @classmethod
    def full(cls, size: int) -> PieceSet:
        bits = bytearray(b"\xff" * ((size + 7) // 8))
        if size % 8:
            bits[-1] = (0xFF << (8 - size % 8)) & 0xFF
        return cls.from_bytes(bytes(bits), size)

    def __contains__(self, piece: object) -> bool:
        if not isinstance(piece, int) or not 0 <= piece < self.size:
            return False
        return bool(self._bits[piece >> 3] & (0x80 >> (piece & 7)))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        """Members in increasing order; skips zero bytes in C, so sparse sets are cheap."""
        bits = self._bits
        for run in _NONZERO_RUNS.finditer(bits):
            for byte_index in range(run.start(), run.end()):
                base = byte_index << 3
                for j in _BIT_OFFSETS[bits[byte_index]]:
                    yield base + j

    def __repr__(self) -> str:
        return f"<PieceSet {self._count}/{self.size}>"

    @property
    def complete(self) -> bool:
        return self._count == self.size

    def add(self, piece: int) -> bool:
        """Add *piece*; return whether it was new (count availability only then)."""
        if not 0 <= piece < self.size:
            raise IndexError(f"piece {piece} out of range")
        mask = 0x80 >> (piece & 7)
        if self._bits[piece >> 3] & mask:
            return False
        self._bits[piece >> 3] |= mask
        self._count += 1
        return True

    def discard(self, piece: int) -> bool:
        """Remove *piece*; return whether it was there."""
        if piece not in self:
            return False
        self._bits[piece >> 3] &= ~(0x80 >> (piece & 7)) & 0xFF
        self._count -= 1
        return True

    def to_bytes(self) -> bytes:
        return bytes(self._bits)


class Block(NamedTuple):
    """One request: ``length`` bytes at ``begin`` inside ``piece``."""

    piece: int
    begin: int
    length: int


class BlockResult(NamedTuple):
    """What :meth:`Picker.block_received` learned.

    ``new``: the block was missing and is now stored (else drop the data, it is a
    duplicate or not wanted). ``piece_complete``: every block of the piece is in; hash
    it, then call :meth:`Picker.piece_verified` or :meth:`Picker.piece_failed`.
    ``cancels``: other peers that were asked for the same block (endgame): send them
    ``cancel``.
    """

    new: bool
    piece_complete: bool
    cancels: list[tuple[Peer, Block]]


class _Partial:
    """A piece with blocks requested or received; dropped once verified or failed."""

    __slots__ = ("asked", "free", "received", "requesters", "senders", "state")

    def __init__(self, num_blocks: int) -> None:
        self.state = bytearray(num_blocks)  # _FREE, _REQUESTED or _RECEIVED per block
        self.free = num_blocks
        self.received = 0
        self.requesters: dict[int, list[Peer]] = {}
        self.senders: dict[int, Peer] = {}
        self.asked: dict[int, float] = {}  # block -> when it was first requested


class Picker:
    """The piece picker of one swarm. See the module docstring for the policy."""

    def __init__(
        self,
        layout: LayoutView,
        *,
        have: PieceSet | None = None,
        rng: Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        endgame_delay: float = ENDGAME_DELAY,
    ) -> None:
        self.layout = layout
        self.clock = clock
        self.endgame_delay = endgame_delay
        self.num_pieces = layout.num_pieces
        self.have = have if have is not None else PieceSet(layout.num_pieces)
        if self.have.size != self.num_pieces:
            raise ValueError("have-set size does not match the layout")
        self.rng = rng if rng is not None else Random()
        self._avail = array("i", [0]) * self.num_pieces
        self._seeds = 0
        self._file_prio: dict[int, int] = {}
        self._wanted: dict[int, int] = {}  # piece -> priority, for pieces we lack
        self._partial: dict[int, _Partial] = {}
        self._requests: dict[Peer, set[tuple[int, int]]] = {}  # peer -> {(piece, block)}

    # --- availability ---------------------------------------------------------------------

    def availability(self, piece: int) -> int:
        """How many connected peers (seeds included) have *piece*."""
        return self._avail[piece] + self._seeds

    def inc_availability(self, piece: int) -> None:
        """A peer announced *piece* (``have``); call only if it is new for that peer."""
        self._avail[piece] += 1

    def dec_availability(self, piece: int) -> None:
        self._avail[piece] -= 1

    def add_bitfield(self, pieces: PieceSet) -> None:
        """A peer's bitfield arrived."""
        avail = self._avail
        for p in pieces:
            avail[p] += 1

    def remove_bitfield(self, pieces: PieceSet) -> None:
        """A peer left: pass what it had (its bitfield plus the ``have``s since)."""
        avail = self._avail
        for p in pieces:
            avail[p] -= 1

    def add_seed(self) -> None:
        """A peer has everything (``have all``, a web seed): counted once, not per piece."""
        self._seeds += 1

    def remove_seed(self) -> None:
        self._seeds -= 1

    # --- what we want -----------------------------------------------------------------------

    def set_file_priority(self, file_index: int, priority: int) -> None:
        """Enable a file (:data:`NORMAL`, :data:`HIGH`, or any positive level) or disable it.

        A v1 piece shared by several files takes the highest priority among them. Blocks
        of a disabled file already requested may still arrive and are kept.
        """
        if priority < 0:
            raise ValueError("priority must be >= 0")
        if priority:
            self._file_prio[file_index] = priority
        else:
            self._file_prio.pop(file_index, None)
        pieces = self.layout.file_pieces(file_index)
        if not pieces:
            return
        shared = () if self.layout.aligned else (pieces[0], pieces[-1])
        for p in pieces:
            if p in self.have:
                continue
            prio = self._piece_priority(p) if p in shared else priority
            if prio:
                self._wanted[p] = prio
            else:
                self._wanted.pop(p, None)

    def file_priority(self, file_index: int) -> int:
        return self._file_prio.get(file_index, DISABLED)

    def _piece_priority(self, piece: int) -> int:
        return max(self._file_prio.get(s.file_index, 0) for s in self.layout.piece_files(piece))

    def is_wanted(self, piece: int) -> bool:
        return piece in self._wanted

    @property
    def num_wanted(self) -> int:
        """Pieces of enabled files still missing."""
        return len(self._wanted)

    def file_complete(self, file_index: int) -> bool:
        have = self.have
        return all(p in have for p in self.layout.file_pieces(file_index))

    def interesting(self, peer_has: Container[int], *, only: Container[int] | None = None) -> bool:
        """Whether the peer has a piece we want (and that is in *only*, if given).

        Send ``interested`` if so. *only* is the same restriction as in :meth:`pick`, e.g.
        the pieces whose hashes are known.
        """
        if only is None:
            return any(p in peer_has for p in self._wanted)
        return any(p in peer_has and p in only for p in self._wanted)

    # --- picking ----------------------------------------------------------------------------

    def pick(
        self,
        peer: Peer,
        peer_has: Container[int],
        n_blocks: int,
        *,
        only: Container[int] | None = None,
    ) -> list[Block]:
        """Choose up to *n_blocks* blocks to request from *peer* and mark them requested.

        *peer_has* is what the peer has (a :class:`PieceSet`); *only*, if given, limits
        the choice further (BEP 6 allowed-fast pieces while choked).
        """
        if n_blocks <= 0:
            return []
        partial = self._partial
        avail = self._avail
        rand = self.rng.random
        ranked = [
            (-prio, p not in partial, avail[p], rand(), p)
            for p, prio in self._wanted.items()
            if p in peer_has and (only is None or p in only)
        ]
        # A heap, not a sort: a pick usually needs a few pieces out of many wanted.
        heap = list(ranked)
        heapq.heapify(heap)
        picked: list[Block] = []
        while heap:
            p = heapq.heappop(heap)[-1]
            state = partial.get(p)
            if state is None:
                state = partial[p] = _Partial(self._blocks(p))
            elif not state.free:
                continue
            for b, s in enumerate(state.state):
                if s == _FREE:
                    picked.append(self._mark(peer, p, state, b))
                    if len(picked) == n_blocks:
                        return picked
        if self.in_endgame():
            picked += self._pick_busy(peer, [r[-1] for r in ranked], n_blocks - len(picked))
        return picked

    def _pick_busy(self, peer: Peer, pieces: list[int], n_blocks: int) -> list[Block]:
        """Endgame: blocks requested from others, not yet from *peer*, least-asked first,
        but only once they are late (asked at least ``endgame_delay`` ago).

        The wanted set is only what apt is waiting for, a few files: without the delay
        every last block of every file would be asked of two peers and sent twice.
        """
        mine = self._requests.get(peer, set())
        late = self.clock() - self.endgame_delay
        busy = []
        for p in pieces:
            state = self._partial.get(p)
            if state is None:
                continue
            for b, who in state.requesters.items():
                if (p, b) not in mine and state.asked.get(b, late) <= late:
                    busy.append((len(who), p, b))
        busy.sort()
        return [self._mark(peer, p, self._partial[p], b) for _, p, b in busy[:n_blocks]]

    def in_endgame(self) -> bool:
        """Every block still missing of every wanted piece is requested already.

        Pieces nobody has yet count as not requested: while a peer is still fetching a
        file from the mirror and announcing it piece by piece, asking a second peer
        for what the first was asked only doubles the bytes sent (measured: 1.09 x
        uploaded per byte kept in a four-daemon fleet that started together).
        """
        partial = self._partial
        for p in self._wanted:
            state = partial.get(p)
            if state is None or state.free:
                return False
        return bool(self._wanted)

    def _blocks(self, piece: int) -> int:
        return -(-self.layout.piece_size(piece) // BLOCK_SIZE)

    def _block(self, piece: int, b: int) -> Block:
        begin = b * BLOCK_SIZE
        return Block(piece, begin, min(BLOCK_SIZE, self.layout.piece_size(piece) - begin))

    def _mark(self, peer: Peer, piece: int, state: _Partial, b: int) -> Block:
        if state.state[b] == _FREE:
            state.state[b] = _REQUESTED
            state.free -= 1
            state.asked[b] = self.clock()
        state.requesters.setdefault(b, []).append(peer)
        self._requests.setdefault(peer, set()).add((piece, b))
        return self._block(piece, b)

    # --- requests going away ----------------------------------------------------------------

    def cancel_request(self, peer: Peer, piece: int, begin: int) -> bool:
        """A request ended without data (rejected, timed out, cancelled, choked).

        The block becomes free again unless another peer was asked for it too. Returns
        whether *peer* had that request.
        """
        b = begin // BLOCK_SIZE
        mine = self._requests.get(peer)
        if not mine or (piece, b) not in mine:
            return False
        mine.discard((piece, b))
        state = self._partial[piece]
        who = state.requesters[b]
        who.remove(peer)
        if not who:
            del state.requesters[b]
            if state.state[b] == _REQUESTED:
                state.state[b] = _FREE
                state.free += 1
        return True

    def drop_peer(self, peer: Peer) -> list[Block]:
        """Forget every outstanding request to *peer* (choked us, left); return them."""
        dropped = []
        for piece, b in sorted(self._requests.get(peer, ())):
            block = self._block(piece, b)
            self.cancel_request(peer, piece, block.begin)
            dropped.append(block)
        self._requests.pop(peer, None)
        return dropped

    def requests_of(self, peer: Peer) -> list[Block]:
        """The blocks currently requested from *peer*."""
        return [self._block(p, b) for p, b in sorted(self._requests.get(peer, ()))]

    # --- data arriving ----------------------------------------------------------------------

    def block_received(self, peer: Peer, piece: int, begin: int) -> BlockResult:
        """A block arrived from *peer* (requested from it or not)."""
        if begin % BLOCK_SIZE or piece in self.have:
            return BlockResult(False, False, [])
        state = self._partial.get(piece)
        if state is None:
            if piece not in self._wanted:
                return BlockResult(False, False, [])
            state = self._partial[piece] = _Partial(self._blocks(piece))
        b = begin // BLOCK_SIZE
        if b >= len(state.state) or state.state[b] == _RECEIVED:
            self.cancel_request(peer, piece, begin)
            return BlockResult(False, False, [])
        if state.state[b] == _FREE:
            state.free -= 1
        state.state[b] = _RECEIVED
        state.received += 1
        state.senders[b] = peer
        cancels = []
        block = self._block(piece, b)
        for other in state.requesters.pop(b, ()):
            self._requests[other].discard((piece, b))
            if other != peer:
                cancels.append((other, block))
        return BlockResult(True, state.received == len(state.state), cancels)

    def outstanding(self, piece: int) -> list[tuple[Peer, Block]]:
        """Requests for blocks of *piece* still waiting for data, by peer: once the
        piece is had some other way (the mirror), each is worth a ``cancel``."""
        state = self._partial.get(piece)
        if state is None:
            return []
        return [
            (peer, self._block(piece, b))
            for b, who in sorted(state.requesters.items())
            for peer in who
        ]

    def piece_verified(self, piece: int) -> None:
        """The piece's hash matched: we have it. Announce it with ``have`` now."""
        self.have.add(piece)
        self._wanted.pop(piece, None)
        self._forget(piece)

    def piece_failed(self, piece: int) -> set[Peer]:
        """The piece's hash did not match: all its blocks are free again.

        Returns the peers that sent its blocks, for the caller to distrust or ban.
        """
        state = self._partial.get(piece)
        senders = set(state.senders.values()) if state else set()
        self._forget(piece)
        return senders

    def _forget(self, piece: int) -> None:
        state = self._partial.pop(piece, None)
        if state is None:
            return
        for b, who in state.requesters.items():
            for peer in who:
                self._requests[peer].discard((piece, b))

    def partial_pieces(self) -> list[int]:
        """Pieces with blocks requested or received but not verified yet."""
        return sorted(self._partial)

    def piece_senders(self, piece: int) -> set[Peer]:
        state = self._partial.get(piece)
        return set(state.senders.values()) if state else set()

    def block_senders(self, piece: int) -> dict[int, Peer]:
        """Which peer sent each received block of a piece (block number -> peer), so a
        failed piece can be blamed on the right sender once a good copy is in."""
        state = self._partial.get(piece)
        return dict(state.senders) if state else {}
