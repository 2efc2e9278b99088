"""Where each requested file comes from: the proxy's policy per file class.

This is the design's table of file classes made code. :meth:`Proxy.resolve` returns
either a complete :class:`Cached` file or a :class:`~debtorrent.fetch.Download` to
stream; the WSGI app only turns those into HTTP. Indexes are fetched fresh every time
and kept as the offline copy; ``Packages`` indexes are verified against the Release,
saved uncompressed and loaded; ``.deb`` files are verified against their index.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from debtorrent.apt.urls import FileClass, Target, classify
from debtorrent.archive.indexes import Archive, PackageMatch
from debtorrent.archive.packages import compression_of, decompress
from debtorrent.cache import Cache, TempFile
from debtorrent.errors import (
    BadIndexError,
    CacheError,
    MirrorError,
    MirrorNotFoundError,
    NotFoundError,
)
from debtorrent.fetch import Download, Expected, Fetcher, Transfer

__all__ = ["Cached", "Proxy"]

log = logging.getLogger(__name__)


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

    def resolve(self, target: Target) -> Cached | Transfer:
        """The file apt asked for, by the rules of its class."""
        cls = classify(target.path)
        if cls is FileClass.PDIFF:
            raise NotFoundError("pdiffs are not served; apt falls back to the whole index")
        if cls is FileClass.INDEX:
            return self._fresh(target, finisher=self._release_finisher)
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

    def _fresh(self, target: Target, finisher=None) -> Cached | Download:
        """Fetched every time; the cached copy answers only when the mirror fails."""
        download = self.fetcher.fetch(target.mirror, target.path, target.url, finisher=finisher)
        return self._started_or_offline(target, download)

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
            self._load_index(target.mirror, index_path, cached.read_bytes())
            return Cached(cached)

        def finish(download: Download, tmp: TempFile) -> None:
            data = os.pread(tmp.read_fd, download.received, 0)
            self._load_index(target.mirror, index_path, data)

        download = self.fetcher.fetch(
            target.mirror, target.path, target.url, expected=expected, finisher=finish
        )
        download.wait_headers(self.header_timeout)
        return download

    def _package(self, target: Target) -> Cached | Transfer:
        match = self.archive.lookup(target.mirror, target.path)
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
        download = self.fetcher.fetch(target.mirror, target.path, target.url, expected=expected)
        download.wait_headers(self.header_timeout)
        return download

    # --- indexes --------------------------------------------------------------------

    def _release_finisher(self, download: Download, tmp: TempFile) -> None:
        if download.path.endswith("Release.gpg"):
            return
        data = os.pread(tmp.read_fd, download.received, 0)
        try:
            self.archive.add_release(download.mirror, download.path, data)
        except BadIndexError as exc:  # apt judges it too; pass it on, but say so
            log.warning("%s/%s: %s", download.mirror, download.path, exc)

    def _expected(self, mirror: str, index_path: str | None) -> Expected | None:
        """What the Release says an index must be, if a Release lists it."""
        listed = self.archive.expected(mirror, index_path) if index_path else None
        return Expected(listed.size, listed.sha256) if listed else None

    def _load_index(self, mirror: str, index_path: str, data: bytes) -> None:
        plain = index_path[: len(index_path) - len(compression_of(index_path))]
        current = self.archive.loaded.get((mirror, plain))
        listed = self.archive.expected(mirror, plain)
        if current is not None and listed is not None and current.index.sha256 == listed.sha256:
            return  # already loaded (apt asks for each index once per update)
        suffix = compression_of(index_path)
        plain_data = decompress(data, suffix, listed.size) if listed else decompress(data, suffix)
        self.archive.add_packages(mirror, index_path, plain_data)


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _matches(path: Path, expected: Expected) -> bool:
    if _size(path) != expected.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == expected.sha256
