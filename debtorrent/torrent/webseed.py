"""The mirror as an HTTP seed (BEP 19 style) for one file of a package swarm.

The URL is the archive root plus the index's ``Filename`` (:func:`mirror_url`). A fetch
asks with ``Range`` for the part from the first missing piece; a mirror that ignores
``Range`` (the real one reachable here answers 200 with the whole body) is read as a
stream, skipping what is already had. Each piece is handed to the swarm as soon as it
is complete, so peers waiting on this daemon get it while the rest is still coming.

A fetch knows its swarm only through :class:`WebSeedSink` (the layout, what is had,
where pieces and the end go), so this module imports nothing of the package swarm.

For a standard v1 ``.torrent`` (the standalone entry point), :class:`WebSeed` is a BEP 19
``url-list`` web seed: like libtorrent's web peer, it is one more peer of the swarm,
with every piece, that the picker asks for blocks; it fetches each piece's byte ranges
from the files the piece spans and hands the blocks to the swarm, which verifies them
like any peer's.

A dead mirror is not hammered: :class:`MirrorHealth` keeps a back-off per mirror (2, 4,
8 ... s up to :attr:`~debtorrent.policy.Policy.mirror_backoff`'s cap) after failures of
the mirror itself (refused, a 5xx, no answer in time; not a 404, nor a body cut or wrong
after the mirror answered: it is up, and apt's retry may go to it at once), the swarm
asks it before starting a fetch, and the failures are logged once per period with a
count instead of once each (before: 141 to 211 "connection refused" warnings per daemon
in a minute).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

import gevent

from debtorrent.errors import (
    DebtorrentError,
    MirrorError,
    MirrorNotFoundError,
    VerificationError,
)
from debtorrent.mirror import Mirror
from debtorrent.policy import Backoff
from debtorrent.torrent.layout import BLOCK_SIZE, Layout
from debtorrent.torrent.picker import PieceSet

if TYPE_CHECKING:
    from debtorrent.torrent.swarm import TorrentSwarm

__all__ = ["MirrorFetch", "MirrorHealth", "WebSeed", "WebSeedSink", "mirror_url", "web_seed_url"]

log = logging.getLogger(__name__)


def mirror_url(mirror: str, root: str, filename: str) -> str:
    """The HTTP URL of an index's ``Filename`` on a mirror under archive root *root*."""
    path = f"{root}/{filename}" if root else filename
    return f"http://{mirror}/{quote(path, safe='/~+:@!$&()*,;=')}"


class WebSeedSink(Protocol):
    """What a :class:`MirrorFetch` feeds: the swarm of the file, seen from outside."""

    layout: Layout
    have: Container[int]

    def mirror_piece(self, fetch: MirrorFetch, piece: int, data: bytes) -> object:
        """A whole piece read from the mirror (may raise to end the fetch)."""

    def mirror_done(self, fetch: MirrorFetch, error: DebtorrentError | None) -> None:
        """The fetch ended: complete (``None``), left to another daemon, or failed."""


@dataclass
class _MirrorState:
    failures: int = 0
    next_try: float = 0.0
    unlogged: int = 0  # failures since the last log line
    logged_at: float = float("-inf")
    last_error: str = ""


class MirrorHealth:
    """Per-mirror back-off after failures, and one log line per period with a count."""

    def __init__(
        self, backoff: Backoff, log_period: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backoff = backoff
        self.log_period = log_period
        self.clock = clock
        self._mirrors: dict[str, _MirrorState] = {}

    def ready(self, mirror: str) -> bool:
        """Whether a fetch from *mirror* may start now."""
        state = self._mirrors.get(mirror)
        return state is None or state.next_try <= self.clock()

    def retry_in(self, mirror: str) -> float:
        """Seconds until *mirror* may be asked again (0 when it may now)."""
        state = self._mirrors.get(mirror)
        return 0.0 if state is None else max(0.0, state.next_try - self.clock())

    def failures(self, mirror: str) -> int:
        state = self._mirrors.get(mirror)
        return 0 if state is None else state.failures

    @staticmethod
    def counts(error: DebtorrentError) -> bool:
        """Whether *error* says the mirror is unwell (not: a missing or bad file)."""
        return isinstance(error, MirrorError) and not isinstance(error, MirrorNotFoundError)

    def failed(self, mirror: str, error: DebtorrentError) -> None:
        """A fetch from *mirror* failed: back off, and log unless logged this period."""
        now = self.clock()
        state = self._mirrors.setdefault(mirror, _MirrorState())
        state.failures += 1
        state.next_try = now + self.backoff.delay(state.failures)
        state.unlogged += 1
        state.last_error = str(error)
        if now - state.logged_at >= self.log_period:
            log.warning(
                "mirror %s: %d failure%s in the last %.0f s (latest: %s); next try in %.0f s",
                mirror,
                state.unlogged,
                "" if state.unlogged == 1 else "s",
                min(self.log_period, now - state.logged_at),
                state.last_error,
                state.next_try - now,
            )
            state.logged_at = now
            state.unlogged = 0

    def succeeded(self, mirror: str) -> None:
        state = self._mirrors.pop(mirror, None)
        if state is not None and state.failures:
            log.info("mirror %s answers again after %d failures", mirror, state.failures)


class MirrorFetch:
    """One file streaming from the mirror into its swarm."""

    def __init__(
        self,
        sink: WebSeedSink,
        file_index: int,
        url: str,
        mirror: Mirror,
        health: MirrorHealth | None = None,
        host: str = "",
    ) -> None:
        self.sink = sink
        self.file_index = file_index
        self.url = url
        self.mirror = mirror
        self.health = health
        self.host = host or url.split("/", 3)[2]
        self.started_ms = int(time.time() * 1000)
        self.answered = False  # the mirror answered (a failure after that is no outage)
        self.yielded = False
        self.settle = 0.0  # seconds between our claim and our first request
        self.greenlet: gevent.Greenlet | None = None
        self.stored = 0  # pieces of the file this fetch stored (the swarm counts them)
        # SHA256 of the body while it streams from the file's first byte, so a file
        # that came whole from this stream is not read back to be checked
        self._whole = hashlib.sha256()
        self._hashed = 0

    @property
    def has(self) -> range:
        """What this peer of the picker has: every piece of its file."""
        return self.sink.layout.file_pieces(self.file_index)

    def cancel(self, piece: int, begin: int) -> None:
        """A peer brought a block this fetch claimed: the stream goes on regardless
        (it skips what is had), as a web seed's response cannot be cut per block."""

    def whole_digest(self) -> bytes | None:
        """SHA256 of the whole file if every piece of it came from this stream."""
        layout = self.sink.layout
        size = layout.file_size(self.file_index)
        if self._hashed != size or self.stored != len(layout.file_pieces(self.file_index)):
            return None
        return self._whole.digest()

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def yield_to(self, peer: object) -> None:
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
            if self.health is not None and not self.answered and self.health.counts(exc):
                self.health.failed(self.host, exc)  # refused, 5xx, no answer: back off
            else:
                log.warning(
                    "%s: mirror fetch of %s failed: %s",
                    self.sink,
                    self.url,
                    exc,
                    extra={"failure": exc},  # the status page lists it once
                )
        finally:
            if self.health is not None and self.answered:
                self.health.succeeded(self.host)
            if self.yielded and error is None:
                error = MirrorError(self.url, "left to another daemon")
            self.sink.mirror_done(self, error)

    def _missing_runs(self) -> list[range]:
        """Runs of consecutive pieces of the file we still lack, in order."""
        have = self.sink.have
        runs: list[range] = []
        start = None
        pieces = self.sink.layout.file_pieces(self.file_index)
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
            log.debug("%s: fetched %s from the mirror", self.sink, self.url)

    def _fetch_run(self, run: range) -> bool:
        """Fetch pieces ``run``; False when the mirror sent the whole file instead."""
        layout = self.sink.layout
        pieces = layout.file_pieces(self.file_index)
        size = layout.file_size(self.file_index)
        file_offset = layout.file_offset(self.file_index)
        first = layout.piece_offset(run.start) - file_offset
        last = layout.piece_offset(run.stop - 1) - file_offset + layout.piece_size(run.stop - 1)
        whole = first == 0 and last == size
        headers = {} if whole else {"Range": f"bytes={first}-{last - 1}"}
        response = self.mirror.get(self.url, headers)
        self.answered = True
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
        # a one-piece file's piece hash is its file hash: the stream need not hash it twice
        streaming_whole = position == 0 and self._hashed == 0 and len(pieces) > 1
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
                if self.yielded:  # left to another daemon: not one piece more
                    response.release()
                    return False
                size = layout.piece_size(piece)
                if piece not in self.sink.have:  # a whole-file stream skips what is had
                    whole = offset == 0 and size == len(data)
                    piece_data = data if whole else data[offset : offset + size]
                    self.sink.mirror_piece(self, piece, piece_data)
                offset += size
                piece += 1
            pending = data[offset:]
            if pending and piece >= stop:
                raise VerificationError(self.url, "longer than the index says")
        if piece < stop:
            raise MirrorError(self.url, f"body ended at piece {piece - pieces.start}")
        return ranged


# --- BEP 19 web seeds of a v1 torrent ---------------------------------------------------------


def web_seed_url(base: str, path: tuple[str, ...], multi_file: bool) -> str:
    """The URL of one file of a torrent on a BEP 19 web seed.

    *path* is the file's path as the metainfo gives it, the torrent's name first. A
    multi-file torrent's files are ``<base>/<name>/<path...>`` (a slash is added to a
    base without one); a single-file torrent's base is the file itself unless it ends
    with a slash, then ``<base><name>``.
    """
    if not multi_file:
        return base + quote(path[-1]) if base.endswith("/") else base
    if not base.endswith("/"):
        base += "/"
    return base + "/".join(quote(part) for part in path)


class WebSeed:
    """One ``url-list`` URL of a v1 torrent, as a peer of its swarm (see module doc).

    It asks the picker for up to ``pieces_per_round`` pieces' worth of blocks at a time
    (whole pieces, as libtorrent's web peer does), fetches them in order, and stops after
    ``max_bad_pieces`` pieces that failed verification: a web seed serving other bytes
    is dropped, as a peer would be banned.
    """

    pieces_per_round = 4
    max_bad_pieces = 3
    idle_wait = 1.0

    def __init__(
        self,
        swarm: TorrentSwarm,
        base_url: str,
        mirror: Mirror,
        health: MirrorHealth | None = None,
    ) -> None:
        self.swarm = swarm
        self.base_url = base_url
        self.mirror = mirror
        self.health = health
        self.host = base_url.split("/", 3)[2] if "://" in base_url else base_url
        self.has = PieceSet.full(swarm.layout.num_pieces)
        self.seed = True
        self.bad_pieces = 0
        self.downloaded = 0
        self.greenlet: gevent.Greenlet | None = None

    def __repr__(self) -> str:
        return f"<web seed {self.base_url}>"

    def start(self) -> None:
        self.swarm.picker.add_seed()
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None
            self.swarm.picker.drop_peer(self)
            self.swarm.picker.remove_seed()

    def cancel(self, piece: int, begin: int) -> None:
        """Endgame: another peer sent this block first; nothing to take back over HTTP."""

    def _url(self, file_index: int) -> str:
        meta = self.swarm.meta
        return web_seed_url(self.base_url, meta.files[file_index].path, meta.multi_file)

    def _run(self) -> None:
        try:
            while not self.swarm.closed and self.bad_pieces < self.max_bad_pieces:
                if self.health is not None and not self.health.ready(self.host):
                    gevent.sleep(max(self.health.retry_in(self.host), 0.1))
                    continue
                blocks = self.swarm.pick(self, self.pieces_per_round * self._blocks_per_piece())
                if not blocks:
                    if self.swarm.have.complete:
                        return
                    gevent.sleep(self.idle_wait)
                    continue
                pieces = sorted({piece for piece, _, _ in blocks})
                try:
                    for piece in pieces:
                        self._fetch_piece(piece)
                except DebtorrentError as exc:
                    # any failure of a web seed (a 404 too: the file is not there) backs off
                    self.swarm.picker.drop_peer(self)
                    if self.health is not None:
                        self.health.failed(self.host, exc)
                    else:
                        log.warning("%s: %s", self, exc)
                        gevent.sleep(self.idle_wait)
                else:
                    if self.health is not None:
                        self.health.succeeded(self.host)
            if self.bad_pieces >= self.max_bad_pieces:
                log.warning(
                    "%s: %d pieces failed verification; not used any more", self, self.bad_pieces
                )
        finally:
            self.swarm.picker.drop_peer(self)

    def _blocks_per_piece(self) -> int:
        return -(-self.swarm.layout.piece_length // BLOCK_SIZE)

    def _fetch_piece(self, piece: int) -> None:
        """GET the piece's byte ranges of every file it spans, then hand its blocks over."""
        layout = self.swarm.layout
        data = bytearray()
        for segment in layout.piece_files(piece):
            data += self._get(self._url(segment.file_index), segment.offset, segment.length)
        if len(data) != layout.piece_size(piece):
            raise MirrorError(self.base_url, f"piece {piece}: {len(data)} bytes")
        self.downloaded += len(data)
        for begin in range(0, len(data), BLOCK_SIZE):
            if self.swarm.closed:
                return
            self.swarm.on_block(self, piece, begin, bytes(data[begin : begin + BLOCK_SIZE]))
        if piece not in self.swarm.have and not self.swarm.picker.piece_senders(piece):
            self.bad_pieces += 1  # the swarm dropped it: it failed verification

    def _get(self, url: str, offset: int, length: int) -> bytes:
        """Bytes ``offset .. offset+length`` of a file; a server ignoring Range sends the
        whole file (200), which is read up to the end of the range."""
        response = self.mirror.get(url, {"Range": f"bytes={offset}-{offset + length - 1}"})
        skip = offset if response.status == 200 else 0
        if response.status == 206 and response.start != offset:
            response.release()
            raise MirrorError(url, f"asked for byte {offset}, got {response.start}")
        out = bytearray()
        for chunk in response.chunks():
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            out += chunk
            if len(out) >= length:
                break  # closing the body's generator releases (and drops) the connection
        if len(out) < length:
            raise MirrorError(url, f"{len(out)} of {length} bytes at offset {offset}")
        return bytes(out[:length])
