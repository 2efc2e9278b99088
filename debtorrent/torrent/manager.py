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
from pathlib import Path

import gevent

from debtorrent.archive.indexes import Archive, LoadedIndex, PackageMatch
from debtorrent.cache import Cache
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
