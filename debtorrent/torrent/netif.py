"""This host's network interfaces and their addresses (Linux ``getifaddrs(3)``, via ctypes).

Local service discovery needs them: it joins its multicast group and sends its
announces on each interface that can carry multicast, and it treats a packet as local
when its source lies in a network of one of these interfaces. The standard library has
no portable call for this; ``getifaddrs`` from the C library returns every address
(primary and secondary, IPv4 and IPv6) with its netmask and the interface's flags.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import socket
from dataclasses import dataclass, field

__all__ = ["Interface", "interfaces"]

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_MULTICAST = 0x1000


class _Sockaddr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 14)]


class _Sockaddr6(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_ushort),
        ("flowinfo", ctypes.c_uint32),
        ("addr", ctypes.c_ubyte * 16),
        ("scope_id", ctypes.c_uint32),
    ]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("next", ctypes.POINTER(_IfAddrs)),
    ("name", ctypes.c_char_p),
    ("flags", ctypes.c_uint),
    ("addr", ctypes.POINTER(_Sockaddr)),
    ("netmask", ctypes.POINTER(_Sockaddr)),
    ("ifu", ctypes.POINTER(_Sockaddr)),
    ("data", ctypes.c_void_p),
]


@dataclass
class Interface:
    """One interface: its name, index, flags, and its IPv4 and IPv6 networks."""

    name: str
    index: int
    flags: int
    ipv4: list[ipaddress.IPv4Interface] = field(default_factory=list)
    ipv6: list[ipaddress.IPv6Interface] = field(default_factory=list)

    @property
    def multicast(self) -> bool:
        """Up, not loopback, and able to carry multicast."""
        wanted = IFF_UP | IFF_MULTICAST
        return self.flags & wanted == wanted and not self.flags & IFF_LOOPBACK


def _address(ptr, family: int) -> bytes | None:
    if not ptr:
        return None
    if family == socket.AF_INET:
        return bytes(ptr.contents.data[2:6])
    if family == socket.AF_INET6:
        return bytes(ctypes.cast(ptr, ctypes.POINTER(_Sockaddr6)).contents.addr)
    return None


def _prefix(mask: bytes | None) -> int:
    return sum(bin(b).count("1") for b in mask) if mask else 0


def interfaces() -> list[Interface]:
    """Every interface with at least one IPv4 or IPv6 address; [] if the call fails."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return []
    found: dict[str, Interface] = {}
    try:
        entry = head
        while entry:
            item = entry.contents
            entry = item.next
            if not item.addr or not item.name:
                continue
            family = item.addr.contents.family
            raw = _address(item.addr, family)
            if raw is None:
                continue
            name = item.name.decode("utf-8", "replace")
            try:
                index = socket.if_nametoindex(name)
            except OSError:
                continue
            iface = found.setdefault(name, Interface(name, index, item.flags))
            prefix = _prefix(_address(item.netmask, family))
            if family == socket.AF_INET:
                iface.ipv4.append(ipaddress.IPv4Interface((raw, prefix)))
            else:
                iface.ipv6.append(ipaddress.IPv6Interface((raw, prefix)))
    finally:
        libc.freeifaddrs(head)
    return list(found.values())
