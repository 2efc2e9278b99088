"""Swarms for the loaded indexes, and the door through which apt's .deb requests enter.

The :class:`SwarmManager` listens to the archive: every ``Packages`` index loaded (at
start-up or when apt updates) gets a :class:`~debtorrent.torrent.packages.PackageSwarm`
with nothing enabled. When an index is replaced by a newer one, the old swarm keeps
seeding its complete files for ``--old-swarm-keep`` seconds, then stops. The proxy
hands package requests to :meth:`SwarmManager.fetch`, which blocks until the file is
verified in the cache. An index whose Release did not verify
(:attr:`LoadedIndex.trusted` false) gets no swarm: it is never offered to peers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gevent

from debtorrent.archive.indexes import Archive, LoadedIndex, PackageMatch
from debtorrent.cache import TMP_PREFIX, Cache
from debtorrent.torrent.packages import FileRequest, PackageSwarm
from debtorrent.torrent.session import Session
from debtorrent.torrent.swarm import Swarm

__all__ = ["SwarmManager"]

log = logging.getLogger(__name__)


class SwarmManager:
    """Keeps one swarm per loaded index and routes package requests to them."""

    def __init__(self, session: Session, archive: Archive, cache: Cache, keep_old: float):
        self.session = session
        self.archive = archive
        self.cache = cache
        self.keep_old = keep_old
        self.swarms: dict[str, PackageSwarm] = {}  # by the index's SHA256
        archive.listeners.append(self._index_loaded)
        session.file_listeners.append(self._file_completed)

    def _index_loaded(self, loaded: LoadedIndex, old: LoadedIndex | None) -> None:
        digest = loaded.index.sha256
        if not loaded.trusted:
            log.info("%s/%s: Release not verified; no swarm", loaded.mirror, loaded.path)
        elif digest not in self.swarms:
            swarm = PackageSwarm(self.session, loaded, self.cache)
            self.swarms[digest] = swarm
            self.session.add_swarm(swarm)
        if old is not None and old.index.sha256 != digest:
            still_used = any(
                other.index.sha256 == old.index.sha256 for other in self.archive.loaded.values()
            )
            retired = self.swarms.get(old.index.sha256)
            if retired is not None and not still_used:
                log.info("%s replaced; seeding it %d s more", retired, self.keep_old)
                gevent.spawn_later(self.keep_old, self._retire, old.index.sha256, retired)

    def _retire(self, digest: str, swarm: PackageSwarm) -> None:
        if any(other.index.sha256 == digest for other in self.archive.loaded.values()):
            return  # loaded again meanwhile
        if self.swarms.get(digest) is swarm:
            del self.swarms[digest]
        self.session.remove_swarm(swarm)

    def fetch(self, match: PackageMatch) -> Path | FileRequest | None:
        """The package through its swarm: its cached path when complete, else the
        request to stream from; None when no swarm holds the index (the proxy then
        fetches from the mirror itself)."""
        swarm = self.swarms.get(match.loaded.index.sha256)
        if swarm is None:
            return None
        file_index = swarm.index.positions.get(match.entry.filename)
        if file_index is None:
            return None
        request = swarm.request(file_index)
        return request.final if request.done else request

    def forget(self, mirror: str, path: str) -> None:
        """A cached file was removed (expiry): stop offering it to peers."""
        for swarm in self.swarms.values():
            if swarm.loaded.mirror != mirror:
                continue
            root = swarm.loaded.release.root
            if root and not path.startswith(root + "/"):
                continue
            file_index = swarm.index.positions.get(path[len(root) + 1 :] if root else path)
            if file_index is not None:
                swarm.forget_file(file_index)

    def rescan(self) -> tuple[int, int]:
        """Match every swarm's seeded files with the cache as it is now: files removed
        or truncated behind the daemon's back are no longer offered, files put there
        (``debtorrent import``) are. The walk runs in the threadpool; returns
        ``(added, lost)`` over all swarms."""
        by_base: dict[Path, list[PackageSwarm]] = {}
        for swarm in list(self.swarms.values()):
            by_base.setdefault(swarm.base, []).append(swarm)
        added = lost = 0
        hub = gevent.get_hub()
        for base, swarms in by_base.items():
            present = hub.threadpool.apply(_sizes_under, (str(base),))
            for swarm in swarms:
                if not swarm.closed:
                    more, fewer = swarm.rescan(present)
                    added, lost = added + more, lost + fewer
        return added, lost

    def _file_completed(self, swarm: Swarm, file_index: int) -> None:
        """Seed a file in every other swarm that lists it at the same place."""
        if not isinstance(swarm, PackageSwarm):
            return
        path = swarm.final_path(file_index)
        digest = swarm.file_sha256(file_index)
        filename = swarm.index.filenames[file_index]
        for other in self.swarms.values():
            if other is swarm:
                continue
            other_index = other.index.positions.get(filename)
            if (
                other_index is not None
                and other.file_sha256(other_index) == digest
                and other.final_path(other_index) == path
                and not other.file_complete(other_index)
            ):
                other.mark_complete(other_index)


def _sizes_under(base: str) -> dict[str, int]:
    """``{path under base: size}`` of the complete files under ``base/pool`` (where every
    ``Filename`` of an index lives); run off the hub, it only reads the directory."""
    sizes: dict[str, int] = {}
    start = len(base) + 1
    for dirpath, _dirs, names in os.walk(os.path.join(base, "pool")):
        for name in names:
            if name.startswith(TMP_PREFIX):
                continue
            full = os.path.join(dirpath, name)
            try:
                sizes[full[start:]] = os.stat(full).st_size
            except OSError:
                continue  # removed meanwhile
    return sizes
