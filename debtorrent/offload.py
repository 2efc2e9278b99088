"""Blocking work taken off the hub: hashing, decompression, fsync, large reads.

Everything in the daemon runs on one gevent hub, so a 50 MB index decompressed and
hashed in place, or an ``fsync`` on a slow disk, would hold every apt request and peer
for its whole duration. These calls release the GIL (hashlib over large buffers,
lzma/bz2/zlib, ``os.fsync``, ``os.pread``), so they run in gevent's threadpool, as
libtorrent keeps disk work off its network thread: the calling greenlet waits, the
hub goes on. The function run must touch no shared state; results come back to the
hub, which alone changes shared state.

Called from the hub itself (a callback) the work simply runs in place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TypeVar

import gevent

__all__ = ["fsync", "run", "sha256_bytes", "sha256_file"]

T = TypeVar("T")

READ_SIZE = 1 << 20
SMALL = 65536  # below this, handing work to a thread costs more than doing it here


def run(function: Callable[..., T], *args) -> T:
    """``function(*args)`` in the threadpool; the calling greenlet waits for it."""
    return gevent.get_hub().threadpool.apply(function, args)


def sha256_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """SHA256 of a buffer; large ones hashed off the hub."""
    if len(data) < SMALL:
        return hashlib.sha256(data).digest()
    return run(_digest, data)


def _digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_file(path: str | os.PathLike[str]) -> bytes:
    """SHA256 of a whole file, read and hashed off the hub (OSError if unreadable)."""
    return run(_hash_file, path)


def _hash_file(path: str | os.PathLike[str]) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_SIZE):
            digest.update(chunk)
    return digest.digest()


def fsync(fd: int) -> None:
    """``os.fsync`` off the hub: a slow disk must not stall apt and the peers."""
    run(os.fsync, fd)
