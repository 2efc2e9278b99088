"""The package data plane of a suite swarm on the wire (layout 2): files named by SHA256.

Two peers of a suite swarm number their files differently (each from the indexes it
has loaded), so nothing about a package travels as a piece number of the torrent: every
message names the file by its SHA256 and counts pieces from 0 within the file. The
messages are BEP 10 extension messages (docs/layout2.md has the table):

- ``dt_files``: whole files the sender has, as 8-byte SHA256 prefixes (added, removed,
  ``f`` on the first message of a complete set);
- ``dt_have``: verified pieces of a file the sender does not have whole yet;
- ``dt_request`` / ``dt_reject`` / ``dt_cancel``: a block, or a run of blocks of one
  piece up to the ``dt_run`` the receiver announced, by (file, piece, offset, length);
  ``dt_piece``: its bytes, after the dictionary (as BEP 9 carries metadata);
- ``dt_hashes``: a file's piece SHA256 list, asked for, given or refused;
- ``dt_fetching``: "I am fetching this file from the mirror" (started, finished,
  aborted, failed at its source).

Pure: encode to ``(name, payload, trailing bytes)`` and decode back, with the limits of
the protocol checked here; what the numbers mean for a file is the swarm's to check
(it knows the file's size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from debtorrent.errors import ProtocolError
from debtorrent.torrent.layout import BLOCK_SIZE

__all__ = [
    "DT_CANCEL",
    "DT_FETCHING",
    "DT_FILES",
    "DT_HASHES",
    "DT_HAVE",
    "DT_PIECE",
    "DT_REJECT",
    "DT_REQUEST",
    "MAX_HAVE_PIECES",
    "MAX_PIECE",
    "MAX_PREFIXES",
    "MAX_RUN",
    "NAMES",
    "Cancel",
    "FetchAborted",
    "FetchFinished",
    "FetchStarted",
    "Files",
    "HashesReject",
    "HashesReply",
    "HashesRequest",
    "Have",
    "Piece",
    "Reject",
    "Request",
    "decode",
    "encode",
    "files_messages",
]

DT_FILES = "dt_files"
DT_HAVE = "dt_have"
DT_REQUEST = "dt_request"
DT_PIECE = "dt_piece"
DT_REJECT = "dt_reject"
DT_CANCEL = "dt_cancel"
DT_HASHES = "dt_hashes"
DT_FETCHING = "dt_fetching"
#: every extension of the plane, in the order their local ids are given out
NAMES = (DT_HASHES, DT_FETCHING, DT_FILES, DT_HAVE, DT_REQUEST, DT_PIECE, DT_REJECT, DT_CANCEL)

PREFIX = 8
MAX_PREFIXES = 16384  #: prefixes in one dt_files message (128 KiB of them)
MAX_HAVE_PIECES = 1024  #: pieces in one dt_have message
MAX_PIECE = 1 << 24  #: piece numbers within a file (4 TiB at 256 KiB: any real .deb)
#: the longest run of blocks one dt_request may ask for (and one dt_piece carry); a peer
#: announces the length it serves as ``dt_run`` in its extension handshake, and is asked
#: for single blocks (BLOCK_SIZE) when it does not
MAX_RUN = 8 * BLOCK_SIZE


# --- the messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Files:
    """Whole files the sender has: *added* and *removed* 8-byte SHA256 prefixes;
    *full*: this message starts a complete set, replacing what the receiver knew."""

    added: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()
    full: bool = False


@dataclass(frozen=True, slots=True)
class Have:
    """Verified *pieces* (counted from 0 in the file) of a file the sender lacks whole."""

    sha256: bytes
    pieces: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Block:
    """One block of a file: *length* bytes at *offset* in piece *piece*."""

    sha256: bytes
    piece: int
    offset: int
    length: int


class Request(_Block):
    """Send me this block."""

    __slots__ = ()


class Reject(_Block):
    """The sender will not send this block (choked, unknown file, not had)."""

    __slots__ = ()


class Cancel(_Block):
    """The receiver no longer wants this block."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Piece:
    """A block's bytes."""

    sha256: bytes
    piece: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HashesRequest:
    """ "Send me the piece SHA256 list of this file"."""

    sha256: bytes


@dataclass(frozen=True, slots=True)
class HashesReply:
    """The piece SHA256s of the file, 32 bytes each in piece order (a prefix of the
    list while the sender still fetches the file)."""

    sha256: bytes
    hashes: bytes

    def piece_hashes(self) -> list[bytes]:
        return [self.hashes[i : i + 32] for i in range(0, len(self.hashes), 32)]


@dataclass(frozen=True, slots=True)
class HashesReject:
    """ "I cannot send that list" (not had, or not hashed)."""

    sha256: bytes


@dataclass(frozen=True, slots=True)
class FetchStarted:
    """The sender began fetching the file from the mirror at *started_ms* (its clock;
    both sides compare the same two announced values, so skew does not matter)."""

    sha256: bytes
    started_ms: int


@dataclass(frozen=True, slots=True)
class FetchFinished:
    """The sender has the whole file, verified."""

    sha256: bytes


@dataclass(frozen=True, slots=True)
class FetchAborted:
    """The sender stopped fetching; *failed*: the file failed its whole-file check at
    the source, so what the sender gave of it (pieces, hash list) is void, and the
    receiver drops it without banning the sender."""

    sha256: bytes
    failed: bool = False


_BLOCKS = {DT_REQUEST: Request, DT_REJECT: Reject, DT_CANCEL: Cancel}
_BLOCK_NAMES = {cls: name for name, cls in _BLOCKS.items()}


# --- encoding -------------------------------------------------------------------------


def encode(msg: Any) -> tuple[str, dict[str, Any], bytes]:
    """``(extension name, payload dict, raw bytes after it)`` for a message."""
    if isinstance(msg, Files):
        payload: dict[str, Any] = {"a": b"".join(msg.added), "r": b"".join(msg.removed)}
        if msg.full:
            payload["f"] = 1
        return DT_FILES, payload, b""
    if isinstance(msg, Have):
        return DT_HAVE, {"h": msg.sha256, "p": list(msg.pieces)}, b""
    if isinstance(msg, (Request, Reject, Cancel)):
        payload = {"h": msg.sha256, "p": msg.piece, "o": msg.offset, "l": msg.length}
        return _BLOCK_NAMES[type(msg)], payload, b""
    if isinstance(msg, Piece):
        return DT_PIECE, {"h": msg.sha256, "p": msg.piece, "o": msg.offset}, msg.data
    if isinstance(msg, HashesRequest):
        return DT_HASHES, {"msg_type": 0, "h": msg.sha256}, b""
    if isinstance(msg, HashesReply):
        return DT_HASHES, {"msg_type": 1, "h": msg.sha256, "hashes": msg.hashes}, b""
    if isinstance(msg, HashesReject):
        return DT_HASHES, {"msg_type": 2, "h": msg.sha256}, b""
    if isinstance(msg, FetchStarted):
        return DT_FETCHING, {"msg_type": 0, "h": msg.sha256, "t": msg.started_ms}, b""
    if isinstance(msg, FetchFinished):
        return DT_FETCHING, {"msg_type": 1, "h": msg.sha256}, b""
    if isinstance(msg, FetchAborted):
        payload = {"msg_type": 3 if msg.failed else 2, "h": msg.sha256}
        return DT_FETCHING, payload, b""
    raise TypeError(f"not a file-plane message: {msg!r}")


def files_messages(prefixes: list[bytes], *, full: bool) -> list[Files]:
    """A set of prefixes as :class:`Files` messages within :data:`MAX_PREFIXES` each;
    *full* marks the first (a complete set, even an empty one)."""
    chunks = [prefixes[i : i + MAX_PREFIXES] for i in range(0, len(prefixes), MAX_PREFIXES)]
    if not chunks:
        return [Files(full=True)] if full else []
    return [Files(tuple(chunk), full=full and i == 0) for i, chunk in enumerate(chunks)]


# --- decoding -------------------------------------------------------------------------


def decode(name: str, payload: Any, trailing: bytes = b"") -> Any:
    """The message of extension *name*; :class:`ProtocolError` when malformed.

    Extra keys are ignored (later versions may add some); key order is not checked.
    """
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"{name}: payload is not a dict")
    if name == DT_FILES:
        return Files(
            _prefixes(payload, b"a", name), _prefixes(payload, b"r", name), _flag(payload, b"f")
        )
    if name == DT_HAVE:
        pieces = payload.get(b"p")
        if not isinstance(pieces, list) or not 0 < len(pieces) <= MAX_HAVE_PIECES:
            raise ProtocolError(f"{name}: 'p' is not a list of 1..{MAX_HAVE_PIECES} pieces")
        return Have(_digest(payload, name), tuple(_piece_number(p, name) for p in pieces))
    if name in _BLOCKS:
        length = payload.get(b"l")
        if not isinstance(length, int) or not 0 < length <= MAX_RUN:
            raise ProtocolError(f"{name}: length {length!r} not in 1..{MAX_RUN}")
        return _BLOCKS[name](
            _digest(payload, name),
            _piece_number(payload.get(b"p"), name),
            _offset(payload, name),
            length,
        )
    if name == DT_PIECE:
        if not 0 < len(trailing) <= MAX_RUN:
            raise ProtocolError(f"{name}: a block of {len(trailing)} bytes")
        return Piece(
            _digest(payload, name),
            _piece_number(payload.get(b"p"), name),
            _offset(payload, name),
            trailing,
        )
    if name == DT_HASHES:
        kind = _msg_type(payload, name, 2)
        digest = _digest(payload, name)
        if kind == 0:
            return HashesRequest(digest)
        if kind == 2:
            return HashesReject(digest)
        hashes = payload.get(b"hashes")
        if not isinstance(hashes, bytes) or not hashes or len(hashes) % 32:
            raise ProtocolError(f"{name}: 'hashes' is not a list of 32-byte hashes")
        if len(hashes) // 32 > MAX_PIECE:
            raise ProtocolError(f"{name}: {len(hashes) // 32} hashes")
        return HashesReply(digest, hashes)
    if name == DT_FETCHING:
        kind = _msg_type(payload, name, 3)
        digest = _digest(payload, name)
        if kind == 0:
            started = payload.get(b"t")
            if not isinstance(started, int) or not 0 <= started < 1 << 63:
                raise ProtocolError(f"{name}: start time {started!r} is not a timestamp")
            return FetchStarted(digest, started)
        if kind == 1:
            return FetchFinished(digest)
        return FetchAborted(digest, failed=kind == 3)
    raise ProtocolError(f"unknown file-plane extension {name!r}")


def _digest(payload: Mapping[bytes, Any], name: str) -> bytes:
    digest = payload.get(b"h")
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise ProtocolError(f"{name}: 'h' is not a 32-byte SHA256")
    return digest


def _prefixes(payload: Mapping[bytes, Any], key: bytes, name: str) -> tuple[bytes, ...]:
    raw = payload.get(key, b"")
    if not isinstance(raw, bytes) or len(raw) % PREFIX:
        raise ProtocolError(f"{name}: {key.decode()!r} is not a list of 8-byte prefixes")
    if len(raw) // PREFIX > MAX_PREFIXES:
        raise ProtocolError(f"{name}: more than {MAX_PREFIXES} prefixes in one message")
    return tuple(raw[i : i + PREFIX] for i in range(0, len(raw), PREFIX))


def _flag(payload: Mapping[bytes, Any], key: bytes) -> bool:
    return payload.get(key) == 1


def _piece_number(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_PIECE:
        raise ProtocolError(f"{name}: piece {value!r} out of range")
    return value


def _offset(payload: Mapping[bytes, Any], name: str) -> int:
    offset = payload.get(b"o")
    if not isinstance(offset, int) or offset < 0 or offset % BLOCK_SIZE:
        raise ProtocolError(f"{name}: offset {offset!r} is not a block boundary")
    return offset


def _msg_type(payload: Mapping[bytes, Any], name: str, highest: int) -> int:
    kind = payload.get(b"msg_type")
    if not isinstance(kind, int) or not 0 <= kind <= highest:
        raise ProtocolError(f"{name}: msg_type {kind!r} unknown")
    return kind
