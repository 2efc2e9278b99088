"""The mirror as an HTTP seed (BEP 19 style) for one file of a package swarm.

The URL is the archive root plus the index's ``Filename``. A fetch asks with ``Range``
for the part from the first missing piece; a mirror that ignores ``Range`` (the real
one reachable here answers 200 with the whole body) is read as a stream, skipping what
is already had. Each piece is handed to the swarm as soon as it is complete, so peers
waiting on this daemon get it while the rest is still coming.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import gevent

from debtorrent.errors import DebtorrentError, MirrorError, VerificationError

if TYPE_CHECKING:
    from debtorrent.torrent.packages import PackageSwarm
    from debtorrent.torrent.peer import PeerConnection

__all__ = ["MirrorFetch"]

log = logging.getLogger(__name__)


class MirrorFetch:
    """One file streaming from the mirror into its swarm."""

    def __init__(self, swarm: PackageSwarm, file_index: int) -> None:
        self.swarm = swarm
        self.file_index = file_index
        root = swarm.loaded.release.root
        filename = swarm.index.filenames[file_index]
        path = f"{root}/{filename}" if root else filename
        self.url = f"http://{swarm.loaded.mirror}/{quote(path, safe='/~+:@!$&()*,;=')}"
        self.started_ms = int(time.time() * 1000)
        self.yielded = False
        self.settle = 0.0  # seconds between our claim and our first request
        self.greenlet: gevent.Greenlet | None = None
        self.stored = 0  # pieces of the file this fetch stored (the swarm counts them)
        # SHA256 of the body while it streams from the file's first byte, so a file
        # that came whole from this stream is not read back to be checked
        self._whole = hashlib.sha256()
        self._hashed = 0

    def whole_digest(self) -> bytes | None:
        """SHA256 of the whole file if every piece of it came from this stream."""
        size = self.swarm.layout.file_size(self.file_index)
        if self._hashed != size or self.stored != len(
            self.swarm.layout.file_pieces(self.file_index)
        ):
            return None
        return self._whole.digest()

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def yield_to(self, peer: PeerConnection) -> None:
        """Another daemon fetches this file and wins the tie-break: stop, keep pieces."""
        self.yielded = True

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)

    def _run(self) -> None:
        error: DebtorrentError | None = None
        try:
            if self.settle:  # let a claim sent at the same moment by a peer cross ours
                gevent.sleep(self.settle)
            if not self.yielded:
                self._transfer()
        except DebtorrentError as exc:
            error = exc
            log.warning("%s: mirror fetch of %s failed: %s", self.swarm, self.url, exc)
        finally:
            if self.yielded and error is None:
                error = MirrorError(self.url, "left to another daemon")
            self.swarm.mirror_done(self, error)

    def _missing_runs(self) -> list[range]:
        """Runs of consecutive pieces of the file we still lack, in order."""
        have = self.swarm.have
        runs: list[range] = []
        start = None
        pieces = self.swarm.layout.file_pieces(self.file_index)
        for piece in pieces:
            if piece in have:
                if start is not None:
                    runs.append(range(start, piece))
                    start = None
            elif start is None:
                start = piece
        if start is not None:
            runs.append(range(start, pieces.stop))
        return runs

    def _transfer(self) -> None:
        """Ask for each missing run with ``Range``; a mirror answering 200 sends the whole
        file, which is read once (skipping what is had) and ends the fetch."""
        for run in self._missing_runs():
            if self.yielded or not self._fetch_run(run):
                break
        if not self.yielded and self._missing_runs():
            raise MirrorError(self.url, "the mirror did not send every missing piece")
        if not self.yielded:
            log.debug("%s: fetched %s from the mirror", self.swarm, self.url)

    def _fetch_run(self, run: range) -> bool:
        """Fetch pieces ``run``; False when the mirror sent the whole file instead."""
        swarm = self.swarm
        layout = swarm.layout
        pieces = layout.file_pieces(self.file_index)
        size = layout.file_size(self.file_index)
        file_offset = layout.file_offset(self.file_index)
        first = layout.piece_offset(run.start) - file_offset
        last = layout.piece_offset(run.stop - 1) - file_offset + layout.piece_size(run.stop - 1)
        whole = first == 0 and last == size
        headers = {} if whole else {"Range": f"bytes={first}-{last - 1}"}
        response = swarm.session.mirror.get(self.url, headers)
        if response.last_modified:
            swarm.mirror_dates[self.file_index] = response.last_modified
        ranged = response.status == 206
        position = response.start if ranged else 0
        expected = (last - first) if ranged else size
        if ranged and position != first:
            response.release()
            raise MirrorError(self.url, f"asked for byte {first}, got {position}")
        if response.length is not None and response.length != expected:
            response.release()
            raise VerificationError(
                self.url, f"mirror sends {response.length} bytes, expected {expected}"
            )
        piece = pieces.start + position // layout.piece_length
        stop = run.stop if ranged else pieces.stop
        pending = b""  # the start of the next piece, when a read ended inside it
        streaming_whole = position == 0 and self._hashed == 0
        for chunk in response.chunks():
            if self.yielded:
                response.release()
                return False
            if streaming_whole:
                self._whole.update(chunk)
                self._hashed += len(chunk)
            # reads are piece-sized and start on a piece: usually a read is a piece, as is
            data = pending + chunk if pending else chunk
            offset = 0
            while piece < stop and len(data) - offset >= layout.piece_size(piece):
                size = layout.piece_size(piece)
                whole = offset == 0 and size == len(data)
                swarm.mirror_piece(self, piece, data if whole else data[offset : offset + size])
                offset += size
                piece += 1
            pending = data[offset:]
            if pending and piece >= stop:
                raise VerificationError(self.url, "longer than the index says")
        if piece < stop:
            raise MirrorError(self.url, f"body ended at piece {piece - pieces.start}")
        return ranged
