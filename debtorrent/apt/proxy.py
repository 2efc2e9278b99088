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

import hashlib
import logging
import os
import time
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
    ForbiddenError,
    MirrorError,
    MirrorNotFoundError,
    MirrorTimeoutError,
    NotFoundError,
    SignatureError,
)
from debtorrent.fetch import Download, Expected, Fetcher, Transfer

__all__ = ["Cached", "Proxy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cached:
    """A complete file in the cache; ``source`` says how it got there for this request."""

    path: Path | str
    source: str = "cache"


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
            return self._signed(target)
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

    def _fresh(self, target: Target, finisher=None) -> Cached | Download:
        """Fetched every time; the cached copy answers only when the mirror fails."""
        download = self.fetcher.fetch(target.mirror, target.path, target.url, finisher=finisher)
        return self._started_or_offline(target, download)

    def _signed(self, target: Target) -> Cached | Download:
        """A Release file, fetched whole before apt gets a byte (they are small): a
        signature refused under ``enforce`` is then a clean 502 naming the reason."""
        result = self._fresh(target, finisher=self._release_finisher)
        if isinstance(result, Download):
            deadline = time.monotonic() + self.header_timeout
            while not result.done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MirrorTimeoutError(result.url, "Release file not complete in time")
                result.read(result.readable(), 1, remaining)  # raises the download's error
        return result

    def _started_or_offline(self, target: Target, download: Download) -> Cached | Download:
        try:
            download.wait_headers(self.header_timeout)
        except MirrorNotFoundError:
            raise
        except (MirrorError, CacheError) as exc:
            cached = self.cache.get(target.mirror, target.path)
            if cached is None:
                raise
            log.warning("%s: fetch failed (%s); serving the offline copy", target, exc)
            return Cached(cached, "offline")
        return download

    def _immutable(self, target: Target, expected: Expected | None) -> Cached | Download:
        cached = self.cache.find(target.mirror, target.path)
        if cached is not None and (expected is None or _size(cached) == expected.size):
            return Cached(cached)
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
            return Cached(cached)
        if self.package_source is not None:
            result = self.package_source(match)
            if isinstance(result, Path):
                return Cached(result, "swarm")
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

    def _load_index(self, mirror: str, index_path: str, data: bytes) -> None:
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
