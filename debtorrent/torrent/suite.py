"""The swarm of one suite and component (layout 2): every user of the suite meets here.

One swarm per (Origin, Codename, component), whatever the architecture, the index
version or the mirror (:func:`suite_identity`); its files are those of every loaded
index of the suite (:class:`~debtorrent.torrent.catalog.FileCatalog`), deduplicated by
SHA256, so two machines on different index versions or architectures share every file
they both list. On the wire files are named by SHA256 (docs/layout2.md); the peer
connection translates (:mod:`debtorrent.torrent.fileplane`), so this class works in the
internal piece numbers the picker and the store use.

Verification is layout 1's: a one-piece file against its index SHA256; a larger file
piece by piece against a hash list (:class:`~debtorrent.torrent.hashlists.HashLists`)
and whole against the index SHA256 in the end, which alone decides.

Nothing is downloaded until apt asks (:meth:`SuiteSwarm.request`). A supervisor per
request brings the mirror in when no connected peer has or is fetching the file (a
large file waits ``--connect-grace`` in a fresh swarm whose peers may still come), when
a small file takes more than a second, or when the transfer stalls or is too slow. The
mirror is a peer of the picker (:class:`~debtorrent.torrent.webseed.MirrorFetch`): it
claims the blocks it will bring, so peers are not asked for them, and when it brings a
piece a peer was also asked for, that peer gets a cancel. A daemon fetching from the
mirror says so (``dt_fetching``, :mod:`~debtorrent.torrent.claims`); peers wait for its
pieces, which it announces as they arrive.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gevent

from debtorrent import offload
from debtorrent.archive.indexes import LoadedIndex
from debtorrent.cache import TMP_PREFIX, Cache
from debtorrent.errors import (
    CacheError,
    DebtorrentError,
    DiskFullError,
    MirrorError,
    VerificationError,
)
from debtorrent.torrent import filewire as fw
from debtorrent.torrent.catalog import PAUSE_EVERY, FileCatalog, Place
from debtorrent.torrent.claims import Claim, Claims
from debtorrent.torrent.fileplane import FilePlane
from debtorrent.torrent.hashlists import HashLists
from debtorrent.torrent.layout import LAYOUT1_PIECE_LENGTH
from debtorrent.torrent.metainfo import suite_info_hash, suite_name
from debtorrent.torrent.picker import DISABLED, HIGH
from debtorrent.torrent.requests import FileRequest
from debtorrent.torrent.storage import PackageStore
from debtorrent.torrent.swarm import FileProgress, Swarm, SwarmInfo
from debtorrent.torrent.webseed import MirrorFetch, mirror_url

if TYPE_CHECKING:
    from debtorrent.torrent.peer import PeerConnection
    from debtorrent.torrent.session import Session

__all__ = ["SuiteIdentity", "SuiteSwarm", "suite_identity"]

log = logging.getLogger(__name__)

SMALL_FILE = LAYOUT1_PIECE_LENGTH  # files of one piece never wait for peers to connect
SMALL_FILE_PATIENCE = 1.0  # seconds a small file may take from peers before the mirror races
MAX_ATTEMPTS = 2  # whole-file failures before apt is told
YIELD = 0.001  # seconds a long loop on the hub sleeps between two slices
HASH_WAIT = 2.0  # seconds peers offering a larger file have to give its hash list


@dataclass(frozen=True)
class SuiteIdentity:
    """A suite swarm's name and info hash (before any swarm key)."""

    name: str
    info_hash: bytes


def suite_identity(loaded: LoadedIndex) -> SuiteIdentity:
    """``<Origin>_<Codename>_<component>`` and its info hash: no architecture, index
    version or mirror, so every user of a suite meets in one swarm for good.

    Releases without those fields (flat repositories, some third-party archives): the
    Origin, else the Label, else ``unnamed``; the Codename, else the Suite, else
    ``flat-`` and 12 hex digits of SHA1 of the archive path below the host; the
    component, or ``flat`` (docs/layout2.md).
    """
    release = loaded.release
    origin = release.origin or release.label or "unnamed"
    suite = release.swarm_suite
    if not suite:
        suite = "flat-" + hashlib.sha1(release.dist.encode("utf-8")).hexdigest()[:12]
    name = suite_name(origin, suite, loaded.component or "flat")
    return SuiteIdentity(name, suite_info_hash(name))


class _Verifiable:
    """The pieces we could verify if we had them (the picker's ``only``)."""

    __slots__ = ("swarm",)

    def __init__(self, swarm: SuiteSwarm) -> None:
        self.swarm = swarm

    def __contains__(self, piece: object) -> bool:
        return isinstance(piece, int) and self.swarm.piece_hash(piece) is not None


def _index_key(loaded: LoadedIndex) -> tuple[str, str, str]:
    return (loaded.mirror, loaded.path, loaded.index.sha256)


class SuiteSwarm(Swarm):
    """A layout-2 swarm over every loaded index of one suite and component."""

    def __init__(self, session: Session, identity: SuiteIdentity, cache: Cache) -> None:
        self.catalog = FileCatalog()
        super().__init__(session, identity.info_hash, identity.name, self.catalog.layout)
        self.identity = identity
        self.cache = cache
        self.store = PackageStore(self.layout, self.final_path)
        self.hashlists = HashLists(self._hash_file)
        self.claims = Claims()
        self.indexes: dict[tuple[str, str, str], LoadedIndex] = {}
        self.requests: dict[int, FileRequest] = {}
        self.fetches: dict[int, MirrorFetch] = {}
        self.created = time.monotonic()
        self.complete_files = 0
        self._verifiable = _Verifiable(self)
        self._refusers: dict[int, set[str]] = {}  # file -> addresses that would not send it

    @property
    def wire_pieces(self) -> int:
        return 0  # no BEP 3 piece message is valid here: files go by SHA256

    def new_plane(self, peer: PeerConnection) -> FilePlane:
        return FilePlane(peer, self)

    # --- the suite's files: indexes coming and going -----------------------------------

    def add_index(self, loaded: LoadedIndex) -> list[int]:
        """Take an index's files; returns the files new to the swarm.

        Files already in the cache are seeded at once (they were renamed there only
        once verified); connected peers learn of them and of nothing else.
        """
        key = _index_key(loaded)
        if key in self.indexes:
            return []
        self.indexes[key] = loaded
        index = loaded.index
        entries = (
            (name, index.sizes[i], bytes(index.digests[i * 32 : i * 32 + 32]))
            for i, name in enumerate(index.filenames)
        )
        new = self.catalog.add_index(
            key, loaded.mirror, loaded.release.root, entries, pause=self._pause
        )
        self._grow()
        present = offload.run(sizes_under, str(self._base(loaded.mirror, loaded.release.root)))
        found = []
        for count, file in enumerate(new, 1):
            place = self.catalog.place(file)
            if present.get(place.filename) == self.layout.file_size(file):
                for piece in self.layout.file_pieces(file):
                    self.have.add(piece)
                    self.picker.piece_verified(piece)
                found.append(file)
            if count % PAUSE_EVERY == 0:
                gevent.sleep(YIELD)
        self.complete_files += len(found)
        for peer in list(self.peers):
            peer.plane.files_added(new)
            if found:
                peer.plane.announce_files(found)
        if found:
            log.info("%s: seeding %d files from the cache", self, len(found))
        log.info(
            "%s: %s/%s joined (%d files, %d new)",
            self,
            loaded.mirror,
            loaded.path,
            len(index),
            len(new),
        )
        return new

    def remove_index(self, loaded: LoadedIndex) -> None:
        """An index replaced long enough ago: files no loaded index lists are no longer
        offered (their cached copies stay until expiry takes them)."""
        key = _index_key(loaded)
        if self.indexes.pop(key, None) is None:
            return
        gone = [
            f
            for f in self.catalog.remove_index(key)
            if f not in self.requests and f not in self.fetches
        ]
        unoffered = [f for f in gone if self.file_complete(f)]
        for file in gone:
            self._drop(file)
        for peer in list(self.peers):
            peer.plane.retract_files(unoffered)
        log.info("%s: %s/%s left; %d files no longer listed", self, *key[:2], len(gone))

    def _pause(self) -> None:
        """Between two slices of a large index: the layout grew, let others run (a real
        sleep, so that the hub polls for I/O: apt's requests wait otherwise)."""
        self._grow()
        gevent.sleep(YIELD)

    def _grow(self) -> None:
        """The layout grew: make room for its new pieces everywhere pieces are counted."""
        size = self.layout.num_pieces
        if size == self.have.size:
            return
        self.have.grow(size)
        self.picker.grow()
        for peer in list(self.peers):
            peer.has.grow(size)

    def _base(self, mirror: str, root: str) -> Path:
        return self.cache.path(mirror, root or ".")

    def final_path(self, file: int) -> Path:
        place = self.catalog.place(file)
        return self._base(place.mirror, place.root) / place.filename

    def file_sha256(self, file: int) -> bytes:
        return self.catalog.sha256(file)

    def file_complete(self, file: int) -> bool:
        have = self.have
        return all(p in have for p in self.layout.file_pieces(file))

    def offered_files(self) -> list[int]:
        """Files we have whole and offer to peers (``dt_files``)."""
        return [f for f in self.catalog if self.catalog.listed(f) and self.file_complete(f)]

    # --- the cache changing underneath ----------------------------------------------------

    def mark_complete(self, file: int) -> None:
        """Another swarm completed the same file at the same place: seed it here too."""
        if self.store.has_file(file) and not self.file_complete(file):
            self._adopt(file)

    def forget_file(self, file: int) -> None:
        """The cached copy was removed: its pieces are no longer ours to upload."""
        if file in self.requests or file in self.fetches:
            return
        self._drop(file)

    def _drop(self, file: int) -> None:
        if self.file_complete(file):
            self.complete_files = max(0, self.complete_files - 1)
            for peer in list(self.peers):
                peer.plane.retract_files([file])
        for piece in self.layout.file_pieces(file):
            self.have.discard(piece)
        self.hashlists.drop(file)

    def _lost(self, file: int, why: str) -> None:
        """A verified file changed behind the daemon's back (removed, truncated, made
        unreadable): its pieces are no longer had, so the next request fetches it again
        instead of waiting for pieces the picker believes it has."""
        if self.store.partial(file) or not self.file_complete(file):
            return
        log.warning("%s: cached %s %s; fetched again when asked", self, self._name(file), why)
        self._drop(file)

    def _adopt(self, file: int) -> None:
        """A complete file appeared in the cache (``debtorrent import``): seed it,
        trusted as the start-up scan trusts the cache."""
        for piece in self.layout.file_pieces(file):
            if piece not in self.have:
                self.have.add(piece)
                self.picker.piece_verified(piece)
        self.complete_files += 1
        for peer in list(self.peers):
            peer.plane.announce_files([file])

    def rescan(self, present: dict[Path, dict[str, int]]) -> tuple[int, int]:
        """Match what the daemon seeds with what the cache holds now.

        ``present`` maps archive bases to ``{path below the base: size}`` (walked off the
        hub by the caller). Returns ``(added, lost)``.
        """
        added = lost = 0
        for file in self.catalog:
            if file % 4096 == 4095:
                gevent.sleep(YIELD)  # 63,000 files: let apt be answered in between
            if not self.catalog.listed(file) or file in self.requests:
                continue
            if self.store.partial(file):
                continue
            place = self.catalog.place(file)
            sizes = present.get(self._base(place.mirror, place.root), {})
            complete = self.file_complete(file)
            there = sizes.get(place.filename) == self.layout.file_size(file)
            if complete and not there:
                self._lost(file, "is gone or has the wrong size")
                lost += 1
            elif there and not complete:
                self._adopt(file)
                added += 1
        if added or lost:
            log.info("%s: rescan: %d files to seed added, %d lost", self, added, lost)
        return added, lost

    def bases(self) -> set[Path]:
        """The archive directories in the cache this swarm's files live under."""
        return {self._base(loaded.mirror, loaded.release.root) for loaded in self.indexes.values()}

    # --- what apt asks for -------------------------------------------------------------

    def find(self, sha256: bytes) -> int | None:
        return self.catalog.find(sha256)

    def request(self, file: int, place: Place | None = None) -> FileRequest:
        """Enable a file at top priority; the request completes when it is verified.

        *place* is where apt asked for it (its mirror is the one fetched from).
        """
        pending = self.requests.get(file)
        if pending is not None:
            return pending
        request = FileRequest(self, file, place or self.catalog.place(file))
        if self.file_complete(file):
            if self.store.has_file(file):
                request.finish(self.final_path(file))
                return request
            self._lost(file, "is gone or has the wrong size")
        elif self.store.has_file(file) and not self.store.partial(file):
            self._adopt(file)  # imported since the start-up scan
            request.finish(self.final_path(file))
            return request
        if not self.cache.has_room(self.layout.file_size(file)):
            request.fail(DiskFullError(f"{self._name(file)}: cache disk full"))
            return request  # not remembered: the next request checks again
        self._enable(request)
        return request

    def _enable(self, request: FileRequest) -> None:
        file = request.file
        self.requests[file] = request
        self.picker.set_file_priority(file, HIGH)
        self._ask_hashes(file)
        self.wake_peers()
        gevent.spawn(self._supervise, request)

    def _supervise(self, request: FileRequest) -> None:
        """Bring in the mirror when peers cannot, or stall, until the file is done."""
        settings = self.session.settings
        file = request.file
        size = self.layout.file_size(file)
        patience = settings.http_seed_delay
        if size <= SMALL_FILE:  # apt should not wait seconds for 60 KB
            patience = min(patience, SMALL_FILE_PATIENCE)
        if not self._peers_may_supply(file) and self._may_use_mirror(file):
            self._start_mirror(file)
        last_done, last_change = -1, time.monotonic()
        window_start, window_done = time.monotonic(), 0
        while not request.event.is_set() and not self.closed:
            gevent.sleep(0.25)
            if request.event.is_set() or self.requests.get(file) is not request:
                return  # done, failed or replaced while asleep: nothing left to start
            now = time.monotonic()
            done = self._bytes_done(file)
            if done != last_done:
                last_done, last_change = done, now
            if file in self.fetches:
                continue
            self._ask_hashes(file)  # a fetcher's list grows as its pieces arrive
            # a small file races the mirror after a second, unless a peer is fetching it
            # from the mirror right now: then its copy is on the way, and a second fetch
            # would only make the mirror serve it twice (a fleet starting together)
            wait = settings.http_seed_delay if self.claims.fetching(file) else patience
            stalled = now - last_change >= wait
            slow = False
            if now - window_start >= max(settings.http_seed_delay, 1.0):
                rate = (done - window_done) / (now - window_start)
                slow = 0 < settings.http_seed_min_rate and rate < settings.http_seed_min_rate
                slow = slow and done < size
                window_start, window_done = now, done
            if not self._peers_may_supply(file) and self._may_use_mirror(file):
                self._start_mirror(file)
            elif stalled or slow:
                why = "stalled" if stalled else "too slow"
                log.info("%s: %s %s; the mirror joins", self, self._name(file), why)
                self._start_mirror(file, force=True)

    def _may_use_mirror(self, file: int) -> bool:
        """Whether a file no connected peer can supply may come from the mirror now.

        A fresh swarm whose peers may still connect (LSD or the DHT running, a tracker
        or static peers configured) holds a large file for ``--connect-grace``, so that
        a fleet starting together fetches it from the mirror once and shares it; a small
        file does not wait: fetching it twice costs less than making apt wait.
        """
        if self.peers or not self.session.expects_peers():
            return True
        if self.layout.file_size(file) <= SMALL_FILE:
            return True
        return time.monotonic() - self.created >= self.session.settings.connect_grace

    def _peers_may_supply(self, file: int) -> bool:
        """Whether a connected peer fetches the file from the mirror, or offers pieces
        of it we could check: pieces of a larger file count only while a hash list is
        known or was asked for less than :data:`HASH_WAIT` seconds ago (a peer that
        offers a file but no list would hold apt until the stall timer)."""
        if self.claims.fetching(file):
            return True
        pieces = self.layout.file_pieces(file)
        request = self.requests.get(file)
        if (
            len(pieces) > 1
            and not self.hashlists.known(file)
            and request is not None
            and time.monotonic() - request.started >= HASH_WAIT
        ):
            return False
        refusers = self._refusers.get(file, ())
        return any(
            not peer.closed
            and peer.address[0] not in refusers
            and any(p in peer.has for p in pieces)
            for peer in self.peers
        )

    def refused(self, peer: PeerConnection, file: int) -> None:
        """*peer* offered a file whole and would not send it: it no longer counts as a
        source of that file (it may well connect again before it is banned), so the
        mirror is not held back waiting for it."""
        refusers = self._refusers.setdefault(file, set())
        if len(refusers) < 64:
            refusers.add(peer.address[0])

    def _bytes_done(self, file: int) -> int:
        pieces = self.layout.file_pieces(file)
        return sum(self.layout.piece_size(p) for p in pieces if p in self.have)

    def _name(self, file: int) -> str:
        return self.catalog.place(file).filename

    # --- the mirror, a peer of the picker -----------------------------------------------------

    def _start_mirror(self, file: int, force: bool = False) -> None:
        if file in self.fetches or self.file_complete(file):
            return
        if not force and self.claims.fetching(file):
            return
        request = self.requests.get(file)
        place = request.place if request is not None else self.catalog.place(file)
        mirror, health = place.mirror, self.session.mirror_health
        first_try = request is not None and not request.mirror_tries
        if request is not None:
            request.mirror_tries += 1
        # a failing mirror backs off: the supervisor's retries wait, while the first try
        # for an apt request goes (apt's own retries are few and spaced)
        if not first_try and not health.ready(mirror):
            if not self._peers_may_supply(file):
                wait = health.retry_in(mirror)
                self._fail(file, MirrorError(mirror, f"failing; next try in {wait:.0f} s"))
            return
        url = mirror_url(mirror, place.root, place.filename)
        fetch = MirrorFetch(self, file, url, self.session.mirror, health, mirror)
        self.fetches[file] = fetch
        if request is not None:
            request.mirror_joined = True
        if self.peers:  # let a claim a peer sent at this very moment cross ours first
            fetch.settle = self.claims.settle()
        # the mirror is a peer: it claims the blocks still free, so nobody else is asked
        self.picker.pick(fetch, fetch.has, 1 << 30, only=None)
        self._send_all(fw.FetchStarted(self.file_sha256(file), fetch.started_ms))
        fetch.start()

    def mirror_piece(self, fetch: MirrorFetch, piece: int, data: bytes) -> bool:
        """A piece read from the mirror: checked, stored, announced; returns whether it
        was new (False: a peer's copy was here first)."""
        file = fetch.file_index
        if piece in self.have:
            return False
        pieces = self.layout.file_pieces(file)
        digest = hashlib.sha256(data).digest()
        if len(pieces) == 1 and digest != self.file_sha256(file):
            self._pending.pop(piece, None)
            raise VerificationError(fetch.url, "SHA256 does not match the index")
        self.store.write(piece, 0, data)
        self.session.count("mirror", len(data))
        self.downloaded += len(data)
        fetch.stored += 1
        if len(pieces) > 1:
            self.hashlists.own(
                file, piece - pieces.start, digest, lambda n: self._hash_held(file, n)
            )
            if piece in self.have:  # a peer's copy came in while we caught up
                return True
        self.add_piece(piece)  # cancels what peers were also asked for of it
        return True

    def _hash_held(self, file: int, count: int) -> list[bytes]:
        start = self.layout.file_pieces(file).start
        return self.store.piece_sha256s(range(start, start + count))

    def mirror_done(self, fetch: MirrorFetch, error: DebtorrentError | None) -> None:
        """The mirror fetch ended (complete, left to another daemon, or failed)."""
        file = fetch.file_index
        self.picker.drop_peer(fetch)  # what it claimed and did not bring is free again
        if self.fetches.get(file) is not fetch:
            return  # stopped for a retry of its bad copy: the new attempt speaks now
        del self.fetches[file]
        sha = self.file_sha256(file)
        self._send_all(fw.FetchFinished(sha) if error is None else fw.FetchAborted(sha))
        request = self.requests.get(file)
        if error is not None and request is None and not self.file_complete(file):
            self._reset_file(file)  # nobody waits for it: leave no partial file
        elif error is not None and request is not None and not fetch.yielded:
            if not self._peers_may_supply(file):
                self._fail(file, error)
        if request is not None and not request.event.is_set():
            self.wake_peers()

    # --- verification --------------------------------------------------------------------

    def piece_hash(self, piece: int) -> bytes | None:
        file = self.layout.piece_file(piece)
        pieces = self.layout.file_pieces(file)
        if len(pieces) == 1:
            return self.file_sha256(file)
        return self.hashlists.piece(file, piece - pieces.start)

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
            file = self.layout.piece_file(piece)
            giver = self.hashlists.giver(file)
            if len(self.layout.file_pieces(file)) > 1 and giver is not None:
                self._distrust(file, giver, "piece failed against its hash list")
        return ok

    def piece_verified(self, piece: int) -> None:
        file = self.layout.piece_file(piece)
        if self.file_complete(file):
            self._file_done(file)
        request = self.requests.get(file)
        if request is not None:
            request.notify()

    def _file_done(self, file: int) -> None:
        pieces = self.layout.file_pieces(file)
        if len(pieces) > 1:
            fetch = self.fetches.get(file)
            digest = fetch.whole_digest() if fetch is not None else None
            if digest is None:
                try:
                    digest = self.store.file_sha256(file)  # yields: off the hub
                except DebtorrentError as exc:
                    self._reset_file(file)
                    self._fail(file, exc)
                    return
                if not self.file_complete(file) or not self.store.partial(file):
                    return  # reset or completed elsewhere while it was being hashed
            if digest != self.file_sha256(file):
                self._whole_file_failed(file)
                return
        try:
            path = (
                self.store.commit(file, self._date_of(file)) if self.store.partial(file) else None
            )
        except DebtorrentError as exc:
            self._reset_file(file)
            self._fail(file, exc)
            return
        path = path or self.final_path(file)
        self.picker.set_file_priority(file, DISABLED)
        self.complete_files += 1
        log.info("%s: %s complete", self, self._name(file))
        request = self.requests.pop(file, None)
        if request is not None:
            request.finish(path)
        self.session.file_completed(self, file)

    def _date_of(self, file: int) -> float:
        """The date apt was given while the file streamed (its request's), so a resume
        of that stream matches the cached file; a fresh one if nobody asked."""
        request = self.requests.get(file)
        if request is not None and request.last_modified is not None:
            return request.last_modified
        return self.cache.dates.issue(str(self.final_path(file)))

    def _whole_file_failed(self, file: int) -> None:
        giver = self.hashlists.giver(file)
        log.warning("%s: %s failed its index SHA256", self, self._name(file))
        if giver is not None:
            self._distrust(file, giver, "its hash list gave a file failing the index SHA256")
        self._retry_file(file, "SHA256 does not match the index")

    def _retry_file(self, file: int, why: str) -> None:
        """Drop a bad copy, tell the peers it failed here (they may hold our pieces or
        our hash list: void now, and no reason to ban us), then try again."""
        self._send_all(fw.FetchAborted(self.file_sha256(file), failed=True))
        fetch = self.fetches.pop(file, None)
        if fetch is not None:  # the bad copy's fetch must not keep the retry from starting
            fetch.stop()
            self.picker.drop_peer(fetch)
        self._reset_file(file)
        request = self.requests.pop(file, None)
        if request is None:
            return
        # readers got bytes of a bad file: cut them; apt's retry joins the new attempt
        request.fail(VerificationError(self._name(file), why))
        if request.attempts + 1 >= MAX_ATTEMPTS:
            self.picker.set_file_priority(file, DISABLED)
            return
        retry = FileRequest(self, file, request.place, request.attempts + 1)
        self.requests[file] = retry
        self.picker.set_file_priority(file, HIGH)
        gevent.spawn(self._supervise, retry)
        self._start_mirror(file, force=True)

    def source_failed(self, peer: PeerConnection, file: int) -> None:
        """*peer* says its copy of a file failed at its source: what it announced of it
        and the list it gave are void. Dropped, not punished: an honest relay of a bad
        mirror is no liar (one whose list fails here unannounced still is)."""
        peer.plane.drop_file(file)
        if self.hashlists.giver(file) is not peer:
            return
        log.info("%s: %s says %s failed at its source", self, peer, self._name(file))
        pieces = self.layout.file_pieces(file)
        if any(p in self.have for p in pieces) and not self.file_complete(file):
            self._retry_file(file, "a peer's copy failed at its source")
        else:
            self.hashlists.drop(file)

    def _distrust(self, file: int, giver: PeerConnection, why: str) -> None:
        self.session.ban(giver.address[0], why)
        giver.close("banned: " + why)
        self.hashlists.drop(file)

    def _reset_file(self, file: int) -> None:
        """Drop every byte of a file we hold: data, pieces had, blocks half-received
        (the picker must not count blocks whose bytes are gone)."""
        if self.file_complete(file):  # announced whole: peers must not ask us for it
            for peer in list(self.peers):
                peer.plane.retract_files([file])
        self.store.discard(file)
        for piece in self.layout.file_pieces(file):
            self.have.discard(piece)
            self._pending.pop(piece, None)
            self.picker.reset(piece)
        self.hashlists.drop(file)

    def _fail(self, file: int, error: DebtorrentError) -> None:
        """Give up on a file for now: its partial data goes, and with it the pieces we
        had of it, so a later request starts clean (from peers or a fresh fetch)."""
        request = self.requests.pop(file, None)
        self.picker.set_file_priority(file, DISABLED)
        self._reset_file(file)
        if request is not None:
            request.fail(error)

    # --- hash lists and claims over the wire -----------------------------------------------

    def _hash_file(self, file: int) -> list[bytes]:
        return self.store.piece_sha256s(self.layout.file_pieces(file))

    def _ask_hashes(self, file: int, only: PeerConnection | None = None) -> None:
        pieces = self.layout.file_pieces(file)
        if len(pieces) <= 1 or file not in self.requests:
            return
        sha = self.file_sha256(file)
        for peer in [only] if only is not None else list(self.peers):
            if peer.closed or not peer.plane.speaks(fw.DT_HASHES):
                continue
            offers = sum(1 for p in pieces if p in peer.has)
            if self.claims.fetching(file) and offers == 0:
                offers = 1  # a fetcher's list grows before its first piece is announced
            if self.hashlists.should_ask(file, peer, offers):
                peer.plane.send(fw.HashesRequest(sha))

    def on_file_message(self, peer: PeerConnection, file: int, msg: object) -> None:
        """A hash-list or fetching message about one of our files (already mapped)."""
        pieces = self.layout.file_pieces(file)
        if isinstance(msg, fw.HashesRequest):
            known = self.hashlists.for_peer(file, len(pieces), self.file_complete(file))
            reply: object = (
                fw.HashesReply(msg.sha256, b"".join(known))
                if known and len(pieces) > 1
                else fw.HashesReject(msg.sha256)
            )
            peer.plane.send(reply)
        elif isinstance(msg, fw.HashesReply):
            if self.hashlists.offered(file, len(pieces), msg.piece_hashes(), peer):
                self.wake_peers()
        elif isinstance(msg, fw.FetchStarted):
            self.claims.started(file, peer, msg.started_ms)
            ours = self.fetches.get(file)
            if ours is not None and self.claims.we_yield(
                Claim(ours.started_ms, self.peer_id), Claim(msg.started_ms, peer.peer_id)
            ):
                log.info("%s: %s fetches %s first; waiting for it", self, peer, self._name(file))
                ours.yield_to(peer)
            self._ask_hashes(file, peer)
        elif isinstance(msg, (fw.FetchFinished, fw.FetchAborted)):
            self.claims.ended(file, peer)
            if isinstance(msg, fw.FetchAborted) and msg.failed:
                self.source_failed(peer, file)
            self._ask_hashes(file, peer)

    def _send_all(self, msg: object) -> None:
        for peer in list(self.peers):
            peer.plane.send(msg)

    # --- peers ------------------------------------------------------------------------------

    def on_extension_handshake(self, peer: PeerConnection) -> None:
        peer.plane.greet()
        for file, fetch in list(self.fetches.items()):
            peer.plane.send(fw.FetchStarted(self.file_sha256(file), fetch.started_ms))
        for file in list(self.requests):
            self._ask_hashes(file, peer)

    def peer_gained(self, peer: PeerConnection, pieces: Iterable[int]) -> None:
        """The peer has these pieces now (a file whole, or pieces of one in flight)."""
        gained = False
        for piece in pieces:
            if peer.has.add(piece):
                self.picker.inc_availability(piece)
                gained = True
        if gained:
            for file in list(self.requests):
                self._ask_hashes(file, peer)
            peer.update_interest()

    def peer_lost(self, peer: PeerConnection, pieces: Iterable[int]) -> None:
        """The peer no longer offers these pieces (it said a file is gone)."""
        for piece in pieces:
            if peer.has.discard(piece):
                self.picker.dec_availability(piece)
        peer.update_interest()

    def peer_gone(self, peer: PeerConnection) -> None:
        self.claims.peer_gone(peer)
        self.hashlists.peer_gone(peer)

    # --- status ------------------------------------------------------------------------------

    def info(self) -> SwarmInfo:
        loaded = list(self.indexes.values())
        return SwarmInfo(
            mirror=loaded[0].mirror if loaded else None,
            index_date=loaded[-1].release.date if loaded else None,
            files_enabled=len(self.requests),
            files_complete=self.complete_files,
        )

    def downloads(self) -> list[FileProgress]:
        now = time.monotonic()
        out = []
        for file, request in list(self.requests.items()):
            if file in self.fetches:
                source = "mirror"
            elif self.claims.fetching(file):
                source = "peers (fetching from the mirror)"
            else:
                source = "peers"
            out.append(
                FileProgress(
                    mirror=request.mirror,
                    path=request.place.filename,
                    size=self.layout.file_size(file),
                    done=self._bytes_done(file),
                    source=source,
                    waiting=round(now - request.started, 1),
                )
            )
        return out

    def close(self) -> None:
        for fetch in list(self.fetches.values()):
            fetch.stop()
        for file in list(self.requests):
            self._fail(file, VerificationError("swarm", "swarm closed"))
        super().close()
        self.store.close()


def sizes_under(base: str) -> dict[str, int]:
    """``{path under base: size}`` of the complete files under ``base/pool`` (where an
    index's ``Filename`` lives; a flat repository's at the base itself); read-only, run
    off the hub."""
    sizes: dict[str, int] = {}
    start = len(base) + 1
    for top in (os.path.join(base, "pool"), base):
        for dirpath, dirs, names in os.walk(top):
            if top == base:
                dirs[:] = []  # the flat case: the base's own files only
            for name in names:
                if name.startswith(TMP_PREFIX):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    sizes[full[start:]] = os.stat(full).st_size
                except OSError:
                    continue  # removed meanwhile
    return sizes
