"""Piece hash lists of the files of a suite swarm larger than one piece.

An index gives one SHA256 per file. A file of several pieces needs a SHA256 per piece
before its pieces can be checked as they arrive: a peer that has the file whole hashes
its copy; a peer fetching it from the mirror hashes each piece as it comes and can share
the list while it grows (a prefix of the whole list). A downloader takes one list per
file, checks every piece against it, and when the last piece is in, checks the whole
file against the index SHA256, the only judge: a list that leads to a bad file, or a
piece that fails its list, makes its giver distrusted.

This class keeps the lists and who gave them, asks peers (``dt_hashes``) at most once a
second per file and peer, and answers peers, hashing a complete file off the hub once
however many peers ask for it at the same time. Files are the catalog's numbers; peers
are whatever objects the swarm passes (the connection).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from gevent.event import AsyncResult

from debtorrent.errors import DebtorrentError, ProtocolError

__all__ = ["ASK_INTERVAL", "HashLists"]

log = logging.getLogger(__name__)

ASK_INTERVAL = 1.0  # seconds between two asks of one peer for one file's list


class HashLists:
    """Per-file piece SHA256 lists (possibly prefixes), with their givers."""

    def __init__(self, hash_pieces: Callable[[int], list[bytes]]) -> None:
        # hash_pieces(file): our SHA256 of each piece of a complete file (runs off the hub)
        self._hash_pieces = hash_pieces
        self.lists: dict[int, list[bytes]] = {}
        self.givers: dict[int, Any] = {}  # file -> peer that gave the list (None: ours)
        self._asked: dict[tuple[int, Hashable], float] = {}
        self._hashing: dict[int, AsyncResult] = {}

    def known(self, file: int) -> int:
        return len(self.lists.get(file, ()))

    def piece(self, file: int, position: int) -> bytes | None:
        """The SHA256 of piece *position* (from 0) of *file*, if known."""
        known = self.lists.get(file)
        return known[position] if known is not None and position < len(known) else None

    def giver(self, file: int) -> Any:
        return self.givers.get(file)

    def drop(self, file: int) -> None:
        """Forget a file's list (a bad file, a distrusted giver, the file is gone)."""
        self.lists.pop(file, None)
        self.givers.pop(file, None)

    def peer_gone(self, peer: Hashable) -> None:
        for key in [k for k in self._asked if k[1] is peer]:
            del self._asked[key]

    # --- our own list (the mirror is the origin) ------------------------------------------

    def own(
        self, file: int, position: int, digest: bytes, held: Callable[[int], list[bytes]]
    ) -> None:
        """Record the SHA256 of a piece we fetched from the mirror: the mirror is the
        origin, so where a peer's list disagrees, ours replaces it from there on.

        ``held(count)`` hashes the first *count* pieces we hold (off the hub) when pieces
        before this one came from peers and are not in our list yet.
        """
        done = self.known(file)
        if done < position:
            try:
                caught_up = held(position)[done:]
            except DebtorrentError as exc:
                log.warning("cannot hash the held pieces of file %d: %s", file, exc)
                return
            known = self.lists.setdefault(file, [])
            if len(known) == done:
                known.extend(caught_up)
        known = self.lists.setdefault(file, [])
        if len(known) < position:
            return  # changed while hashing: the whole-file check still judges
        if len(known) > position and known[position] == digest:
            return
        del known[position:]
        known.append(digest)
        self.givers[file] = None

    # --- asking peers -------------------------------------------------------------------

    def should_ask(self, file: int, peer: Hashable, offers: int, now: float | None = None) -> bool:
        """Whether to ask *peer* for *file*'s list: it has more pieces (*offers*) than our
        list covers, and was not asked in the last :data:`ASK_INTERVAL` seconds."""
        if offers <= self.known(file):
            return False
        now = time.monotonic() if now is None else now
        key = (file, peer)
        if now - self._asked.get(key, float("-inf")) < ASK_INTERVAL:
            return False
        self._asked[key] = now
        return True

    def offered(self, file: int, pieces: int, hashes: list[bytes], peer: Any) -> bool:
        """A peer's list for *file* (of *pieces* pieces); returns whether it was taken.

        Taken when it is longer than ours and agrees with what we verify against; a list
        longer than the file is a protocol error.
        """
        if len(hashes) > pieces:
            raise ProtocolError(f"dt_hashes: {len(hashes)} hashes for {pieces} pieces")
        known = self.lists.get(file, [])
        if len(hashes) <= len(known) or hashes[: len(known)] != known:
            return False
        self.lists[file] = hashes
        self.givers[file] = peer
        return True

    # --- answering peers ----------------------------------------------------------------

    def for_peer(self, file: int, pieces: int, complete: bool) -> list[bytes]:
        """Our list for *file*, to send: a complete file is hashed from the cache on
        demand (off the hub, once however many peers ask at the same time)."""
        known = self.lists.get(file, [])
        if len(known) >= pieces or not complete:
            return known
        pending = self._hashing.get(file)
        if pending is None:
            pending = self._hashing[file] = AsyncResult()
            try:
                pending.set(self._hash_pieces(file))
            except DebtorrentError as exc:
                log.warning("cannot hash file %d for a peer: %s", file, exc)
                pending.set([])
            finally:
                del self._hashing[file]
            hashes = pending.get()
            if hashes:
                self.lists[file] = hashes
                self.givers[file] = None
        return pending.get() or known
