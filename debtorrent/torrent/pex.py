"""Peer exchange (BEP 11, ``ut_pex``), the pure part: payloads and what to tell each peer.

Every minute a peer that speaks ``ut_pex`` gets the listen addresses of the peers we
are connected to in that swarm that we have not told it about (``added``, with a flag
byte each: 0x02 seed, 0x10 reachable, i.e. we dialled it) and those that left since
(``dropped``): at most :data:`MAX_PER_MESSAGE` of each per message, as BEP 11 asks.

What a peer tells us is bounded the same way: at most :data:`MAX_PER_MESSAGE` added
addresses per family are read from one message (the rest are ignored), and
:class:`PexState` remembers at most :data:`MAX_TOLD` addresses per connection. Values
of the wrong type or length are a protocol error. The session decides what to do with
the addresses (the normal connection caps, the LAN-only filter).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from debtorrent.errors import ProtocolError

__all__ = [
    "FLAG_REACHABLE",
    "FLAG_SEED",
    "MAX_PER_MESSAGE",
    "MAX_TOLD",
    "PEX_INTERVAL",
    "PexMessage",
    "PexState",
    "decode_pex",
    "encode_pex",
]

UT_PEX = "ut_pex"
MAX_PER_MESSAGE = 50
MAX_TOLD = 200
#: Seconds between our messages to one peer; a peer's messages closer than
#: :data:`MIN_RECEIVE_GAP` to its previous one are ignored.
PEX_INTERVAL = 60.0
MIN_RECEIVE_GAP = 30.0
FLAG_SEED = 0x02
FLAG_REACHABLE = 0x10
_PORT = struct.Struct(">H")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PexMessage:
    """What one ``ut_pex`` message said: added addresses with flags, dropped ones."""

    added: tuple[tuple[str, int, int], ...] = ()
    dropped: tuple[Address, ...] = ()


def _pack(ip: str, port: int) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(family, ip) + _PORT.pack(port)


def encode_pex(added: list[tuple[str, int, int]], dropped: list[Address]) -> dict[str, bytes]:
    """The payload dict of a ``ut_pex`` message (both families, flags beside ``added``)."""
    out: dict[str, bytes] = {}
    for suffix, v6 in (("", False), ("6", True)):
        mine = [a for a in added if (":" in a[0]) == v6]
        out["added" + suffix] = b"".join(_pack(ip, port) for ip, port, _f in mine)
        out[f"added{suffix}.f"] = bytes(flags & 0xFF for _ip, _p, flags in mine)
        out["dropped" + suffix] = b"".join(
            _pack(ip, port) for ip, port in dropped if (":" in ip) == v6
        )
    return out


def _addresses(payload: Mapping[bytes, Any], key: bytes, v6: bool) -> list[Address]:
    blob = payload.get(key, b"")
    if not isinstance(blob, bytes):
        raise ProtocolError(f"ut_pex {key.decode()} is not a string")
    size = 18 if v6 else 6
    if len(blob) % size:
        raise ProtocolError(f"ut_pex {key.decode()} of {len(blob)} bytes")
    family = socket.AF_INET6 if v6 else socket.AF_INET
    out = []
    for offset in range(0, min(len(blob), size * MAX_PER_MESSAGE), size):
        ip = socket.inet_ntop(family, blob[offset : offset + size - 2])
        (port,) = _PORT.unpack_from(blob, offset + size - 2)
        if port:
            out.append((ip, port))
    return out


def decode_pex(payload: Any) -> PexMessage:
    """A ``ut_pex`` payload, bounded (see the module docstring)."""
    if not isinstance(payload, Mapping):
        raise ProtocolError("ut_pex payload is not a dict")
    added: list[tuple[str, int, int]] = []
    dropped: list[Address] = []
    for suffix, v6 in ((b"", False), (b"6", True)):
        addrs = _addresses(payload, b"added" + suffix, v6)
        flags = payload.get(b"added" + suffix + b".f", b"")
        if not isinstance(flags, bytes):
            flags = b""
        added += [
            (ip, port, flags[i] if i < len(flags) else 0) for i, (ip, port) in enumerate(addrs)
        ]
        dropped += _addresses(payload, b"dropped" + suffix, v6)
    return PexMessage(tuple(added), tuple(dropped))


class PexState:
    """What we told one peer: the next message is the difference with the present."""

    def __init__(self) -> None:
        self.told: dict[Address, int] = {}
        self.last_sent = float("-inf")
        self.last_received = float("-inf")

    def update(
        self, current: Mapping[Address, int]
    ) -> tuple[list[tuple[str, int, int]], list[Address]] | None:
        """The (added, dropped) lists to send for ``current`` (address -> flags), or None
        when there is nothing new. At most :data:`MAX_PER_MESSAGE` of each; the rest
        follow in later messages."""
        dropped = [a for a in self.told if a not in current][:MAX_PER_MESSAGE]
        for address in dropped:
            del self.told[address]
        room = max(0, MAX_TOLD - len(self.told))
        fresh = [(a, f) for a, f in current.items() if a not in self.told]
        added = fresh[: min(MAX_PER_MESSAGE, room)]
        for address, flags in added:
            self.told[address] = flags
        if not added and not dropped:
            return None
        return [(ip, port, flags) for (ip, port), flags in added], dropped
