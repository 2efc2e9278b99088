"""A file apt asked for, on its way through a suite swarm: what apt is streamed from.

Readers get the file's bytes as its pieces are verified, in order from the start, but
never the last byte before the whole file has matched the index SHA256
(:meth:`FileRequest.readable`). A file that fails that check fails the request (readers
are cut: what they got may be wrong); a retry is a new request.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from debtorrent.errors import DebtorrentError, MirrorTimeoutError
from debtorrent.torrent.catalog import Place

if TYPE_CHECKING:
    from debtorrent.torrent.suite import SuiteSwarm

__all__ = ["FileRequest"]


class FileRequest:
    """One attempt at one file for apt (see the module docstring).

    *place* is where apt asked for it (mirror, archive root, Filename): its mirror is
    the one fetched from when the mirror joins.
    """

    def __init__(self, swarm: SuiteSwarm, file: int, place: Place, attempts: int = 0) -> None:
        self.swarm = swarm
        self.file = file
        self.place = place
        self.mirror = place.mirror
        self.path = place.path
        self.length = swarm.layout.file_size(file)
        # this attempt's own date, given to the file when it completes: apt can resume
        # a cut stream of it, never across attempts (see cache.AttemptDates)
        self.last_modified: float | None = swarm.cache.dates.issue(str(swarm.final_path(file)))
        self.event = Event()
        self.error: DebtorrentError | None = None
        self.final: Path | None = None
        self.started = time.monotonic()
        self.attempts = attempts
        self.mirror_joined = False  # the access log's source: "mirror" once it joined
        self.mirror_tries = 0  # fetches from the mirror started for this request
        self._pieces = swarm.layout.file_pieces(file)
        self._prefix = 0  # bytes from the start of the file in verified pieces
        self._next = self._pieces.start
        self._changed = Event()

    @property
    def done(self) -> bool:
        return self.event.is_set() and self.error is None

    @property
    def source(self) -> str:
        """``peer`` when peers sent the whole file, ``mirror`` when the mirror joined."""
        return "mirror" if self.mirror_joined else "peer"

    def notify(self) -> None:
        """Pieces were verified (or the request ended): wake the readers."""
        have = self.swarm.have
        layout = self.swarm.layout
        while self._next < self._pieces.stop and self._next in have:
            self._prefix += layout.piece_size(self._next)
            self._next += 1
        changed, self._changed = self._changed, Event()
        changed.set()

    def finish(self, final: Path) -> None:
        self.final = final
        self.event.set()
        self.notify()

    def fail(self, error: DebtorrentError) -> None:
        self.error = error
        self.event.set()
        self.notify()

    def readable(self) -> int:
        """Bytes a reader may have now: all once verified, else all but the last."""
        if self.done:
            return self.length
        return min(self._prefix, self.length - 1)

    def wait_headers(self, timeout: float) -> None:
        """Nothing to wait for: the size is known from the index."""

    def read(self, offset: int, size: int, timeout: float) -> bytes:
        """Up to ``size`` bytes at ``offset``, waiting at most ``timeout`` for them."""
        with gevent.Timeout(timeout, False):
            while self.readable() <= offset and not self.event.is_set():
                self._changed.wait()
        if self.error is not None:
            raise self.error
        end = min(self.readable(), offset + size)
        if end <= offset:
            if self.done:
                return b""
            raise MirrorTimeoutError(self.path, "no progress from peers or mirror in time")
        layout = self.swarm.layout
        piece = self._pieces.start + offset // layout.piece_length
        begin = offset % layout.piece_length
        length = min(end - offset, layout.piece_size(piece) - begin)
        return self.swarm.store.read(piece, begin, length)

    def wait(self, timeout: float | None) -> Path:
        """Block until done; raise the failure, or a timeout as a 504."""
        if not self.event.wait(timeout):
            raise MirrorTimeoutError(self.path, "file not complete in time")
        if self.error is not None:
            raise self.error
        assert self.final is not None
        return self.final
