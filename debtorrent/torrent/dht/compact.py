"""Compact node info and compact peer info (BEP 5, BEP 32 for IPv6), as pure functions.

A node is 20 bytes of id then a compact address; a compact address is 4 (IPv4) or 16
(IPv6) bytes of address then a 2-byte big-endian port. Entries that name no usable
endpoint (port 0, an unspecified, multicast or broadcast address) are skipped when
decoding rather than failing the whole message: one bad entry in a reply should not
throw away the rest.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

from debtorrent.errors import KrpcError

__all__ = [
    "ID_LEN",
    "NODE4_LEN",
    "NODE6_LEN",
    "NodeInfo",
    "decode_nodes",
    "decode_peer",
    "encode_nodes",
    "encode_peer",
    "usable_endpoint",
]

ID_LEN = 20
NODE4_LEN = ID_LEN + 6
NODE6_LEN = ID_LEN + 18
_PORT = struct.Struct(">H")


class NodeInfo(NamedTuple):
    """A DHT node: its 20-byte id and its UDP endpoint."""

    id: bytes
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


def usable_endpoint(ip: str, port: int) -> bool:
    """Whether ``ip:port`` can be sent to: a unicast address and a non-zero port."""
    if not 0 < port < 65536:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_unspecified or addr.is_multicast:
        return False
    return not (addr.version == 4 and ip == "255.255.255.255")


def encode_peer(ip: str, port: int) -> bytes:
    """Compact peer info: 6 bytes for IPv4, 18 for IPv6."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(family, ip) + _PORT.pack(port)


def decode_peer(blob: bytes) -> tuple[str, int] | None:
    """The address in 6 or 18 bytes of compact peer info; None if unusable."""
    if len(blob) == 6:
        ip = socket.inet_ntop(socket.AF_INET, blob[:4])
    elif len(blob) == 18:
        ip = socket.inet_ntop(socket.AF_INET6, blob[:16])
    else:
        raise KrpcError(f"compact peer info of {len(blob)} bytes")
    (port,) = _PORT.unpack_from(blob, len(blob) - 2)
    return (ip, port) if usable_endpoint(ip, port) else None


def encode_nodes(nodes: Iterable[NodeInfo], ipv6: bool = False) -> bytes:
    """Compact node info of the nodes of one family (others are left out)."""
    out = []
    for node in nodes:
        if (":" in node.ip) == ipv6:
            out.append(node.id + encode_peer(node.ip, node.port))
    return b"".join(out)


def decode_nodes(blob: bytes, ipv6: bool = False, limit: int | None = None) -> list[NodeInfo]:
    """The nodes in compact node info (``nodes`` or, with ``ipv6``, ``nodes6``).

    Raises :class:`KrpcError` when the length is not a whole number of entries or
    (with ``limit``) holds more than ``limit`` of them: a reply that large is not one
    an honest node sends.
    """
    size = NODE6_LEN if ipv6 else NODE4_LEN
    if len(blob) % size:
        raise KrpcError(f"compact node info of {len(blob)} bytes is not a multiple of {size}")
    count = len(blob) // size
    if limit is not None and count > limit:
        raise KrpcError(f"{count} nodes in one reply (at most {limit} accepted)")
    nodes = []
    for offset in range(0, len(blob), size):
        peer = decode_peer(blob[offset + ID_LEN : offset + size])
        if peer is not None:
            nodes.append(NodeInfo(blob[offset : offset + ID_LEN], peer[0], peer[1]))
    return nodes
