"""Suite swarms for the loaded indexes, and the door through which apt's .deb requests
enter.

The :class:`SwarmManager` listens to the archive: every ``Packages`` index loaded (at
start-up or when apt updates) joins the swarm of its suite and component
(:class:`~debtorrent.torrent.suite.SuiteSwarm`, layout 2), created on first need, with
nothing enabled. When an index is replaced by a newer one, the old one stays in its
swarm ``--old-swarm-keep`` seconds more (its files stay offered), then leaves; a swarm
left with no index stops. An index whose Release did not verify
(:attr:`LoadedIndex.trusted` false) joins no swarm: it is never offered to peers. The
proxy hands package requests to :meth:`SwarmManager.fetch`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gevent

from debtorrent import offload
from debtorrent.archive.indexes import Archive, LoadedIndex, PackageMatch
from debtorrent.cache import Cache
from debtorrent.torrent.catalog import Place
from debtorrent.torrent.requests import FileRequest
from debtorrent.torrent.session import Session
from debtorrent.torrent.suite import SuiteSwarm, sizes_under, suite_identity
from debtorrent.torrent.swarm import Swarm

__all__ = ["SwarmManager"]

log = logging.getLogger(__name__)


class SwarmManager:
    """Keeps one swarm per suite and component, and routes package requests to them."""

    def __init__(self, session: Session, archive: Archive, cache: Cache, keep_old: float):
        self.session = session
        self.archive = archive
        self.cache = cache
        self.keep_old = keep_old
        self.swarms: dict[str, SuiteSwarm] = {}  # by suite name
        archive.listeners.append(self._index_loaded)
        session.file_listeners.append(self._file_completed)

    def swarm_of(self, loaded: LoadedIndex) -> SuiteSwarm | None:
        return self.swarms.get(suite_identity(loaded).name)

    def _index_loaded(self, loaded: LoadedIndex, old: LoadedIndex | None) -> None:
        if not loaded.trusted:
            log.info("%s/%s: Release not verified; no swarm", loaded.mirror, loaded.path)
        else:
            identity = suite_identity(loaded)
            swarm = self.swarms.get(identity.name)
            if swarm is None:
                swarm = self.swarms[identity.name] = SuiteSwarm(self.session, identity, self.cache)
                swarm.add_index(loaded)
                self.session.add_swarm(swarm)
            else:
                swarm.add_index(loaded)
        if old is not None and old.index is not loaded.index:
            log.info("%s/%s replaced; kept %d s more", old.mirror, old.path, self.keep_old)
            gevent.spawn_later(self.keep_old, self._retire, old)

    def _retire(self, old: LoadedIndex) -> None:
        """An index replaced ``keep_old`` seconds ago leaves its swarm, unless loaded
        again meanwhile; a swarm with no index left stops."""
        current = self.archive.loaded.get((old.mirror, old.path))
        if current is not None and current.index is old.index:
            return
        swarm = self.swarms.get(suite_identity(old).name)
        if swarm is None:
            return
        swarm.remove_index(old)
        if not swarm.indexes:
            del self.swarms[swarm.identity.name]
            self.session.remove_swarm(swarm)

    def fetch(self, match: PackageMatch) -> Path | FileRequest | None:
        """The package through its swarm: its cached path when complete, else the
        request to stream from; None when no swarm lists it (the proxy then fetches
        from the mirror itself)."""
        swarm = self.swarm_of(match.loaded)
        if swarm is None:
            return None
        file = swarm.find(match.entry.sha256)
        if file is None:
            return None
        place = Place(match.loaded.mirror, match.loaded.release.root, match.entry.filename)
        request = swarm.request(file, place)
        return request.final if request.done else request

    def forget(self, mirror: str, path: str) -> None:
        """A cached file was removed (expiry): stop offering it to peers."""
        match = self.archive.lookup(mirror, path)
        if match is None:
            return
        for swarm in self.swarms.values():
            file = swarm.find(match.entry.sha256)
            if file is not None and swarm.final_path(file) == self.cache.path(mirror, path):
                swarm.forget_file(file)

    def rescan(self) -> tuple[int, int]:
        """Match every swarm's seeded files with the cache as it is now: files removed
        or truncated behind the daemon's back are no longer offered, files put there
        (``debtorrent import``) are. The walk runs in the threadpool; returns
        ``(added, lost)`` over all swarms."""
        present: dict[Path, dict[str, int]] = {}
        for swarm in list(self.swarms.values()):
            for base in swarm.bases():
                if base not in present:
                    present[base] = offload.run(sizes_under, str(base))
        added = lost = 0
        for swarm in list(self.swarms.values()):
            if not swarm.closed:
                more, fewer = swarm.rescan(present)
                added, lost = added + more, lost + fewer
        return added, lost

    def _file_completed(self, swarm: Swarm, file: int) -> None:
        """Seed a file in every other swarm that lists it at the same place (a package
        in two suites, say testing and unstable)."""
        if not isinstance(swarm, SuiteSwarm):
            return
        path = swarm.final_path(file)
        digest = swarm.file_sha256(file)
        for other in self.swarms.values():
            if other is swarm:
                continue
            other_file = other.find(digest)
            if other_file is not None and other.final_path(other_file) == path:
                other.mark_complete(other_file)
