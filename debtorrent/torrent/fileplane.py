"""One peer connection of a suite swarm, translated: files by SHA256 on the wire, the
swarm's own piece numbers inside.

The peer connection and the swarm work in the swarm's internal piece numbers (BEP 3
message objects: ``Request(piece, begin, length)`` and so on), which never leave the
daemon. A :class:`FilePlane` turns what the connection sends into ``dt_*`` extension
messages naming the file by SHA256 and the piece from 0 within it, and what arrives back
into the internal numbers (docs/layout2.md). It also keeps what the peer offers: whole
files by SHA256 prefix, including prefixes of files we do not know (yet: an index we
load later may list them), bounded.

Protocol errors raised here close the connection with a strike, as the BEP 3 codec's do:
a block outside its file, a piece of a file nobody asked for, more prefixes than
:data:`MAX_KNOWN_PREFIXES`, or a whole file that was advertised and then refused while
the peer unchokes us.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from debtorrent.errors import ProtocolError
from debtorrent.torrent import bencode, wire
from debtorrent.torrent import filewire as fw
from debtorrent.torrent.catalog import prefix_of
from debtorrent.torrent.layout import BLOCK_SIZE

if TYPE_CHECKING:
    from debtorrent.torrent.peer import PeerConnection
    from debtorrent.torrent.suite import SuiteSwarm

__all__ = ["MAX_KNOWN_PREFIXES", "FilePlane"]

log = logging.getLogger(__name__)

MAX_KNOWN_PREFIXES = 200_000  # files a peer may say it has, known to us or not
_EXT_HEADER = struct.Struct(">IBB")  # length, 20 (extended), the extension id


class FilePlane:
    """The file plane of one connection (see the module docstring)."""

    def __init__(self, peer: PeerConnection, swarm: SuiteSwarm) -> None:
        self.peer = peer
        self.swarm = swarm
        self.files: set[int] = set()  # our files the peer has whole
        self.unknown: set[int] = set()  # prefixes of whole files we do not know
        self.greeted = False

    # --- what the peer speaks ---------------------------------------------------------

    def speaks(self, name: str) -> bool:
        return bool(self.peer.extensions.get(name))

    def send(self, msg: Any) -> bool:
        """Send a file-plane message if the peer speaks its extension."""
        name, payload, trailing = fw.encode(msg)
        ext_id = self.peer.extensions.get(name)
        if not ext_id:
            return False
        self.peer.send(wire.Extended(ext_id, payload, trailing))
        return True

    # --- our availability ---------------------------------------------------------------

    def greet(self) -> None:
        """After the extension handshake, once the peer may hear of the swarm (it proved
        the swarm key, if one is set): every file we offer, once."""
        if self.greeted or not self.peer.proven:
            return
        self.greeted = True
        catalog = self.swarm.catalog
        prefixes = [catalog.prefix(f) for f in self.swarm.offered_files()]
        for msg in fw.files_messages(prefixes, full=True):
            self.send(msg)

    def announce_files(self, files: list[int]) -> None:
        if self.greeted and files:
            catalog = self.swarm.catalog
            for msg in fw.files_messages([catalog.prefix(f) for f in files], full=False):
                self.send(msg)

    def retract_files(self, files: list[int]) -> None:
        if self.greeted and files:
            prefixes = tuple(self.swarm.catalog.prefix(f) for f in files)
            for i in range(0, len(prefixes), fw.MAX_PREFIXES):
                self.send(fw.Files(removed=prefixes[i : i + fw.MAX_PREFIXES]))

    def files_added(self, new: list[int]) -> None:
        """The swarm loaded an index: files the peer offered before we knew them count now."""
        if not self.unknown or not new:
            return
        catalog = self.swarm.catalog
        known = []
        for file in new:
            key = prefix_of(catalog.prefix(file))
            if key in self.unknown:
                self.unknown.discard(key)
                known.append(file)
        self._gain_files(known)

    # --- outgoing: internal numbers to files ------------------------------------------------

    def _locate(self, piece: int) -> tuple[bytes, int, int]:
        """``(sha256, piece within the file, first piece of the file)``."""
        layout = self.swarm.layout
        file = layout.piece_file(piece)
        first = layout.file_pieces(file).start
        return self.swarm.catalog.sha256(file), piece - first, first

    def outgoing(self, msg: Any) -> Any | None:
        """The message to put on the wire for an internal one (None: nothing to send)."""
        if isinstance(msg, (wire.Request, wire.Cancel, wire.RejectRequest)):
            sha, position, _ = self._locate(msg.index)
            cls = {wire.Request: fw.Request, wire.Cancel: fw.Cancel}.get(type(msg), fw.Reject)
            return self._extended(cls(sha, position, msg.begin, msg.length))
        if isinstance(msg, wire.Have):
            file = self.swarm.layout.piece_file(msg.index)
            if self.swarm.file_complete(file):
                if not self.greeted:
                    return None
                return self._extended(fw.Files((self.swarm.catalog.prefix(file),)))
            sha, position, _ = self._locate(msg.index)
            return self._extended(fw.Have(sha, (position,)))
        if isinstance(msg, (wire.Bitfield, wire.HaveAll)):
            return None  # dt_files says it, once the peer told us its extension ids
        if isinstance(msg, (wire.Piece, wire.AllowedFast)):
            raise TypeError(f"{type(msg).__name__} is not sent in a suite swarm")
        return msg

    def _extended(self, msg: Any) -> wire.Extended | None:
        name, payload, trailing = fw.encode(msg)
        ext_id = self.peer.extensions.get(name)
        return wire.Extended(ext_id, payload, trailing) if ext_id else None

    def piece_header(self, piece: int, begin: int, length: int) -> bytes | None:
        """The bytes before a block of *length* (a dt_piece); send the block after them."""
        ext_id = self.peer.extensions.get(fw.DT_PIECE)
        if not ext_id:
            return None
        sha, position, _ = self._locate(piece)
        body = bencode.encode({"h": sha, "p": position, "o": begin})
        return _EXT_HEADER.pack(2 + len(body) + length, 20, ext_id) + body

    # --- incoming: files to internal numbers --------------------------------------------------

    def incoming(self, name: str, payload: Any, trailing: bytes) -> None:
        """One of our extension messages arrived from the peer."""
        msg = fw.decode(name, payload, trailing)
        if isinstance(msg, fw.Files):
            self._on_files(msg)
            return
        file = self.swarm.find(msg.sha256)
        if isinstance(msg, fw.Have):
            if file is not None:
                self.swarm.peer_gained(self.peer, self._pieces(file, msg.pieces))
        elif isinstance(msg, (fw.Request, fw.Cancel, fw.Reject, fw.Piece)):
            self._on_block_message(msg, file)
        elif isinstance(msg, fw.HashesRequest) and file is None:
            self.send(fw.HashesReject(msg.sha256))
        elif file is not None:
            self.swarm.on_file_message(self.peer, file, msg)

    def _pieces(self, file: int, positions: tuple[int, ...]) -> list[int]:
        pieces = self.swarm.layout.file_pieces(file)
        if any(p >= len(pieces) for p in positions):
            raise ProtocolError(f"dt_have: piece beyond the {len(pieces)} of its file")
        return [pieces.start + p for p in positions]

    def _on_files(self, msg: fw.Files) -> None:
        catalog = self.swarm.catalog
        if msg.full:
            self._lose_files(list(self.files))
            self.unknown.clear()
        lost = []
        for prefix in msg.removed:
            self.unknown.discard(prefix_of(prefix))
            file = catalog.by_prefix(prefix)
            if file is not None and file in self.files:
                lost.append(file)
        self._lose_files(lost)
        gained = []
        for prefix in msg.added:
            file = catalog.by_prefix(prefix)
            if file is None:
                self.unknown.add(prefix_of(prefix))
            elif file not in self.files:
                gained.append(file)
        if len(self.files) + len(gained) + len(self.unknown) > MAX_KNOWN_PREFIXES:
            raise ProtocolError(f"dt_files: more than {MAX_KNOWN_PREFIXES} files")
        self._gain_files(gained)

    def drop_file(self, file: int) -> None:
        """What the peer announced of a file is void (it failed at the peer's source):
        neither its pieces nor the whole file count, until announced again."""
        self.files.discard(file)
        self.swarm.peer_lost(self.peer, list(self.swarm.layout.file_pieces(file)))

    def _gain_files(self, files: list[int]) -> None:
        if not files:
            return
        layout = self.swarm.layout
        self.files.update(files)
        self.swarm.peer_gained(self.peer, [p for f in files for p in layout.file_pieces(f)])

    def _lose_files(self, files: list[int]) -> None:
        if not files:
            return
        layout = self.swarm.layout
        self.files.difference_update(files)
        self.swarm.peer_lost(self.peer, [p for f in files for p in layout.file_pieces(f)])

    def _on_block_message(self, msg: Any, file: int | None) -> None:
        """A request, cancel, reject or block, in the swarm's numbers for the connection."""
        if file is None:
            if isinstance(msg, fw.Request):  # not a file of ours: nothing to send
                self.send(fw.Reject(msg.sha256, msg.piece, msg.offset, msg.length))
                return
            if isinstance(msg, fw.Piece):
                raise ProtocolError("dt_piece of a file nobody asked for")
            return  # a cancel or reject for something we do not know: nothing to do
        layout = self.swarm.layout
        pieces = layout.file_pieces(file)
        if msg.piece >= len(pieces):
            raise ProtocolError(f"{type(msg).__name__}: piece beyond the {len(pieces)} of its file")
        piece = pieces.start + msg.piece
        length = len(msg.data) if isinstance(msg, fw.Piece) else msg.length
        if msg.offset + length > layout.piece_size(piece):
            raise ProtocolError(f"{type(msg).__name__}: block past the end of its piece")
        peer = self.peer
        if isinstance(msg, fw.Request):
            peer.handle(wire.Request(piece, msg.offset, length))
        elif isinstance(msg, fw.Cancel):
            peer.handle(wire.Cancel(piece, msg.offset, length))
        elif isinstance(msg, fw.Reject):
            blocks = _blocks(msg.offset, length)
            # a run is rejected whole when we cancelled one of its blocks: that answers
            # our cancel; a run (or block) rejected while all of it was asked is a refusal
            asked = all((piece, offset) in peer.requested for offset, _ in blocks)
            for offset, size in blocks:
                peer.handle(wire.RejectRequest(piece, offset, size))
            if asked and file in self.files and not peer.peer_choking:
                # it said it had the whole file, unchokes us, and will not send it
                self._lose_files([file])
                self.swarm.refused(peer, file)
                raise ProtocolError("refused a block of a file it offered whole")
        elif len(msg.data) <= BLOCK_SIZE:
            peer.handle(wire.Piece(piece, msg.offset, msg.data))
        else:  # a run: block by block, as the picker and the smart ban count them
            data = msg.data
            for offset, size in _blocks(msg.offset, len(data)):
                if peer.closed:
                    return
                start = offset - msg.offset
                peer.handle(wire.Piece(piece, offset, data[start : start + size]))


def _blocks(offset: int, length: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each block of a run (the last one may be short)."""
    return [
        (start, min(BLOCK_SIZE, offset + length - start))
        for start in range(offset, offset + length, BLOCK_SIZE)
    ]
