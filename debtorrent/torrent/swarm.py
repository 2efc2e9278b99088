"""A swarm: one torrent's pieces, its peers, its picker, and what verifies its data.

:class:`Swarm` holds what every swarm shares: the set of connected peers, our verified
pieces (``have``), the picker, and the block flow (pick, receive, verify, announce,
serve). How a piece is verified differs: a standard v1 torrent (:class:`TorrentSwarm`)
checks SHA1s from its metainfo; a swarm derived from a ``Packages`` index
(:class:`~debtorrent.torrent.packages.PackageSwarm`) checks SHA256s from the index or
from peers. Subclasses supply :meth:`Swarm.verify_piece` and react in
:meth:`Swarm.piece_verified`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gevent.event import Event

from debtorrent.errors import CacheError
from debtorrent.torrent.layout import BLOCK_SIZE, Layout
from debtorrent.torrent.metainfo import Metainfo
from debtorrent.torrent.picker import NORMAL, Picker, PieceSet
from debtorrent.torrent.storage import TorrentStore

if TYPE_CHECKING:
    from debtorrent.torrent.peer import PeerConnection
    from debtorrent.torrent.session import Session

__all__ = ["FileProgress", "Swarm", "SwarmInfo", "TorrentSwarm"]

log = logging.getLogger(__name__)

MAX_BUFFERED_PIECE = 1 << 20  # larger (v1) pieces are written block by block


@dataclass(frozen=True, slots=True)
class SwarmInfo:
    """What the status page shows of a swarm beyond its pieces and peers."""

    mirror: str | None = None  #: the mirror whose index it is (package swarms)
    index_date: str | None = None  #: the Release's Date, as the mirror wrote it
    files_enabled: int = 0  #: files asked for and not complete
    files_complete: int = 0  #: files verified and seeded


@dataclass(frozen=True, slots=True)
class FileProgress:
    """A file on its way through a swarm, as the status page lists it."""

    mirror: str
    path: str
    size: int
    done: int  #: bytes verified
    source: str  #: "peers", "mirror" or "peers (fetching from the mirror)"
    waiting: float  #: seconds since it was asked for


class _Both:
    """The pieces in both of two containers (a picker ``only`` restriction)."""

    __slots__ = ("a", "b")

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, piece: object) -> bool:
        return piece in self.a and piece in self.b


class Swarm:
    """What every swarm does; see the module docstring."""

    def __init__(self, session: Session, info_hash: bytes, name: str, layout: Layout) -> None:
        self.session = session
        # with a swarm key, every swarm is known by its keyed hash (metainfo.keyed_info_hash)
        key = session.swarm_key
        self.info_hash = key.info_hash(info_hash) if key is not None else info_hash
        self.name = name
        self.layout = layout
        self.peer_id = session.peer_id
        self.have = PieceSet(layout.num_pieces)
        self.picker = Picker(layout, have=self.have)
        self.peers: set[PeerConnection] = set()
        self.max_peers = session.settings.max_peers_per_swarm
        self.downloaded = 0
        self.uploaded = 0
        self.closed = False
        # blocks of unfinished pieces, verified from memory before one write
        self._pending: dict[int, bytearray] = {}
        # failed pieces with several senders: (block, SHA1 of what was sent) -> sender
        self._suspects: dict[int, dict[tuple[int, bytes], PeerConnection]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.info_hash.hex()[:12]}>"

    @property
    def wire_pieces(self) -> int:
        """Pieces BEP 3 messages may name (a suite swarm's name files instead: 0)."""
        return self.layout.num_pieces

    def new_plane(self, peer: PeerConnection) -> object | None:
        """The connection's translation of piece messages (none: BEP 3 as it is)."""
        return None

    # --- peers coming and going ------------------------------------------------------

    def attach(self, peer: PeerConnection) -> bool:
        """Admit a handshaken peer, unless full, closed, or already connected."""
        if self.closed or len(self.peers) >= self.max_peers:
            return False
        if any(p.peer_id == peer.peer_id for p in self.peers):
            return False
        if not self.session.admit(peer):
            return False
        self.peers.add(peer)
        return True

    def detach(self, peer: PeerConnection) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self.session.release(peer)
        self.picker.drop_peer(peer)
        self.drop_availability(peer)
        self.peer_gone(peer)

    def peer_gone(self, peer: PeerConnection) -> None:
        """Hook: a peer left (subclasses re-plan what it was to send)."""

    def on_extension_handshake(self, peer: PeerConnection) -> None:
        """Hook: the peer told us its extensions."""

    def on_extended(self, peer: PeerConnection, name: str, payload: object) -> None:
        """Hook: one of our extension messages arrived."""

    # --- availability --------------------------------------------------------------------

    def on_have(self, peer: PeerConnection, piece: int) -> None:
        if not peer.seed:
            self.picker.inc_availability(piece)

    def drop_availability(self, peer: PeerConnection) -> None:
        """Take what the peer has out of the availability (it left, or it sent a new
        bitfield that replaces the old one); :meth:`on_bitfield` puts a new set in."""
        if peer.seed:
            peer.seed = False
            self.picker.remove_seed()
        else:
            self.picker.remove_bitfield(peer.has)

    def on_bitfield(self, peer: PeerConnection) -> None:
        if peer.has.complete:
            peer.seed = True
            self.picker.add_seed()
        else:
            self.picker.add_bitfield(peer.has)

    def interesting(self, peer: PeerConnection) -> bool:
        """Whether the peer has a piece we want and can verify."""
        return self.picker.interesting(peer.has, only=self.verifiable())

    def verifiable(self) -> Container[int] | None:
        """Pieces we could check if we had them; None means all (v1)."""
        return None

    # --- blocks --------------------------------------------------------------------------

    def pick(
        self, peer: PeerConnection, n_blocks: int, *, allowed: Container[int] | None = None
    ) -> list[tuple[int, int, int]]:
        """Blocks to request from *peer*; only from *allowed* pieces if given (the BEP 6
        allowed-fast pieces of a peer that chokes us)."""
        only = self.verifiable()
        if allowed is not None:
            only = allowed if only is None else _Both(allowed, only)
        blocks = self.picker.pick(peer, peer.has, n_blocks, only=only)
        return [(b.piece, b.begin, b.length) for b in blocks]

    def on_block(self, peer: PeerConnection, piece: int, begin: int, data: bytes) -> None:
        """Keep a block in the piece's buffer: a piece is hashed from memory and written
        once, whole, only after it verified (large v1 pieces are written block by block)."""
        result = self.picker.block_received(peer, piece, begin)
        if not result.new:
            return
        size = self.layout.piece_size(piece)
        if size <= MAX_BUFFERED_PIECE:
            buffer = self._pending.get(piece)
            if buffer is None:
                buffer = self._pending[piece] = bytearray(size)
            buffer[begin : begin + len(data)] = data
        else:
            try:
                self.write_block(piece, begin, data)
            except CacheError as exc:
                log.warning("%s: cannot store piece %d: %s", self, piece, exc)
                self._forget_piece(piece)
                return
        self.downloaded += len(data)
        self.session.count("peers", len(data))
        for other, block in result.cancels:
            other.cancel(block.piece, block.begin)
        if result.piece_complete:
            self.check_piece(piece, source=peer)

    def on_block_lost(self, peer: PeerConnection, piece: int, begin: int) -> None:
        self.picker.cancel_request(peer, piece, begin)

    def check_piece(self, piece: int, source: PeerConnection | None) -> bool:
        """Verify a complete piece: announce it, or drop it and find who lied.

        Smart ban, as libtorrent does it: a failed piece with one sender bans that
        sender; with several, each block's hash and sender are remembered, and once a
        good copy of the piece is in, the senders whose blocks differ from it are banned.
        An honest peer that filled the gaps of a liar's piece is never punished.
        """
        senders = self.picker.block_senders(piece)
        buffered = self._pending.pop(piece, None)
        data = bytes(buffered) if buffered is not None else self.read_piece(piece)
        if self.verify_piece(piece, data):
            if buffered is not None:
                try:
                    self.write_block(piece, 0, data)
                except CacheError as exc:
                    log.warning("%s: cannot store piece %d: %s", self, piece, exc)
                    self.picker.piece_failed(piece)
                    return False
            self._judge(piece)
            self.add_piece(piece)
            return True
        log.warning("%s: piece %d failed verification", self, piece)
        peers = {peer for peer in senders.values() if getattr(peer, "address", None)}
        if len(peers) == 1:
            self._punish(peers.pop(), piece)
        elif peers:
            suspects = self._suspects.setdefault(piece, {})
            for block, peer in senders.items():
                start = block * BLOCK_SIZE
                sent = data[start : start + self._block_length(piece, block)]
                suspects.setdefault((block, hashlib.sha1(sent).digest()), peer)
        self.picker.piece_failed(piece)
        return False

    def read_piece(self, piece: int) -> bytes:
        return self.read(piece, 0, self.layout.piece_size(piece))

    def _forget_piece(self, piece: int) -> None:
        """Drop an unfinished piece's blocks (bad sender, failed store)."""
        self._pending.pop(piece, None)
        self.picker.piece_failed(piece)

    def _block_length(self, piece: int, block: int) -> int:
        return min(BLOCK_SIZE, self.layout.piece_size(piece) - block * BLOCK_SIZE)

    def _judge(self, piece: int) -> None:
        """A piece that failed before is good now: ban whoever sent a different block."""
        suspects = self._suspects.pop(piece, None)
        if not suspects:
            return
        for (block, digest), peer in suspects.items():
            good = self.read(piece, block * BLOCK_SIZE, self._block_length(piece, block))
            if hashlib.sha1(good).digest() != digest:
                self._punish(peer, piece)

    def _punish(self, peer: PeerConnection, piece: int) -> None:
        """Ban a peer that sent bad data, and free what else it sent: its blocks in other
        unfinished pieces would fail them and wrongly implicate whoever completes them."""
        self.session.ban(peer.address[0], f"sent bad data for piece {piece} in {self.name}")
        peer.close("sent bad data")
        for other in self.picker.partial_pieces():
            if peer in self.picker.piece_senders(other):
                self._forget_piece(other)

    def add_piece(self, piece: int) -> None:
        """A verified piece: record it, tell the peers, let the subclass react."""
        self._pending.pop(piece, None)  # e.g. the mirror completed it first
        if not self.have.add(piece):
            return
        for peer, block in self.picker.outstanding(piece):  # no bytes sent for nothing
            peer.cancel(block.piece, block.begin)
        self.picker.piece_verified(piece)
        for peer in list(self.peers):
            peer.have(piece)
            if peer.am_interested and not self.interesting(peer):
                peer.update_interest()
        self.piece_verified(piece)

    def read_block(self, piece: int, begin: int, length: int) -> bytes | None:
        """A block to upload, only from a verified piece."""
        if piece not in self.have or begin + length > self.layout.piece_size(piece):
            return None
        try:
            return self.read(piece, begin, length)
        except (CacheError, OSError) as exc:
            log.warning("%s: cannot read piece %d: %s", self, piece, exc)
            return None

    def on_upload(self, peer: PeerConnection, amount: int) -> None:
        self.uploaded += amount
        self.session.count("uploaded", amount)

    def wake_peers(self) -> None:
        """Something new is wanted: ask every peer whether it can help."""
        for peer in list(self.peers):
            peer.update_interest()

    def info(self) -> SwarmInfo:
        """For the status page (package swarms say more)."""
        return SwarmInfo()

    def downloads(self) -> list[FileProgress]:
        """Files being fetched for someone waiting (none in a v1 swarm)."""
        return []

    @property
    def seeding(self) -> bool:
        """Whether we want nothing (the choker then ranks by upload rate)."""
        return self.picker.num_wanted == 0

    # --- what subclasses define -------------------------------------------------------

    def verify_piece(self, piece: int, data: bytes) -> bool:
        """Whether a complete piece's bytes are right."""
        raise NotImplementedError

    def piece_verified(self, piece: int) -> None:
        """Hook: a piece was verified and announced."""

    def write_block(self, piece: int, begin: int, data: bytes) -> None:
        raise NotImplementedError

    def read(self, piece: int, begin: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect every peer; the session forgets the swarm."""
        self.closed = True
        for peer in list(self.peers):
            peer.close("swarm closed")


class TorrentSwarm(Swarm):
    """A standard v1 torrent (fixed-size pieces, SHA1): the interop path."""

    def __init__(self, session: Session, meta: Metainfo, directory: Path) -> None:
        super().__init__(session, meta.info_hash, meta.name, meta.layout)
        self.meta = meta
        self.store = TorrentStore(meta.layout, directory, [f.path for f in meta.files])
        self.complete = Event()
        existing = self.store.existing
        for piece in range(meta.layout.num_pieces):  # recheck: seed what is on disk
            # a piece touching a file we just created cannot be there: don't hash zeros
            files = {s.file_index for s in meta.layout.piece_files(piece)}
            if files <= existing and self.verify_piece(piece, self.store.piece(piece)):
                self.have.add(piece)
        for file_index in range(meta.layout.num_files):
            self.picker.set_file_priority(file_index, NORMAL)
        if self.have.complete:
            self.complete.set()
        log.info("%s: %d of %d pieces on disk", self, len(self.have), meta.layout.num_pieces)

    def verify_piece(self, piece: int, data: bytes) -> bool:
        return hashlib.sha1(data).digest() == self.meta.piece_hash(piece)

    def write_block(self, piece: int, begin: int, data: bytes) -> None:
        self.store.write(piece, begin, data)

    def read(self, piece: int, begin: int, length: int) -> bytes:
        return self.store.read(piece, begin, length)

    def piece_verified(self, piece: int) -> None:
        if self.have.complete and not self.complete.is_set():
            log.info("%s: complete", self)
            self.complete.set()
            self.session.swarm_completed(self)

    def close(self) -> None:
        super().close()
        self.store.close()
