"""The peer wire protocol as bytes in, typed messages out, and back: no sockets here.

Covers the BEP 3 handshake and messages, the BEP 6 fast extension (suggest, have all,
have none, reject request, allowed fast), the BEP 10 extension protocol (message 20,
its handshake with ``m``, ``v``, ``p``, ``reqq``), and the payloads of debtorrent's own
two extensions, ``dt_hashes`` and ``dt_fetching`` (see below).

:class:`Decoder` is incremental: it is fed whatever the socket returned and hands back
the complete messages, keeping a partial one for the next call. It enforces the limits
that protect the process from a peer, before allocating anything the peer asked for:
a length prefix above ``max_message_len``, a bitfield of the wrong length or with spare
bits set, piece indices out of range, requests of zero bytes or more than
``max_request_len``, blocks past the end of their piece, fixed-size messages of the
wrong size, and fast or extension messages that were not negotiated all raise
:class:`~debtorrent.errors.ProtocolError`; the connection is then closed.

A bitfield, have-all or have-none is accepted at any time, not only first: aria2 sends
a ``bitfield`` in the middle of a connection whenever it is shorter than the ``have``
messages it stands for, and ``have all`` once it completes, and libtorrent and
Transmission accept that. The later one replaces what the peer had.

Unknown message ids are *not* an error: they are returned as :class:`Unknown` (after the
length check) so the connection can log and ignore them. Clients add messages over the
years (BEP 52 hash messages, for one) and BEP 3 peers are expected to skip what they do
not understand; the length prefix makes that safe.

Extension messages (id 20) are decoded as one bencoded dict followed by optional raw
bytes (:attr:`Extended.trailing`), as BEP 9 does. The dict is decoded leniently
(:func:`~debtorrent.torrent.bencode.decode_prefix` with ``strict=False``: keys in any
order, integers with leading zeros): nothing in it is hashed, and libtorrent accepts the
same, so an honest client with a sloppy encoder is not struck for it. Only extensions
whose payload has that form are advertised by debtorrent, and BEP 10 lets a peer send
only the extensions we advertised, so anything else under id 20 is a protocol error.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from random import Random
from typing import Any, ClassVar

from debtorrent import __version__
from debtorrent.errors import BencodeError, ProtocolError
from debtorrent.torrent import bencode, filewire
from debtorrent.torrent.layout import BLOCK_SIZE

__all__ = [
    "CLIENT_VERSION",
    "DEFAULT_RESERVED",
    "DT_SWARMKEY",
    "HANDSHAKE_LEN",
    "LOCAL_EXTENSIONS",
    "MAX_MESSAGE_LEN",
    "MAX_REQUEST_LEN",
    "OPTIONAL_EXTENSIONS",
    "PEER_ID_PREFIX",
    "UT_PEX",
    "AllowedFast",
    "Bitfield",
    "Cancel",
    "Choke",
    "Decoder",
    "Extended",
    "ExtensionHandshake",
    "Handshake",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "KeepAlive",
    "Message",
    "NotInterested",
    "Piece",
    "Port",
    "RejectRequest",
    "Request",
    "Suggest",
    "Unchoke",
    "Unknown",
    "encode",
    "encode_piece_header",
    "peer_id",
]

PSTR = b"BitTorrent protocol"
_PREFIX = bytes([len(PSTR)]) + PSTR
HANDSHAKE_LEN = 1 + len(PSTR) + 8 + 20 + 20

#: Reserved-byte flags: (byte index, mask).
EXTENSION_BIT = (5, 0x10)  # BEP 10
FAST_BIT = (7, 0x04)  # BEP 6
DHT_BIT = (7, 0x01)  # BEP 5 (not offered; only reported)

#: What we send: the extension protocol and the fast extension.
DEFAULT_RESERVED = bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])

#: Azureus-style client prefix: ``-DT0100-`` for debtorrent 0.1.0.
PEER_ID_PREFIX = b"-DT0100-"
CLIENT_VERSION = f"debtorrent {__version__}"

#: Largest request (and piece block) accepted by default: 8 blocks, 128 KiB. Clients
#: request 16 KiB; the margin admits peers that ask for more, as libtorrent does.
MAX_REQUEST_LEN = 8 * BLOCK_SIZE
#: Largest message accepted by default: 1 MiB. Covers a bitfield of 8 million pieces
#: and a ``dt_hashes`` reply for a file of 32,768 pieces (8 GiB at 256 KiB).
MAX_MESSAGE_LEN = 1 << 20

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">IB")
_ONE_U32 = struct.Struct(">IBI")
_THREE_U32 = struct.Struct(">IBIII")
_PIECE_HEADER = struct.Struct(">IBII")
_PORT = struct.Struct(">IBH")


def peer_id(rng: Random | None = None) -> bytes:
    """A fresh 20-byte peer id: ``-DT0100-`` and 12 random letters or digits."""
    choice = rng.choice if rng is not None else secrets.choice
    return PEER_ID_PREFIX + "".join(choice(_ALNUM) for _ in range(12)).encode("ascii")


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    """The 68-byte BEP 3 handshake."""

    info_hash: bytes
    peer_id: bytes
    reserved: bytes = DEFAULT_RESERVED

    def _bit(self, bit: tuple[int, int]) -> bool:
        return bool(self.reserved[bit[0]] & bit[1])

    @property
    def supports_extensions(self) -> bool:
        return self._bit(EXTENSION_BIT)

    @property
    def supports_fast(self) -> bool:
        return self._bit(FAST_BIT)

    @property
    def supports_dht(self) -> bool:
        return self._bit(DHT_BIT)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Choke:
    id: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class Unchoke:
    id: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class Interested:
    id: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class NotInterested:
    id: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class Have:
    id: ClassVar[int] = 4
    index: int


@dataclass(frozen=True, slots=True)
class Bitfield:
    """BEP 3 bitfield: bit 7 of byte 0 is piece 0."""

    id: ClassVar[int] = 5
    bits: bytes


@dataclass(frozen=True, slots=True)
class Request:
    id: ClassVar[int] = 6
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Piece:
    id: ClassVar[int] = 7
    index: int
    begin: int
    block: bytes


@dataclass(frozen=True, slots=True)
class Cancel:
    id: ClassVar[int] = 8
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Port:
    """BEP 5: the peer's DHT port."""

    id: ClassVar[int] = 9
    port: int


@dataclass(frozen=True, slots=True)
class Suggest:
    id: ClassVar[int] = 0x0D
    index: int


@dataclass(frozen=True, slots=True)
class HaveAll:
    id: ClassVar[int] = 0x0E


@dataclass(frozen=True, slots=True)
class HaveNone:
    id: ClassVar[int] = 0x0F


@dataclass(frozen=True, slots=True)
class RejectRequest:
    id: ClassVar[int] = 0x10
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class AllowedFast:
    id: ClassVar[int] = 0x11
    index: int


@dataclass(frozen=True, slots=True)
class Extended:
    """BEP 10 message: *ext_id* 0 is the extension handshake, others as advertised.

    *payload* is the decoded bencoded dict; *trailing* the raw bytes after it.
    """

    id: ClassVar[int] = 20
    ext_id: int
    payload: Any
    trailing: bytes = b""


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message id this codec does not know; the connection ignores it."""

    msg_id: int
    payload: bytes


Message = (
    Handshake
    | KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | Bitfield
    | Request
    | Piece
    | Cancel
    | Port
    | Suggest
    | HaveAll
    | HaveNone
    | RejectRequest
    | AllowedFast
    | Extended
    | Unknown
)

_NO_PAYLOAD = {0: Choke(), 1: Unchoke(), 2: Interested(), 3: NotInterested()}
_FAST_NO_PAYLOAD = {0x0E: HaveAll(), 0x0F: HaveNone()}
_KEEPALIVE = KeepAlive()


# --- encoding -------------------------------------------------------------------------------


def encode_piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13 bytes before a block of *length*: send them, then the block, no copy."""
    return _PIECE_HEADER.pack(9 + length, 7, index, begin)


def encode(msg: Message) -> bytes:
    """Serialise one message (a :class:`Handshake` too) to bytes for the wire."""
    match msg:
        case Handshake(info_hash=ih, peer_id=pid, reserved=res):
            if len(ih) != 20 or len(pid) != 20 or len(res) != 8:
                raise ValueError("handshake needs a 20-byte info hash and peer id, 8 reserved")
            return _PREFIX + res + ih + pid
        case KeepAlive():
            return b"\0\0\0\0"
        case Choke() | Unchoke() | Interested() | NotInterested() | HaveAll() | HaveNone():
            return _HEADER.pack(1, msg.id)
        case Have(index=i) | Suggest(index=i) | AllowedFast(index=i):
            return _ONE_U32.pack(5, msg.id, i)
        case (
            Request(index=i, begin=b, length=n)
            | Cancel(index=i, begin=b, length=n)
            | RejectRequest(index=i, begin=b, length=n)
        ):
            return _THREE_U32.pack(13, msg.id, i, b, n)
        case Bitfield(bits=bits):
            return _HEADER.pack(1 + len(bits), 5) + bits
        case Piece(index=i, begin=b, block=block):
            return encode_piece_header(i, b, len(block)) + bytes(block)
        case Port(port=port):
            return _PORT.pack(3, 9, port)
        case Extended(ext_id=ext, payload=payload, trailing=trailing):
            if not 0 <= ext <= 255:
                raise ValueError(f"extension id {ext} out of range")
            body = bencode.encode(payload) + trailing
            return _HEADER.pack(2 + len(body), 20) + bytes([ext]) + body
        case Unknown(msg_id=mid, payload=payload):
            return _HEADER.pack(1 + len(payload), mid) + payload
    raise TypeError(f"not a wire message: {msg!r}")


# --- decoding -------------------------------------------------------------------------------


class Decoder:
    """Turn a peer's byte stream into messages, enforcing the limits.

    *num_pieces* may be ``None`` while the torrent is not yet known (an incoming
    connection names it in its handshake): the decoder then stops after the handshake
    and keeps the rest buffered until :meth:`set_num_pieces`, after which ``feed(b"")``
    continues. With *handshake* true the stream must begin with the 68-byte handshake,
    returned as a :class:`Handshake`; its reserved bits then switch off :attr:`fast`
    and :attr:`extended` if the peer lacks them. *piece_size*, if given, lets requests,
    pieces, cancels and rejects be checked against the end of their piece.

    After a :class:`ProtocolError` the decoder stays failed: drop the connection.
    """

    def __init__(
        self,
        num_pieces: int | None = None,
        *,
        handshake: bool = False,
        max_message_len: int = MAX_MESSAGE_LEN,
        max_request_len: int = MAX_REQUEST_LEN,
        piece_size: Callable[[int], int] | None = None,
        fast: bool = True,
        extended: bool = True,
    ) -> None:
        self.num_pieces = num_pieces
        self.max_message_len = max_message_len
        self.max_request_len = max_request_len
        self.piece_size = piece_size
        #: whether BEP 6 messages are allowed (both sides set the fast bit)
        self.fast = fast
        #: whether BEP 10 messages are allowed (both sides set the extension bit)
        self.extended = extended
        self._want_handshake = handshake
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def set_num_pieces(self, num_pieces: int) -> None:
        self.num_pieces = num_pieces

    def feed(self, data: bytes) -> list[Message]:
        """Add *data* and return every message now complete, in order."""
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        try:
            if self._want_handshake:
                pos = self._handshake(out)
                if self._want_handshake:
                    return out
            if self.num_pieces is None:
                if len(buf) > self.max_message_len + 4:
                    raise ProtocolError("too much data before the torrent is known")
                return out
            end = len(buf)
            while end - pos >= 4:
                (length,) = _U32.unpack_from(buf, pos)
                if length > self.max_message_len:
                    raise ProtocolError(f"message of {length} bytes exceeds the limit")
                if end - pos - 4 < length:
                    break
                if length == 0:
                    out.append(_KEEPALIVE)
                else:
                    out.append(self._message(buf[pos + 4], bytes(buf[pos + 5 : pos + 4 + length])))
                pos += 4 + length
        except ProtocolError as exc:
            self._failed = exc
            raise
        finally:
            del buf[:pos]
        return out

    def _handshake(self, out: list[Message]) -> int:
        buf = self._buf
        head = bytes(buf[: len(_PREFIX)])
        if head != _PREFIX[: len(head)]:
            raise ProtocolError("not a BitTorrent handshake")
        if len(buf) < HANDSHAKE_LEN:
            return 0
        hs = Handshake(
            info_hash=bytes(buf[28:48]), peer_id=bytes(buf[48:68]), reserved=bytes(buf[20:28])
        )
        self.fast = self.fast and hs.supports_fast
        self.extended = self.extended and hs.supports_extensions
        self._want_handshake = False
        out.append(hs)
        return HANDSHAKE_LEN

    # --- checks shared by several message types -----------------------------------------

    def _index(self, index: int) -> int:
        assert self.num_pieces is not None
        if index >= self.num_pieces:
            raise ProtocolError(f"piece {index} out of range ({self.num_pieces} pieces)")
        return index

    def _span(self, index: int, begin: int, length: int) -> None:
        self._index(index)
        if not 0 < length <= self.max_request_len:
            raise ProtocolError(f"block length {length} not in 1..{self.max_request_len}")
        if self.piece_size is not None and begin + length > self.piece_size(index):
            raise ProtocolError(f"block {begin}+{length} runs past the end of piece {index}")

    def _need(self, flag: bool, name: str) -> None:
        if not flag:
            raise ProtocolError(f"{name} message, but that extension was not negotiated")

    def _message(self, msg_id: int, body: bytes) -> Message:
        size = len(body)

        def expect(n: int) -> None:
            if size != n:
                raise ProtocolError(f"message {msg_id} has {size} payload bytes, not {n}")

        if msg_id in _NO_PAYLOAD:
            expect(0)
            return _NO_PAYLOAD[msg_id]
        if msg_id == 4 or msg_id == 0x0D or msg_id == 0x11:
            expect(4)
            if msg_id != 4:
                self._need(self.fast, "fast extension")
            index = self._index(_U32.unpack_from(body)[0])
            if msg_id == 4:
                return Have(index)
            return Suggest(index) if msg_id == 0x0D else AllowedFast(index)
        if msg_id in (6, 8, 0x10):
            expect(12)
            index, begin, length = struct.unpack(">III", body)
            if msg_id == 0x10:
                self._need(self.fast, "reject request")
            self._span(index, begin, length)
            if msg_id == 6:
                return Request(index, begin, length)
            return (
                Cancel(index, begin, length) if msg_id == 8 else RejectRequest(index, begin, length)
            )
        if msg_id == 7:
            if size < 8:
                raise ProtocolError(f"piece message of {size} payload bytes")
            index, begin = struct.unpack_from(">II", body)
            self._span(index, begin, size - 8)
            return Piece(index, begin, body[8:])
        if msg_id == 5:
            assert self.num_pieces is not None
            expected = (self.num_pieces + 7) // 8
            if size != expected:
                raise ProtocolError(f"bitfield of {size} bytes, {expected} expected")
            spare = expected * 8 - self.num_pieces
            if spare and body[-1] & ((1 << spare) - 1):
                raise ProtocolError("bitfield has spare bits set")
            return Bitfield(body)
        if msg_id in _FAST_NO_PAYLOAD:
            expect(0)
            self._need(self.fast, "fast extension")
            return _FAST_NO_PAYLOAD[msg_id]
        if msg_id == 9:
            expect(2)
            return Port(struct.unpack(">H", body)[0])
        if msg_id == 20:
            self._need(self.extended, "extension protocol")
            if size < 1:
                raise ProtocolError("extended message without an extension id")
            try:
                payload, end = bencode.decode_prefix(body, 1, strict=False)
            except BencodeError as exc:
                raise ProtocolError(f"extended message {body[0]}: {exc}") from None
            if not isinstance(payload, dict):
                raise ProtocolError(f"extended message {body[0]} payload is not a dict")
            return Extended(body[0], payload, body[end:])
        return Unknown(msg_id, body)


# --- BEP 10 extension handshake ----------------------------------------------------------

#: debtorrent's own extensions.
#: BEP 11 peer exchange, and the swarm key proof (:mod:`debtorrent.torrent.swarmkey`).
UT_PEX = "ut_pex"
DT_SWARMKEY = "dt_swarmkey"
#: The ids we assign to the extensions we accept: peers send them to us under these.
#: The package data plane of suite swarms (docs/layout2.md,
#: :mod:`debtorrent.torrent.filewire`), then ``ut_pex`` and ``dt_swarmkey``, which are
#: only advertised when in use.
LOCAL_EXTENSIONS: Mapping[str, int] = {
    **{name: i + 1 for i, name in enumerate(filewire.NAMES)},
    UT_PEX: len(filewire.NAMES) + 1,
    DT_SWARMKEY: len(filewire.NAMES) + 2,
}
OPTIONAL_EXTENSIONS = frozenset({UT_PEX, DT_SWARMKEY})


@dataclass(frozen=True, slots=True)
class ExtensionHandshake:
    """The BEP 10 handshake: ``m`` (name -> id; 0, "disabled", left out), ``v``, ``p``,
    ``reqq``, and ``dt_run`` (the file plane's longest request served).

    :meth:`parse` is strict about ``m`` (it decides how we talk to the peer) and
    lenient about the informational keys: a ``v`` that is not UTF-8 is decoded with
    replacement characters, a ``p`` or ``reqq`` that is not a sensible integer is
    dropped. Unknown keys are ignored, as BEP 10 asks.
    """

    m: Mapping[str, int]
    v: str | None = None
    p: int | None = None
    reqq: int | None = None
    #: ``dt_run``: the longest file-plane request this peer serves (layout 2)
    run: int | None = None
    #: further top-level keys we send (an extension's own fields); not filled by parse
    extra: Mapping[str, Any] | None = None

    def message(self) -> Extended:
        """The :class:`Extended` message (ext id 0) carrying this handshake."""
        payload: dict[str, Any] = dict(self.extra or {})
        payload["m"] = dict(self.m)
        if self.v is not None:
            payload["v"] = self.v
        if self.p is not None:
            payload["p"] = self.p
        if self.reqq is not None:
            payload["reqq"] = self.reqq
        if self.run is not None:
            payload["dt_run"] = self.run
        return Extended(0, payload)

    @classmethod
    def local(
        cls,
        port: int | None = None,
        reqq: int | None = 250,
        optional: Iterable[str] = (),
        extra: Mapping[str, Any] | None = None,
        run: int | None = None,
    ) -> ExtensionHandshake:
        """Our own handshake: :data:`LOCAL_EXTENSIONS` (of the optional ones, those
        named in ``optional``), :data:`CLIENT_VERSION`, and ``extra`` keys."""
        wanted = set(optional)
        m = {
            name: ext_id
            for name, ext_id in LOCAL_EXTENSIONS.items()
            if name not in OPTIONAL_EXTENSIONS or name in wanted
        }
        return cls(m=m, v=CLIENT_VERSION, p=port, reqq=reqq, run=run, extra=extra)

    @classmethod
    def parse(cls, payload: Mapping[bytes, Any]) -> ExtensionHandshake:
        raw_m = payload.get(b"m", {})
        if not isinstance(raw_m, dict):
            raise ProtocolError("extension handshake 'm' is not a dict")
        m: dict[str, int] = {}
        for key, value in raw_m.items():
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise ProtocolError(f"extension handshake: bad id {value!r} for {key!r}")
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if value:
                m[name] = value
        v = payload.get(b"v")
        p = payload.get(b"p")
        reqq = payload.get(b"reqq")
        run = payload.get(b"dt_run")
        return cls(
            m=m,
            v=v.decode("utf-8", "replace") if isinstance(v, bytes) else None,
            p=p if isinstance(p, int) and 0 < p < 65536 else None,
            reqq=reqq if isinstance(reqq, int) and reqq > 0 else None,
            run=run if isinstance(run, int) and not isinstance(run, bool) and run > 0 else None,
        )
