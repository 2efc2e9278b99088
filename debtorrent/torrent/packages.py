"""The swarm of one ``Packages`` index: its files are the ``.deb`` files it lists.

Identity, files and pieces follow the design's layout 1 (see
:func:`~debtorrent.torrent.metainfo.swarm_info`): every peer derives them from the
index alone. A one-piece file is verified by the index SHA256; a larger file's piece
SHA256s come from a peer (``dt_hashes``) or are computed by whoever fetches the file
from the mirror, and the whole file is judged by the index SHA256 in the end: a hash
list that leads to a bad file bans its giver, and the file is fetched again.

Nothing is downloaded until apt asks (:meth:`PackageSwarm.request`). The mirror is the
HTTP seed: it joins at once when no connected peer has or is fetching the file, and
later when the swarm stalls. A daemon that starts fetching from the mirror says so
(``dt_fetching``); peers wanting the same file wait for its pieces, and two that start
together keep the earlier claim (:func:`~debtorrent.torrent.wire.fetch_winner`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
from gevent.event import AsyncResult, Event

from debtorrent.archive.indexes import LoadedIndex
from debtorrent.cache import Cache
from debtorrent.errors import (
    CacheError,
    DebtorrentError,
    DiskFullError,
    MirrorError,
    MirrorTimeoutError,
    ProtocolError,
    VerificationError,
)
from debtorrent.torrent import wire
from debtorrent.torrent.layout import LAYOUT1_PIECE_LENGTH, Layout
from debtorrent.torrent.metainfo import swarm_info_hash
from debtorrent.torrent.picker import DISABLED, HIGH, PieceSet
from debtorrent.torrent.storage import PackageStore
from debtorrent.torrent.swarm import FileProgress, Swarm, SwarmInfo
from debtorrent.torrent.webseed import MirrorFetch, mirror_url

if TYPE_CHECKING:
    from debtorrent.torrent.peer import PeerConnection
    from debtorrent.torrent.session import Session

__all__ = ["FileRequest", "PackageSwarm", "swarm_identity"]

log = logging.getLogger(__name__)

SMALL_FILE = LAYOUT1_PIECE_LENGTH  # files of one piece never wait for peers to connect
CLAIM_SETTLE = 0.05  # seconds a mirror fetch waits for same-moment claims from peers
SMALL_FILE_PATIENCE = 1.0  # seconds a small file may take from peers before the mirror races
HASH_ASK_INTERVAL = 1.0
MAX_ATTEMPTS = 2  # whole-file failures before apt is told


class FileRequest:
    """A file apt asked for, on its way through the swarm; apt is streamed from it.

    Readers get the file's bytes as its pieces are verified, in order from the start,
    but never the last byte before the whole file has matched the index SHA256
    (:meth:`readable`). A file that fails that check fails this request (readers are
    cut: what they got may be wrong); a retry is a new request.
    """

    def __init__(self, swarm: PackageSwarm, file_index: int, attempts: int = 0) -> None:
        self.swarm = swarm
        self.file_index = file_index
        root = swarm.loaded.release.root
        filename = swarm.index.filenames[file_index]
        self.mirror = swarm.loaded.mirror
        self.path = f"{root}/{filename}" if root else filename
        self.length = swarm.layout.file_size(file_index)
        # this attempt's own date, given to the file when it completes: apt can resume
        # a cut stream of it, never across attempts (see cache.AttemptDates)
        self.last_modified: float | None = swarm.cache.dates.issue(
            str(swarm.final_path(file_index))
        )
        self.event = Event()
        self.error: DebtorrentError | None = None
        self.final: Path | None = None
        self.started = time.monotonic()
        self.attempts = attempts
        self.mirror_joined = False  # the access log's source: "mirror" once it joined
        self.mirror_tries = 0  # fetches from the mirror started for this request
        self._pieces = swarm.layout.file_pieces(file_index)
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


def swarm_identity(loaded: LoadedIndex) -> tuple[bytes, Layout]:
    """The info hash and layout-1 piece layout of an index's swarm.

    Everything comes from the index and its Release alone (never the mirror), so every
    peer, whatever mirror it uses, derives the same swarm.
    """
    release = loaded.release
    info_hash = swarm_info_hash(
        release.origin or "unknown",
        release.swarm_suite or "unknown",
        loaded.component.replace("/", "-"),
        loaded.arch,
        bytes.fromhex(loaded.index.sha256),
    )
    return info_hash, Layout.file_aligned(loaded.index.sizes, LAYOUT1_PIECE_LENGTH)


class _Verifiable:
    """The pieces we could verify if we had them (the picker's ``only``)."""

    def __init__(self, swarm: PackageSwarm) -> None:
        self.swarm = swarm

    def __contains__(self, piece: object) -> bool:
        if not isinstance(piece, int):
            return False
        return self.swarm.piece_hash(piece) is not None


class PackageSwarm(Swarm):
    """A layout-1 swarm over one loaded ``Packages`` index."""

    def __init__(self, session: Session, loaded: LoadedIndex, cache: Cache) -> None:
        index = loaded.index
        info_hash, layout = swarm_identity(loaded)
        super().__init__(session, info_hash, loaded.name, layout)
        self.loaded = loaded
        self.index = index
        self.cache = cache
        self.base = cache.path(loaded.mirror, loaded.release.root or ".")
        self.store = PackageStore(layout, self.final_path)
        self.hashes: dict[int, list[bytes]] = {}  # file -> piece SHA256s (a prefix)
        self.hash_giver: dict[int, PeerConnection | None] = {}
        self._hash_asked: dict[tuple[int, PeerConnection], float] = {}
        self.requests: dict[int, FileRequest] = {}
        self.fetches: dict[int, MirrorFetch] = {}
        self.peer_fetching: dict[int, dict[PeerConnection, int]] = {}
        self.created = time.monotonic()
        self._verifiable = _Verifiable(self)
        self._hashing: dict[int, AsyncResult] = {}  # whole-file piece hashing in progress
        self.complete_files = self._scan_cache()

    # --- files ------------------------------------------------------------------------

    def final_path(self, file_index: int) -> Path:
        return self.base / self.index.filenames[file_index]

    def file_sha256(self, file_index: int) -> bytes:
        return bytes(self.index.digests[file_index * 32 : file_index * 32 + 32])

    def file_complete(self, file_index: int) -> bool:
        have = self.have
        return all(p in have for p in self.layout.file_pieces(file_index))

    def _scan_cache(self) -> int:
        """Mark the files already in the cache as had (they were verified before the
        rename that put them there), without stat-ing every file the index lists."""
        count = 0
        for dirpath, _dirs, files in os.walk(self.base / "pool"):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), self.base)
                file_index = self.index.positions.get(rel)
                if file_index is not None and self.store.has_file(file_index):
                    for piece in self.layout.file_pieces(file_index):
                        self.have.add(piece)
                    count += 1
        if count:
            log.info("%s: seeding %d files from the cache", self, count)
        return count

    def mark_complete(self, file_index: int) -> None:
        """Another swarm completed the same file at the same path: seed it here too."""
        if self.store.has_file(file_index):
            for piece in self.layout.file_pieces(file_index):
                self.add_piece(piece)

    def forget_file(self, file_index: int) -> None:
        """The cached copy was removed: its pieces are no longer ours to upload."""
        if file_index in self.requests or file_index in self.fetches:
            return
        self._drop(file_index)

    def _drop(self, file_index: int) -> None:
        if self.file_complete(file_index):
            self.complete_files = max(0, self.complete_files - 1)
        for piece in self.layout.file_pieces(file_index):
            self.have.discard(piece)
        self.hashes.pop(file_index, None)
        self.hash_giver.pop(file_index, None)

    def _lost(self, file_index: int, why: str) -> None:
        """A verified file changed behind the daemon's back (removed, truncated, made
        unreadable): its pieces are no longer had, so the next request fetches it again
        instead of waiting for pieces the picker believes it has (which never came)."""
        if self.store.partial(file_index) or not self.file_complete(file_index):
            return
        log.warning(
            "%s: cached %s %s; fetched again when asked",
            self,
            self.index.filenames[file_index],
            why,
        )
        # even while the fetch that completed it is still ending: a request made now
        # must not find the pieces had and wait for nothing
        self._drop(file_index)

    def _adopt(self, file_index: int) -> None:
        """A complete file appeared in the cache (``debtorrent import``): seed it.

        Not through :meth:`add_piece`, whose whole-file check would hash a large file on
        the hub: the file is trusted as the start-up scan trusts the cache.
        """
        for piece in self.layout.file_pieces(file_index):
            if piece in self.have:
                continue
            self.picker.piece_verified(piece)
            for peer in list(self.peers):
                peer.have(piece)
        self.complete_files += 1

    def rescan(self, present: dict[str, int]) -> tuple[int, int]:
        """Match what the daemon seeds with what the cache holds now.

        ``present`` maps paths under this swarm's archive root to file sizes (walked by
        the caller, off the hub). Complete files that are gone or have the wrong size
        are forgotten; files of the right size that appeared are seeded, trusted as the
        start-up scan trusts them (only verified files are ever renamed into the cache,
        and ``debtorrent import`` checks the SHA256 before it links or copies).
        Returns ``(added, lost)``.
        """
        added = lost = 0
        layout, positions = self.layout, self.index.positions
        for file_index in range(layout.num_files):
            if file_index % 4096 == 4095:
                gevent.sleep(0)  # 63,000 files: let apt be answered in between
            if file_index in self.requests or self.store.partial(file_index):
                continue
            name = self.index.filenames[file_index]
            complete = self.file_complete(file_index)
            there = present.get(name) == layout.file_size(file_index)
            if complete and not there:
                self._lost(file_index, "is gone or has the wrong size")
                lost += 1
            elif there and not complete and positions.get(name) == file_index:
                self._adopt(file_index)
                added += 1
        if added or lost:
            log.info("%s: rescan: %d files to seed added, %d lost", self, added, lost)
        return added, lost

    # --- what apt asks for -------------------------------------------------------------

    def request(self, file_index: int) -> FileRequest:
        """Enable a file at top priority; the returned request completes when verified."""
        pending = self.requests.get(file_index)
        if pending is not None:
            return pending
        request = FileRequest(self, file_index)
        if self.file_complete(file_index):
            if self.store.has_file(file_index):
                request.finish(self.final_path(file_index))
                return request
            self._lost(file_index, "is gone or has the wrong size")
        elif self.store.has_file(file_index) and not self.store.partial(file_index):
            self._adopt(file_index)  # imported since the start-up scan
            request.finish(self.final_path(file_index))
            return request
        if not self.cache.has_room(self.layout.file_size(file_index)):
            request.fail(DiskFullError(f"{self.index.filenames[file_index]}: cache disk full"))
            return request  # not remembered: the next request checks again
        self.requests[file_index] = request
        self.picker.set_file_priority(file_index, HIGH)
        self._ask_hashes(file_index)
        self.wake_peers()
        gevent.spawn(self._supervise, request)
        return request

    def _supervise(self, request: FileRequest) -> None:
        """Bring in the mirror when peers cannot, or stall, until the file is done."""
        settings = self.session.settings
        file_index = request.file_index
        size = self.layout.file_size(file_index)
        patience = settings.http_seed_delay
        if size <= SMALL_FILE:  # apt should not wait seconds for 60 KB
            patience = min(patience, SMALL_FILE_PATIENCE)
        if not self._peers_may_supply(file_index) and self._may_use_mirror(file_index):
            self._start_mirror(file_index)
        last_done, last_change = -1, time.monotonic()
        window_start, window_done = time.monotonic(), 0
        while not request.event.is_set() and not self.closed:
            gevent.sleep(0.25)
            if request.event.is_set() or self.requests.get(file_index) is not request:
                return  # done, failed or replaced while asleep: nothing left to start
            now = time.monotonic()
            done = self._bytes_done(file_index)
            if done != last_done:
                last_done, last_change = done, now
            if file_index in self.fetches:
                continue
            self._ask_hashes(file_index)  # a fetcher's list grows as its pieces arrive
            stalled = now - last_change >= patience
            slow = False
            if now - window_start >= max(settings.http_seed_delay, 1.0):
                rate = (done - window_done) / (now - window_start)
                slow = 0 < settings.http_seed_min_rate and rate < settings.http_seed_min_rate
                slow = slow and done < size
                window_start, window_done = now, done
            if not self._peers_may_supply(file_index) and self._may_use_mirror(file_index):
                self._start_mirror(file_index)
            elif stalled or slow:
                log.info(
                    "%s: %s %s; the mirror joins",
                    self,
                    self.index.filenames[file_index],
                    "stalled" if stalled else "too slow",
                )
                self._start_mirror(file_index, force=True)

    def _may_use_mirror(self, file_index: int) -> bool:
        """Whether a file no connected peer can supply may come from the mirror now.

        A fresh swarm whose peers may still connect (LSD or the DHT running, a tracker
        or static peers configured) holds a large file for ``--connect-grace``, so that
        a fleet starting together fetches it from the mirror once and shares it. A
        small file does not wait: the peers already connected are asked if they have
        it, else the mirror, at once; fetching it twice costs less than making apt wait.
        """
        if self.peers or not self.session.expects_peers():
            return True
        if self.layout.file_size(file_index) <= SMALL_FILE:
            return True
        return time.monotonic() - self.created >= self.session.settings.connect_grace

    def _peers_may_supply(self, file_index: int) -> bool:
        pieces = self.layout.file_pieces(file_index)
        if self.peer_fetching.get(file_index):
            return True
        return any(not peer.closed and any(p in peer.has for p in pieces) for peer in self.peers)

    def _bytes_done(self, file_index: int) -> int:
        pieces = self.layout.file_pieces(file_index)
        return sum(self.layout.piece_size(p) for p in pieces if p in self.have)

    # --- the mirror as HTTP seed ----------------------------------------------------------

    def _start_mirror(self, file_index: int, force: bool = False) -> None:
        if file_index in self.fetches or self.file_complete(file_index):
            return
        if not force and self.peer_fetching.get(file_index):
            return
        mirror, health = self.loaded.mirror, self.session.mirror_health
        request = self.requests.get(file_index)
        first_try = request is not None and not request.mirror_tries
        if request is not None:
            request.mirror_tries += 1
        # a failing mirror backs off: the supervisor's retries wait, while the first try
        # for an apt request goes (apt's own retries are few and spaced; a mirror that
        # is back is used at once)
        if not first_try and not health.ready(mirror):
            if not self._peers_may_supply(file_index):
                wait = health.retry_in(mirror)
                self._fail(file_index, MirrorError(mirror, f"failing; next try in {wait:.0f} s"))
            return
        url = mirror_url(mirror, self.loaded.release.root, self.index.filenames[file_index])
        fetch = MirrorFetch(self, file_index, url, self.session.mirror, health, mirror)
        self.fetches[file_index] = fetch
        request = self.requests.get(file_index)
        if request is not None:
            request.mirror_joined = True
        if self.peers:  # peers may claim it at this very moment: settle before the mirror
            fetch.settle = CLAIM_SETTLE
        for peer in list(self.peers):
            peer.send_extended(
                wire.DT_FETCHING,
                wire.encode_dt_fetching(wire.FetchStarted(file_index, fetch.started_ms)),
            )
        fetch.start()

    def mirror_piece(self, fetch: MirrorFetch, piece: int, data: bytes) -> bool:
        """A piece read from the mirror: stored, hashed into our list, announced.

        Returns whether it was stored (False: we had it already).
        """
        file_index = fetch.file_index
        if piece in self.have:
            return False
        self.store.write(piece, 0, data)
        self.session.count("mirror", len(data))
        self.downloaded += len(data)
        fetch.stored += 1
        pieces = self.layout.file_pieces(file_index)
        if len(pieces) > 1:
            self._own_hash(file_index, piece, hashlib.sha256(data).digest())
            if piece in self.have:  # a peer's copy came in while we caught up
                return True
        elif hashlib.sha256(data).digest() != self.file_sha256(file_index):
            self.store.discard(file_index)
            raise VerificationError(fetch.url, "SHA256 does not match the index")
        self.add_piece(piece)
        return True

    def _own_hash(self, file_index: int, piece: int, digest: bytes) -> None:
        """Record a mirror piece's SHA256 in the file's list; the mirror is the origin,
        so where a peer's list disagrees, ours replaces it from there on."""
        pieces = self.layout.file_pieces(file_index)
        position = piece - pieces.start
        done = len(self.hashes.get(file_index, ()))
        if done < position:  # pieces before came from peers: hash what we hold, off the hub
            try:
                caught_up = self.store.piece_sha256s(range(pieces.start + done, piece))
            except DebtorrentError as exc:
                log.warning("%s: cannot hash held pieces: %s", self, exc)
                return
            known = self.hashes.setdefault(file_index, [])
            if len(known) == done:
                known.extend(caught_up)
        known = self.hashes.setdefault(file_index, [])
        if len(known) < position:
            return  # changed under us while hashing: the whole-file check still judges
        if len(known) > position and known[position] == digest:
            return
        del known[position:]
        known.append(digest)
        self.hash_giver[file_index] = None

    def mirror_done(self, fetch: MirrorFetch, error: DebtorrentError | None) -> None:
        """The mirror fetch ended (complete, aborted for another fetcher, or failed)."""
        file_index = fetch.file_index
        if self.fetches.get(file_index) is fetch:
            del self.fetches[file_index]
        done_msg = wire.FetchFinished if error is None else wire.FetchAborted
        for peer in list(self.peers):
            peer.send_extended(wire.DT_FETCHING, wire.encode_dt_fetching(done_msg(file_index)))
        request = self.requests.get(file_index)
        if error is not None and request is None and not self.file_complete(file_index):
            self._reset_file(file_index)  # nobody waits for it: leave no partial file
        elif error is not None and request is not None and not fetch.yielded:
            if not self._peers_may_supply(file_index):
                self._fail(file_index, error)

    # --- verification --------------------------------------------------------------------

    def piece_hash(self, piece: int) -> bytes | None:
        file_index = self.layout.piece_file(piece)
        pieces = self.layout.file_pieces(file_index)
        if len(pieces) == 1:
            return self.file_sha256(file_index)
        known = self.hashes.get(file_index)
        position = piece - pieces.start
        return known[position] if known is not None and position < len(known) else None

    def verifiable(self) -> _Verifiable:
        return self._verifiable

    def verify_piece(self, piece: int, data: bytes) -> bool:
        expected = self.piece_hash(piece)
        return expected is not None and hashlib.sha256(data).digest() == expected

    def write_block(self, piece: int, begin: int, data: bytes) -> None:
        self.store.write(piece, begin, data)

    def read(self, piece: int, begin: int, length: int) -> bytes:
        try:
            return self.store.read(piece, begin, length)
        except CacheError:
            self._lost(self.layout.piece_file(piece), "cannot be read")
            raise

    def check_piece(self, piece: int, source: PeerConnection | None) -> bool:
        ok = super().check_piece(piece, source)
        if not ok:
            file_index = self.layout.piece_file(piece)
            giver = self.hash_giver.get(file_index)
            if len(self.layout.file_pieces(file_index)) > 1 and giver is not None:
                self._distrust(file_index, giver, "piece failed against its hash list")
        return ok

    def piece_verified(self, piece: int) -> None:
        file_index = self.layout.piece_file(piece)
        if self.file_complete(file_index):
            self._file_done(file_index)
        request = self.requests.get(file_index)
        if request is not None:
            request.notify()

    def _file_done(self, file_index: int) -> None:
        pieces = self.layout.file_pieces(file_index)
        if len(pieces) > 1:
            fetch = self.fetches.get(file_index)
            digest = fetch.whole_digest() if fetch is not None else None
            if digest is None:
                try:
                    digest = self.store.file_sha256(file_index)  # yields: off the hub
                except DebtorrentError as exc:
                    self._reset_file(file_index)
                    self._fail(file_index, exc)
                    return
                if not self.file_complete(file_index) or not self.store.partial(file_index):
                    return  # reset or completed elsewhere while it was being hashed
            if digest != self.file_sha256(file_index):
                self._whole_file_failed(file_index)
                return
        try:
            path = (
                self.store.commit(file_index, self._date_of(file_index))
                if self.store.partial(file_index)
                else None
            )
        except DebtorrentError as exc:
            self._reset_file(file_index)
            self._fail(file_index, exc)
            return
        path = path or self.final_path(file_index)
        self.picker.set_file_priority(file_index, DISABLED)
        self.complete_files += 1
        log.info("%s: %s complete", self, self.index.filenames[file_index])
        request = self.requests.pop(file_index, None)
        if request is not None:
            request.finish(path)
        self.session.file_completed(self, file_index)

    def _date_of(self, file_index: int) -> float:
        """The date apt was given while the file streamed (its request's), so a resume
        of that stream matches the cached file; a fresh one if nobody asked."""
        request = self.requests.get(file_index)
        if request is not None and request.last_modified is not None:
            return request.last_modified
        return self.cache.dates.issue(str(self.final_path(file_index)))

    def _whole_file_failed(self, file_index: int) -> None:
        giver = self.hash_giver.get(file_index)
        name = self.index.filenames[file_index]
        log.warning("%s: %s failed its index SHA256", self, name)
        if giver is not None:
            self._distrust(file_index, giver, "its hash list gave a file failing the index SHA256")
        self._retry_file(file_index, "SHA256 does not match the index")

    def _retry_file(self, file_index: int, why: str) -> None:
        """Drop a bad copy of a file, tell the peers it failed here (they may hold our
        pieces or our hash list: void now, and no reason to ban us), then try again."""
        self._tell_failed(file_index)
        self._reset_file(file_index)
        name = self.index.filenames[file_index]
        request = self.requests.pop(file_index, None)
        if request is None:
            return
        # readers got bytes of a bad file: cut them; apt's retry joins the new attempt
        request.fail(VerificationError(name, why))
        if request.attempts + 1 >= MAX_ATTEMPTS:
            self.picker.set_file_priority(file_index, DISABLED)
            return
        retry = FileRequest(self, file_index, request.attempts + 1)
        self.requests[file_index] = retry
        self.picker.set_file_priority(file_index, HIGH)
        gevent.spawn(self._supervise, retry)
        self._start_mirror(file_index, force=True)

    def _tell_failed(self, file_index: int) -> None:
        message = wire.encode_dt_fetching(wire.FetchAborted(file_index, failed=True))
        for peer in list(self.peers):
            peer.send_extended(wire.DT_FETCHING, message)

    def _source_failed(self, peer: PeerConnection, file_index: int) -> None:
        """*peer* says its copy of a file failed at its source: what it announced of the
        file and the hash list it gave are void. Dropped, not punished: an honest relay
        of a bad mirror is no liar (one whose list fails here unannounced still is)."""
        pieces = self.layout.file_pieces(file_index)
        if peer.seed:
            self.drop_availability(peer)
            peer.has = PieceSet.full(self.layout.num_pieces)
            for piece in pieces:
                peer.has.discard(piece)
            self.on_bitfield(peer)
        else:
            for piece in pieces:
                if peer.has.discard(piece):
                    self.picker.dec_availability(piece)
        if self.hash_giver.get(file_index) is not peer:
            return
        log.info(
            "%s: %s says %s failed at its source", self, peer, self.index.filenames[file_index]
        )
        if any(p in self.have for p in pieces) and not self.file_complete(file_index):
            self._retry_file(file_index, "a peer's copy failed at its source")
        else:
            self.hashes.pop(file_index, None)
            self.hash_giver.pop(file_index, None)

    def _distrust(self, file_index: int, giver: PeerConnection, why: str) -> None:
        self.session.ban(giver.address[0], why)
        giver.close("banned: " + why)
        self.hashes.pop(file_index, None)
        self.hash_giver.pop(file_index, None)

    def _reset_file(self, file_index: int) -> None:
        self.store.discard(file_index)
        for piece in self.layout.file_pieces(file_index):
            self.have.discard(piece)
            self._pending.pop(piece, None)
        self.hashes.pop(file_index, None)
        self.hash_giver.pop(file_index, None)

    def _fail(self, file_index: int, error: DebtorrentError) -> None:
        """Give up on a file for now: its partial data goes, and with it the pieces we
        had of it, so a later request starts clean (from peers or a fresh mirror fetch)."""
        request = self.requests.pop(file_index, None)
        self.picker.set_file_priority(file_index, DISABLED)
        self._reset_file(file_index)
        if request is not None:
            request.fail(error)

    # --- piece hashes over dt_hashes ----------------------------------------------------

    def _ask_hashes(self, file_index: int, only: PeerConnection | None = None) -> None:
        pieces = self.layout.file_pieces(file_index)
        if len(pieces) <= 1 or file_index not in self.requests:
            return
        known = len(self.hashes.get(file_index, ()))
        now = time.monotonic()
        for peer in [only] if only is not None else list(self.peers):
            if peer.closed or wire.DT_HASHES not in peer.extensions:
                continue
            had = sum(1 for p in pieces if p in peer.has)
            if had <= known and not (peer.seed and known < len(pieces)):
                continue
            if now - self._hash_asked.get((file_index, peer), 0.0) < HASH_ASK_INTERVAL:
                continue
            self._hash_asked[(file_index, peer)] = now
            peer.send_extended(
                wire.DT_HASHES, wire.encode_dt_hashes(wire.HashesRequest(file_index))
            )

    def _hashes_for(self, file_index: int) -> list[bytes]:
        """Our piece SHA256s of a file: a complete one is hashed from the cache on
        demand, off the hub, once however many peers ask at the same time."""
        pieces = self.layout.file_pieces(file_index)
        known = self.hashes.get(file_index, [])
        if len(known) >= len(pieces) or not self.file_complete(file_index):
            return known
        pending = self._hashing.get(file_index)
        if pending is None:
            pending = self._hashing[file_index] = AsyncResult()
            try:
                pending.set(self.store.piece_sha256s(pieces))
            except DebtorrentError as exc:
                log.warning("%s: cannot hash %s: %s", self, self.index.filenames[file_index], exc)
                pending.set([])
            finally:
                del self._hashing[file_index]
            hashes = pending.get()
            if hashes and self.file_complete(file_index):
                self.hashes[file_index] = hashes
                self.hash_giver[file_index] = None
        return pending.get() or known

    def on_extended(self, peer: PeerConnection, name: str, payload: object) -> None:
        num_files = len(self.index)
        if name == wire.DT_HASHES:
            self._on_hashes(peer, wire.decode_dt_hashes(payload, num_files=num_files))
        elif name == wire.DT_FETCHING:
            self._on_fetching(peer, wire.decode_dt_fetching(payload, num_files=num_files))

    def _on_hashes(self, peer: PeerConnection, msg: object) -> None:
        if isinstance(msg, wire.HashesRequest):
            known = self._hashes_for(msg.file_index)
            reply = (
                wire.HashesReply(msg.file_index, b"".join(known))
                if known and len(self.layout.file_pieces(msg.file_index)) > 1
                else wire.HashesReject(msg.file_index)
            )
            peer.send_extended(wire.DT_HASHES, wire.encode_dt_hashes(reply))
        elif isinstance(msg, wire.HashesReply):
            file_index = msg.file_index
            pieces = self.layout.file_pieces(file_index)
            offered = msg.piece_hashes()
            if len(offered) > len(pieces):
                raise ProtocolError(f"dt_hashes: {len(offered)} hashes for {len(pieces)} pieces")
            known = self.hashes.get(file_index, [])
            if len(offered) <= len(known) or offered[: len(known)] != known:
                return  # nothing new, or it disagrees with the list we verify against
            self.hashes[file_index] = offered
            self.hash_giver[file_index] = peer
            self.wake_peers()

    def _on_fetching(self, peer: PeerConnection, msg: object) -> None:
        if isinstance(msg, wire.FetchStarted):
            self.peer_fetching.setdefault(msg.file_index, {})[peer] = msg.started_ms
            ours = self.fetches.get(msg.file_index)
            if ours is not None:
                winner = wire.fetch_winner(
                    [
                        wire.FetchClaim(ours.started_ms, self.peer_id),
                        wire.FetchClaim(msg.started_ms, peer.peer_id),
                    ]
                )
                if winner.peer_id != self.peer_id:
                    log.info(
                        "%s: %s fetches file %d first; waiting for it", self, peer, msg.file_index
                    )
                    ours.yield_to(peer)
            self._ask_hashes(msg.file_index, peer)
        else:
            fetching = self.peer_fetching.get(msg.file_index, {})
            fetching.pop(peer, None)
            if not fetching:
                self.peer_fetching.pop(msg.file_index, None)
            if isinstance(msg, wire.FetchAborted) and msg.failed:
                self._source_failed(peer, msg.file_index)
            self._ask_hashes(msg.file_index, peer)

    # --- peers ------------------------------------------------------------------------------

    def on_extension_handshake(self, peer: PeerConnection) -> None:
        for file_index, fetch in list(self.fetches.items()):
            peer.send_extended(
                wire.DT_FETCHING,
                wire.encode_dt_fetching(wire.FetchStarted(file_index, fetch.started_ms)),
            )
        for file_index in list(self.requests):
            self._ask_hashes(file_index, peer)

    def on_have(self, peer: PeerConnection, piece: int) -> None:
        super().on_have(peer, piece)
        file_index = self.layout.piece_file(piece)
        if file_index in self.requests:
            self._ask_hashes(file_index, peer)

    def on_bitfield(self, peer: PeerConnection) -> None:
        super().on_bitfield(peer)
        for file_index in list(self.requests):
            self._ask_hashes(file_index, peer)

    def peer_gone(self, peer: PeerConnection) -> None:
        for file_index in list(self.peer_fetching):
            fetching = self.peer_fetching[file_index]
            fetching.pop(peer, None)
            if not fetching:
                del self.peer_fetching[file_index]
        for key in [k for k in self._hash_asked if k[1] is peer]:
            del self._hash_asked[key]

    # --- status ------------------------------------------------------------------------------

    def info(self) -> SwarmInfo:
        return SwarmInfo(
            mirror=self.loaded.mirror,
            index_date=self.loaded.release.date,
            files_enabled=len(self.requests),
            files_complete=self.complete_files,
        )

    def downloads(self) -> list[FileProgress]:
        now = time.monotonic()
        out = []
        for file_index, request in list(self.requests.items()):
            if file_index in self.fetches:
                source = "mirror"
            elif file_index in self.peer_fetching:
                source = "peers (fetching from the mirror)"
            else:
                source = "peers"
            out.append(
                FileProgress(
                    mirror=self.loaded.mirror,
                    path=self.index.filenames[file_index],
                    size=self.layout.file_size(file_index),
                    done=self._bytes_done(file_index),
                    source=source,
                    waiting=round(now - request.started, 1),
                )
            )
        return out

    def close(self) -> None:
        for fetch in list(self.fetches.values()):
            fetch.stop()
        for file_index in list(self.requests):
            self._fail(file_index, VerificationError("swarm", "swarm closed"))
        super().close()
        self.store.close()
