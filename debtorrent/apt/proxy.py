"""Where each requested file comes from: the proxy's policy per file class.

This is the design's table of file classes made code. :meth:`Proxy.resolve` returns
either a complete :class:`Cached` file or a :class:`~debtorrent.fetch.Download` to
stream; the WSGI app only turns those into HTTP. Indexes are fetched fresh every time
and kept as the offline copy; ``Packages`` indexes are verified against the Release,
saved uncompressed and loaded; ``.deb`` files are verified against their index.

Signatures (``--verify-signatures``): every InRelease, and every Release once its
Release.gpg arrives, is checked as it is fetched. In ``auto`` an unverified Release and
its indexes still go to apt (which checks them itself), but its indexes make no swarm
and the packages they list are passed through without being kept, so nothing from an
unverified source is cached for peers. In ``enforce`` a Release whose signature fails
is a 502 and the indexes of any unverified Release are a 403.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gevent
from gevent.event import AsyncResult

from debtorrent import offload
from debtorrent.apt.urls import FileClass, Target, classify
from debtorrent.archive.indexes import Archive, PackageMatch
from debtorrent.archive.packages import compression_of
from debtorrent.cache import Cache, TempFile
from debtorrent.errors import (
    BadIndexError,
    CacheError,
    DebtorrentError,
    ForbiddenError,
    MirrorError,
    MirrorNotFoundError,
    NotFoundError,
    SignatureError,
)
from debtorrent.fetch import Download, Expected, Fetcher, Transfer

__all__ = ["Cached", "Proxy"]

log = logging.getLogger(__name__)


_PREFETCHED = frozenset({FileClass.PACKAGE, FileClass.IMMUTABLE, FileClass.BY_HASH})


@dataclass(frozen=True)
class Cached:
    """A complete file in the cache; ``source`` says how it got there for this request.

    ``sha256`` (hex) is set for a file verified against the signed index chain: the
    apt side sends it as a strong ETag.
    """

    path: Path | str
    source: str = "cache"
    sha256: str | None = None


# A hook the swarm layer installs: given a package request matched to an index entry,
# it returns the cached path of a complete file, or a transfer to stream while the
# swarm verifies it (None: no swarm has it). Without the hook, packages come straight
# from the mirror.
PackageSource = Callable[[PackageMatch], "Path | Transfer | None"]


class Proxy:
    """Resolves a :class:`Target` to a cached file or a download, by file class."""

    def __init__(
        self, cache: Cache, archive: Archive, fetcher: Fetcher, header_timeout: float
    ) -> None:
        self.cache = cache
        self.archive = archive
        self.fetcher = fetcher
        self.header_timeout = header_timeout
        self.package_source: PackageSource | None = None
        self._loading: dict[tuple[str, str, str], AsyncResult] = {}  # index loads running
        # per mirror: index downloads whose load has not finished (see _load_when_fetched)
        self._pending: dict[str, set[AsyncResult]] = {}

    def prefetch(self, target: Target) -> None:
        """Start fetching a file apt has asked for on a connection busy with earlier
        answers, so that it is on its way (or done) when its turn comes.

        Only files that stay valid once fetched: packages and other immutable files,
        and indexes named by their hash. What is fetched fresh for every request
        (InRelease, volatile indexes) would be fetched twice.
        """
        if classify(target.path) in _PREFETCHED:
            gevent.spawn(self._prefetch, target)

    def _prefetch(self, target: Target) -> None:
        try:
            self.resolve(target)
        except DebtorrentError as exc:  # the request itself will meet it and say so
            log.debug("%s: look-ahead fetch failed: %s", target, exc)

    def resolve(self, target: Target, conditional: bool = False) -> Cached | Transfer:
        """The file apt asked for, by the rules of its class.

        ``conditional``: apt already holds a copy (If-Modified-Since). Release files
        (InRelease, Release, Release.gpg), the only indexes apt asks for that way, are
        now fetched whole before answering whether or not it does: their signature is
        checked before apt gets a byte, and when the mirror sent the very bytes the
        cache holds, the old copy keeps its date and apt can be told 304.
        """
        cls = classify(target.path)
        if cls is FileClass.PDIFF:
            raise NotFoundError("pdiffs are not served; apt falls back to the whole index")
        if cls is FileClass.INDEX:
            # always whole first (they are small): a signature refused under enforce is
            # then a clean 502 naming the reason, never a transfer cut at its last byte
            return self._fresh(target, finisher=self._release_finisher, settle=True)
        if cls in (FileClass.PACKAGES, FileClass.BY_HASH, FileClass.VOLATILE):
            refusal = self.archive.refusal(target.mirror, target.path)
            if refusal is not None:
                raise ForbiddenError(f"{target}: {refusal}", "Forbidden (Release not verified)")
        if cls is FileClass.PACKAGES:
            return self._packages(target, target.path)
        if cls is FileClass.BY_HASH:
            index_path = self.archive.resolve_by_hash(target.mirror, target.path)
            if index_path is not None and classify(index_path) is FileClass.PACKAGES:
                return self._packages(target, index_path)
            return self._immutable(target, self._expected(target.mirror, index_path))
        if cls is FileClass.PACKAGE:
            return self._package(target)
        if cls is FileClass.IMMUTABLE:
            return self._immutable(target, None)
        return self._fresh(target)

    # --- the classes --------------------------------------------------------------

    def _fresh(self, target: Target, finisher=None, settle: bool = False) -> Cached | Download:
        """Fetched every time; the cached copy answers only when the mirror fails.

        ``settle`` waits for the whole file and answers from the cache (see resolve).
        """
        download = self.fetcher.fetch(target.mirror, target.path, target.url, finisher=finisher)
        started = self._started_or_offline(target, download)
        if not settle or isinstance(started, Cached):
            return started
        try:
            return Cached(download.wait_done(self.header_timeout), "mirror")
        except (MirrorError, CacheError) as exc:
            cached = self.cache.get(target.mirror, target.path)
            if cached is None or isinstance(exc, MirrorNotFoundError):
                raise
            log.warning("%s: fetch failed (%s); serving the offline copy", target, exc)
            return Cached(cached, "offline")

    def _started_or_offline(self, target: Target, download: Download) -> Cached | Download:
        try:
            download.wait_headers(self.header_timeout)
        except MirrorNotFoundError:
            raise
        except (MirrorError, CacheError) as exc:
            cached = self.cache.get(target.mirror, target.path)
            if cached is None:
                raise
            log.warning(
                "%s: fetch failed (%s); serving the offline copy",
                target,
                exc,
                extra={"failure": exc},  # one failure, one line on the status page
            )
            return Cached(cached, "offline")
        return download

    def _immutable(self, target: Target, expected: Expected | None) -> Cached | Download:
        cached = self.cache.find(target.mirror, target.path)
        if cached is not None and (expected is None or _size(cached) == expected.size):
            return Cached(cached, sha256=expected.sha256 if expected else None)
        download = self.fetcher.fetch(
            target.mirror, target.path, target.url, expected=expected, keep=True
        )
        download.wait_headers(self.header_timeout)
        return download

    def _packages(self, target: Target, index_path: str) -> Cached | Download:
        """A Packages index, by name or by hash: verified, saved uncompressed, loaded."""
        expected = self._expected(target.mirror, index_path)
        if expected is None:
            log.warning("%s: no Release lists this index; passing it through unverified", target)
            return self._fresh(target)
        cached = self.cache.get(target.mirror, target.path)
        if cached is not None and _matches(cached, expected):
            self._load_index(target.mirror, index_path, cached)
            return Cached(cached)
        download = self.fetcher.fetch(target.mirror, target.path, target.url, expected=expected)
        download.wait_headers(self.header_timeout)
        self._load_when_fetched(download, index_path)
        return download

    def _load_when_fetched(self, download: Download, index_path: str) -> None:
        """Load an index once its verified download is complete, without holding apt.

        apt gets its last byte as soon as the SHA256 matches: loading a 50 MB index
        (decompress, hash, scan, save) takes about as long again, and apt has its own
        decompression to do meanwhile; in series, an update took twice as long as
        direct. A package request that finds no index entry while a load of its mirror
        is on its way waits for it (see :meth:`_lookup`).
        """

        def load() -> None:
            try:
                final = download.wait_done(None)
            except DebtorrentError:
                return  # the fetch failed, said so in the log, and apt was told
            # pending from the last byte on (apt cannot ask for a package of an index it
            # does not have yet), so a slow index download holds no other request
            pending = AsyncResult()
            self._pending.setdefault(download.mirror, set()).add(pending)
            try:
                self._load_index(download.mirror, index_path, final)
            except (DebtorrentError, OSError) as exc:  # apt has the verified bytes anyway
                log.warning("%s/%s: not loaded, no swarm: %s", download.mirror, index_path, exc)
            finally:
                waiting = self._pending.get(download.mirror, set())
                waiting.discard(pending)
                if not waiting:
                    self._pending.pop(download.mirror, None)
                pending.set(None)

        gevent.spawn(load)

    def _lookup(self, target: Target) -> PackageMatch | None:
        """The index entry for a package, waiting (bounded) for index loads of its
        mirror still running: right after ``apt-get update`` the entry may be in an
        index that apt already has and the daemon is still loading."""
        match = self.archive.lookup(target.mirror, target.path)
        if match is None and self._pending.get(target.mirror):
            gevent.wait(list(self._pending[target.mirror]), timeout=self.header_timeout)
            match = self.archive.lookup(target.mirror, target.path)
        return match

    def _package(self, target: Target) -> Cached | Transfer:
        match = self._lookup(target)
        if match is None:
            log.info("%s: in no loaded index; passed through, not cached", target)
            download = self.fetcher.fetch(target.mirror, target.path, target.url, keep=False)
            download.wait_headers(self.header_timeout)
            return download
        entry = match.entry
        cached = self.cache.find(target.mirror, target.path)
        if cached is not None and _size(cached) == entry.size:
            return Cached(cached, sha256=entry.sha256.hex())
        if cached is not None:  # truncated or changed behind our back: fetched again
            log.warning("%s: cached copy has the wrong size; fetching it again", target)
        if self.package_source is not None:
            result = self.package_source(match)
            if isinstance(result, Path):
                return Cached(result, "swarm", entry.sha256.hex())
            if result is not None:
                return result
        expected = Expected(entry.size, entry.sha256.hex())
        keep = match.loaded.trusted  # from an unverified Release: to apt only, not kept
        download = self.fetcher.fetch(
            target.mirror, target.path, target.url, expected=expected, keep=keep
        )
        download.wait_headers(self.header_timeout)
        return download

    # --- indexes --------------------------------------------------------------------

    def _release_finisher(self, download: Download, tmp: TempFile) -> None:
        """Check and parse a Release file before apt gets its last byte.

        A Release whose signature fails is a 502 when signatures are enforced
        (nothing is cached); otherwise it goes to apt, which judges it too.
        """
        data = os.pread(tmp.read_fd, download.received, 0)
        name = download.path.rpartition("/")[2]
        try:
            if name == "Release.gpg":
                info = self.archive.add_signature(download.mirror, download.path, data)
            else:
                info = self.archive.add_release(download.mirror, download.path, data)
        except BadIndexError as exc:  # apt judges it too; pass it on, but say so
            log.warning("%s/%s: %s", download.mirror, download.path, exc)
            return
        enforcing = self.archive.verifier is not None and self.archive.verifier.enforcing
        if info is not None and enforcing and name != "Release" and not info.trusted:
            raise SignatureError(
                f"{download.mirror}/{download.path}",
                f"Release {info.trust}: {info.trust_reason} (verify-signatures enforce)",
            )

    def _expected(self, mirror: str, index_path: str | None) -> Expected | None:
        """What the Release says an index must be, if a Release lists it."""
        listed = self.archive.expected(mirror, index_path) if index_path else None
        return Expected(listed.size, listed.sha256) if listed else None

    def _load_index(self, mirror: str, index_path: str, copy: Path) -> None:
        """Read, decompress and load an index from its cached ``copy`` (off the hub),
        once however many ask at once; read only if it is not loaded yet."""
        plain = index_path[: len(index_path) - len(compression_of(index_path))]
        current = self.archive.loaded.get((mirror, plain))
        listed = self.archive.expected(mirror, plain)
        release = self.archive.release_for(mirror, plain)
        if (
            current is not None
            and listed is not None
            and current.index.sha256 == listed.sha256
            and release is not None
            and current.trusted == release.trusted
        ):
            return  # already loaded (apt asks for each index once per update)
        key = (mirror, plain, listed.sha256 if listed else "")
        running = self._loading.get(key)
        if running is not None:
            running.get()  # raises what the first load raised
            return
        running = self._loading[key] = AsyncResult()
        try:
            data = offload.run(copy.read_bytes)
            self.archive.add_compressed(mirror, index_path, data, listed.size if listed else None)
        except BaseException as exc:
            running.set_exception(exc)
            raise
        else:
            running.set(None)
        finally:
            del self._loading[key]


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _matches(path: Path, expected: Expected) -> bool:
    """Whether a cached index is the one the Release lists (hashed off the hub)."""
    if _size(path) != expected.size:
        return False
    try:
        return offload.sha256_file(path).hex() == expected.sha256
    except OSError:
        return False
