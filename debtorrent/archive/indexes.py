"""What the daemon knows of the archives behind its mirrors.

:class:`Archive` holds the parsed Releases (so index downloads can be verified and
``by-hash`` requests recognised) and the loaded ``Packages`` indexes (so a ``.deb``
request can be verified against its SHA256). Indexes are shared by content: the same
``Packages`` seen through two mirrors is one :class:`PackageIndex`, which is what lets
users of different mirrors share one swarm later. At start-up the saved copies in the
cache are loaded again, each only if it matches its saved Release.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from debtorrent import offload
from debtorrent.archive.packages import (
    PackageEntry,
    PackageIndex,
    compression_of,
    decompress,
    scan_packages,
)
from debtorrent.archive.release import IndexEntry, ReleaseInfo, parse_release
from debtorrent.cache import Cache
from debtorrent.errors import BadIndexError, DebtorrentError

__all__ = ["Archive", "LoadedIndex", "PackageMatch"]

log = logging.getLogger(__name__)

_BINARY_RE = re.compile(r"^(?P<component>.+)/binary-(?P<arch>[^/]+)/Packages$")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoadedIndex:
    """A ``Packages`` index loaded for one mirror path, with what names its swarm."""

    mirror: str
    path: str  # mirror path of the uncompressed index: <dist>/<component>/binary-<arch>/Packages
    release: ReleaseInfo
    component: str
    arch: str
    index: PackageIndex

    @property
    def name(self) -> str:
        """``<Origin>_<Codename>_<component>_binary-<arch>``, the swarm's name."""
        origin = self.release.origin or "unknown"
        component = self.component.replace("/", "-")
        return f"{origin}_{self.release.swarm_suite}_{component}_binary-{self.arch}"


@dataclass(frozen=True)
class PackageMatch:
    """A ``.deb`` request matched to an index entry."""

    loaded: LoadedIndex
    entry: PackageEntry


class Archive:
    """Releases and Packages indexes per mirror; the single place that knows them."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.releases: dict[tuple[str, str], ReleaseInfo] = {}
        self.loaded: dict[tuple[str, str], LoadedIndex] = {}
        self._by_content: dict[str, PackageIndex] = {}
        self.listeners: list[Callable[[LoadedIndex, LoadedIndex | None], None]] = []
        self.loading = 0  # indexes being hashed and scanned right now (off the hub)

    # --- Releases ---------------------------------------------------------------

    def add_release(self, mirror: str, path: str, data: bytes) -> ReleaseInfo:
        """Parse a Release/InRelease just fetched and remember it for its suite."""
        info = parse_release(path, data)
        key = (mirror, info.dist)
        if path.endswith("/InRelease") or key not in self.releases:
            self.releases[key] = info
        return info

    def release_for(self, mirror: str, path: str) -> ReleaseInfo | None:
        """The Release whose directory holds ``path``."""
        marker = path.find("/dists/") if not path.startswith("dists/") else -1
        start = marker + len("/dists/") if marker >= 0 else len("dists/")
        end = path.find("/", start)
        if end < 0:
            return None
        return self.releases.get((mirror, path[:end]))

    def expected(self, mirror: str, path: str) -> IndexEntry | None:
        """Size and SHA256 the Release lists for an index path, if any."""
        release = self.release_for(mirror, path)
        return release.entry(path) if release else None

    def resolve_by_hash(self, mirror: str, path: str) -> str | None:
        """The index path a ``by-hash`` request stands for, if its Release lists it."""
        release = self.release_for(mirror, path)
        return release.resolve_by_hash(path) if release else None

    # --- Packages ---------------------------------------------------------------

    def add_compressed(self, mirror: str, path: str, data: bytes, size: int | None) -> LoadedIndex:
        """Load a ``Packages`` index as fetched (compressed as its name says, to at most
        ``size`` bytes, the Release's figure), decompressed off the hub."""
        self.loading += 1
        try:
            plain = offload.run(decompress, data, compression_of(path), size)
        finally:
            self.loading -= 1
        return self.add_packages(mirror, path, plain)

    def add_packages(
        self, mirror: str, path: str, data: bytes, *, digest: str | None = None, save: bool = True
    ) -> LoadedIndex:
        """Load the uncompressed ``Packages`` of mirror path ``path`` (any compression name).

        The caller has verified ``data`` against the Release; the uncompressed copy is
        saved as ``<dist>/<component>/binary-<arch>/Packages`` in the cache (unless it
        comes from there: ``save=False``). ``digest`` spares hashing 50 MB again.
        """
        suffix = compression_of(path)
        plain_path = path[: len(path) - len(suffix)] if suffix else path
        release = self.release_for(mirror, plain_path)
        if release is None:
            raise BadIndexError(f"{mirror}/{path}: no Release known for this index")
        match = _BINARY_RE.match(plain_path[len(release.dist) + 1 :])
        if match is None:
            raise BadIndexError(f"{mirror}/{path}: not a binary Packages index")
        self.loading += 1
        try:  # hashing, scanning and saving 50 MB run off the hub (see offload)
            digest = digest or offload.run(_sha256_hex, data)
            listed = release.entry(plain_path)
            if listed is not None and listed.sha256 != digest:
                raise BadIndexError(
                    f"{mirror}/{plain_path}: uncompressed index does not match Release"
                )
            index = self._by_content.get(digest)
            if index is None:
                index = offload.run(scan_packages, data, digest)
            if save:  # only once it parsed: a saved index must never stop the next start
                self.cache.write(mirror, plain_path, data)
        finally:
            self.loading -= 1
        return self._register(
            LoadedIndex(mirror, plain_path, release, match["component"], match["arch"], index)
        )

    def _register(self, loaded: LoadedIndex) -> LoadedIndex:
        key = (loaded.mirror, loaded.path)
        old = self.loaded.get(key)
        self.loaded[key] = loaded
        self._by_content[loaded.index.sha256] = loaded.index
        if old is not None and old.index is not loaded.index:
            if all(other.index is not old.index for other in self.loaded.values()):
                self._by_content.pop(old.index.sha256, None)
        log.info(
            "index %s/%s: %d files, %.1f GB (%s)",
            loaded.mirror,
            loaded.path,
            len(loaded.index),
            loaded.index.total_size / 1e9,
            loaded.name,
        )
        if old is None or old.index is not loaded.index:
            for listener in self.listeners:
                listener(loaded, old)
        return loaded

    def lookup(self, mirror: str, path: str) -> PackageMatch | None:
        """The index entry for a pool path requested from ``mirror``, if any is loaded."""
        for loaded in self.loaded.values():
            if loaded.mirror != mirror:
                continue
            root = loaded.release.root
            if root and not path.startswith(root + "/"):
                continue
            entry = loaded.index.lookup(path[len(root) + 1 :] if root else path)
            if entry is not None:
                return PackageMatch(loaded, entry)
        return None

    # --- start-up ---------------------------------------------------------------

    def load_saved(self) -> int:
        """Load every Release and matching ``Packages`` kept in the cache; returns indexes."""
        for name in ("Release", "InRelease"):  # InRelease last: it wins
            for mirror, path, file in self.cache.walk(f"**/dists/*/{name}"):
                try:
                    self.add_release(mirror, path, file.read_bytes())
                except (OSError, DebtorrentError) as exc:
                    log.warning("ignoring saved %s/%s: %s", mirror, path, exc)
        count = 0
        for (mirror, dist), release in list(self.releases.items()):
            for rel, listed in release.entries.items():
                if not _BINARY_RE.match(rel):
                    continue
                file = self.cache.get(mirror, f"{dist}/{rel}")
                if file is None:
                    continue
                try:
                    data = offload.run(file.read_bytes)
                    digest = offload.run(_sha256_hex, data)
                    if digest != listed.sha256:
                        log.info("saved %s/%s/%s is outdated; not loaded", mirror, dist, rel)
                        continue
                    self.add_packages(mirror, f"{dist}/{rel}", data, digest=digest, save=False)
                    count += 1
                except (OSError, ValueError, DebtorrentError) as exc:
                    log.warning("ignoring saved %s/%s/%s: %s", mirror, dist, rel, exc)
        return count
