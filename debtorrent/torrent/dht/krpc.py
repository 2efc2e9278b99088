"""KRPC (BEP 5): DHT messages as bencoded dicts, decoded into typed values and back.

Decoding is strict about what a value *is* and lenient about how it is *spelt*: dict
keys out of order are accepted (several DHT implementations do not sort them, and
nothing here is hashed), but every field that is used must have its type and size,
and every list is bounded before anything is built from it. Anything else raises
:class:`~debtorrent.errors.KrpcError`, which the node counts and drops. Unknown keys
are ignored, as BEP 5 asks, so extensions (BEP 32 ``want``, BEP 42 ``ip``, BEP 43
``ro``, BEP 44...) pass through harmlessly; only ``ro`` is read.

A query with an unknown method still decodes (``Query.method`` holds its name) so the
node can answer "204 Method Unknown"; a query of a known method with bad arguments
raises :class:`KrpcError` carrying the transaction id and code 203, so the node can
answer it with an error rather than silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from debtorrent.errors import BencodeError, KrpcError
from debtorrent.torrent import bencode
from debtorrent.torrent.dht.compact import (
    ID_LEN,
    NodeInfo,
    decode_nodes,
    decode_peer,
    encode_nodes,
    encode_peer,
)

__all__ = [
    "MAX_NODES",
    "MAX_PACKET",
    "MAX_TOKEN",
    "MAX_VALUES",
    "METHODS",
    "VERSION",
    "Error",
    "Message",
    "Query",
    "Response",
    "decode",
    "encode",
]

#: Largest datagram read; anything longer is dropped before decoding. An honest get_peers
#: reply with 100 values and 8 nodes is about 1 KB.
MAX_PACKET = 4096
#: Nodes accepted per family in one reply (honest nodes send 8; some send 16).
MAX_NODES = 32
#: Peers accepted in one ``values`` list.
MAX_VALUES = 256
#: Longest token and transaction id accepted.
MAX_TOKEN = 64
MAX_T = 32
#: The queries BEP 5 defines (and this node answers).
METHODS = ("ping", "find_node", "get_peers", "announce_peer")
#: ``v``: two letters naming the client and two version bytes.
VERSION = b"DT\x00\x01"


@dataclass(frozen=True, slots=True)
class Query:
    """A query; which of the optional fields are set depends on ``method``."""

    t: bytes
    method: str
    sender: bytes
    target: bytes | None = None  # find_node
    info_hash: bytes | None = None  # get_peers, announce_peer
    port: int | None = None  # announce_peer
    token: bytes | None = None  # announce_peer
    implied_port: bool = False  # announce_peer: use the UDP source port
    read_only: bool = False  # BEP 43: do not add the sender to routing tables


@dataclass(frozen=True, slots=True)
class Response:
    """A reply: the sender's id and whatever the query asked for."""

    t: bytes
    sender: bytes
    nodes: tuple[NodeInfo, ...] = ()
    nodes6: tuple[NodeInfo, ...] = ()
    values: tuple[tuple[str, int], ...] = ()
    token: bytes | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """A KRPC error: 201 generic, 202 server, 203 protocol, 204 method unknown."""

    t: bytes
    code: int
    message: str


Message = Query | Response | Error


# --- decoding ---------------------------------------------------------------------------------


def decode(data: bytes) -> Message:
    """One datagram as a message; :class:`KrpcError` for anything malformed."""
    if len(data) > MAX_PACKET:
        raise KrpcError(f"datagram of {len(data)} bytes")
    try:
        msg = bencode.decode(data, sorted_keys=False, max_depth=8)
    except BencodeError as exc:
        raise KrpcError(f"not bencoded: {exc}") from None
    if not isinstance(msg, dict):
        raise KrpcError("not a dictionary")
    t = msg.get(b"t")
    if not isinstance(t, bytes) or not 0 < len(t) <= MAX_T:
        raise KrpcError("missing or bad transaction id")
    kind = msg.get(b"y")
    if kind == b"q":
        return _query(msg, t)
    if kind == b"r":
        return _response(msg, t)
    if kind == b"e":
        return _error(msg, t)
    raise KrpcError(f"unknown message type {kind!r}")


def _node_id(value: Any, what: str, t: bytes | None = None) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_LEN:
        raise KrpcError(f"{what} is not a 20-byte id", t=t)
    return value


def _query(msg: dict, t: bytes) -> Query:
    method = msg.get(b"q")
    if not isinstance(method, bytes) or not 0 < len(method) <= 32:
        raise KrpcError("query without a method name", t=t)
    try:
        name = method.decode("ascii")
    except UnicodeDecodeError:
        raise KrpcError("method name is not ASCII", code=204, t=t) from None
    args = msg.get(b"a")
    if not isinstance(args, dict):
        raise KrpcError("query without arguments", t=t)
    sender = _node_id(args.get(b"id"), "querying node id", t)
    read_only = msg.get(b"ro") == 1
    if name == "ping" or name not in METHODS:
        return Query(t, name, sender, read_only=read_only)
    if name == "find_node":
        target = _node_id(args.get(b"target"), "find_node target", t)
        return Query(t, name, sender, target=target, read_only=read_only)
    info_hash = _node_id(args.get(b"info_hash"), f"{name} info_hash", t)
    if name == "get_peers":
        return Query(t, name, sender, info_hash=info_hash, read_only=read_only)
    port = args.get(b"port")
    implied = args.get(b"implied_port", 0)
    if not isinstance(implied, int) or implied not in (0, 1):
        raise KrpcError("announce_peer implied_port is not 0 or 1", t=t)
    if not implied and (not isinstance(port, int) or not 0 < port < 65536):
        raise KrpcError("announce_peer without a valid port", t=t)
    token = args.get(b"token")
    if not isinstance(token, bytes) or not 0 < len(token) <= MAX_TOKEN:
        raise KrpcError("announce_peer without a valid token", t=t)
    return Query(
        t,
        name,
        sender,
        info_hash=info_hash,
        port=port if isinstance(port, int) and 0 < port < 65536 else None,
        token=token,
        implied_port=bool(implied),
        read_only=read_only,
    )


def _response(msg: dict, t: bytes) -> Response:
    body = msg.get(b"r")
    if not isinstance(body, dict):
        raise KrpcError("reply without a body")
    sender = _node_id(body.get(b"id"), "replying node id")
    nodes: list[NodeInfo] = []
    nodes6: list[NodeInfo] = []
    raw = body.get(b"nodes")
    if raw is not None:
        if not isinstance(raw, bytes):
            raise KrpcError("'nodes' is not a string")
        nodes = decode_nodes(raw, limit=MAX_NODES)
    raw6 = body.get(b"nodes6")
    if raw6 is not None:
        if not isinstance(raw6, bytes):
            raise KrpcError("'nodes6' is not a string")
        nodes6 = decode_nodes(raw6, ipv6=True, limit=MAX_NODES)
    values: list[tuple[str, int]] = []
    raw_values = body.get(b"values")
    if raw_values is not None:
        if not isinstance(raw_values, list) or len(raw_values) > MAX_VALUES:
            raise KrpcError(f"'values' is not a list of at most {MAX_VALUES} peers")
        for item in raw_values:
            if not isinstance(item, bytes):
                raise KrpcError("'values' holds something that is not compact peer info")
            peer = decode_peer(item)
            if peer is not None:
                values.append(peer)
    token = body.get(b"token")
    if token is not None and (not isinstance(token, bytes) or not 0 < len(token) <= MAX_TOKEN):
        raise KrpcError("bad token")
    return Response(t, sender, tuple(nodes), tuple(nodes6), tuple(values), token)


def _error(msg: dict, t: bytes) -> Error:
    body = msg.get(b"e")
    code, text = 201, ""
    if isinstance(body, list):
        if body and isinstance(body[0], int):
            code = body[0]
        if len(body) > 1 and isinstance(body[1], bytes):
            text = body[1][:200].decode("utf-8", "replace")
    elif body is not None:
        raise KrpcError("error body is not a list")
    return Error(t, code, text)


# --- encoding ---------------------------------------------------------------------------------


def encode(msg: Message, *, read_only: bool = False) -> bytes:
    """The datagram for one message (``read_only`` marks our queries as BEP 43)."""
    if isinstance(msg, Query):
        args: dict[bytes, Any] = {b"id": msg.sender}
        if msg.target is not None:
            args[b"target"] = msg.target
        if msg.info_hash is not None:
            args[b"info_hash"] = msg.info_hash
        if msg.method == "announce_peer":
            args[b"port"] = msg.port or 0
            args[b"token"] = msg.token or b""
            args[b"implied_port"] = int(msg.implied_port)
        out: dict[bytes, Any] = {
            b"t": msg.t,
            b"y": b"q",
            b"q": msg.method.encode("ascii"),
            b"a": args,
            b"v": VERSION,
        }
        if read_only or msg.read_only:
            out[b"ro"] = 1
        return bencode.encode(out)
    if isinstance(msg, Response):
        body: dict[bytes, Any] = {b"id": msg.sender}
        if msg.nodes:
            body[b"nodes"] = encode_nodes(msg.nodes)
        if msg.nodes6:
            body[b"nodes6"] = encode_nodes(msg.nodes6, ipv6=True)
        if msg.values:
            body[b"values"] = [encode_peer(ip, port) for ip, port in msg.values]
        if msg.token is not None:
            body[b"token"] = msg.token
        return bencode.encode({b"t": msg.t, b"y": b"r", b"r": body, b"v": VERSION})
    if isinstance(msg, Error):
        return bencode.encode(
            {b"t": msg.t, b"y": b"e", b"e": [msg.code, msg.message.encode("utf-8")], b"v": VERSION}
        )
    raise TypeError(f"not a KRPC message: {msg!r}")
