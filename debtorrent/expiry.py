"""Keeping the cache to what is useful: unlisted packages expire, and a size cap holds.

apt-cacher-ng's rule, applied to debtorrent's cache: a package file that no loaded
index lists any more is of no use to apt or to any swarm, so it goes; a ``by-hash``
file no loaded Release names goes too. Then, if the cache is over ``--cache-limit``,
the least recently used pool files go until it is under. Indexes (``dists/``) are
kept: they are small, and they are what lets the daemon work while the mirror is down.
A file being written is never touched (it has a temporary name until complete).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from debtorrent.archive.indexes import Archive
from debtorrent.cache import TMP_PREFIX, Cache

__all__ = ["Expiry", "ExpiryReport"]

log = logging.getLogger(__name__)

PACKAGE_SUFFIXES = (".deb", ".udeb")


@dataclass
class ExpiryReport:
    """What one run removed, and the cache's size afterwards."""

    unlisted: int = 0
    over_limit: int = 0
    freed: int = 0
    size: int = 0
    files: int = 0


class Expiry:
    """One pass over the cache: see the module docstring."""

    def __init__(
        self, cache: Cache, archive: Archive, limit: int, on_remove: Callable[[str, str], None]
    ) -> None:
        self.cache = cache
        self.archive = archive
        self.limit = limit
        self.on_remove = on_remove

    def run(self) -> ExpiryReport:
        report = ExpiryReport()
        candidates: list[tuple[float, int, str, str, str]] = []  # atime, size, mirror, path, file
        for mirror, path, full, st in self._files():
            if self._unlisted(mirror, path):
                if self._remove(mirror, path, full):
                    report.unlisted += 1
                    report.freed += st.st_size
                continue
            report.size += st.st_size
            report.files += 1
            if "/pool/" in f"/{path}":
                candidates.append((max(st.st_atime, st.st_mtime), st.st_size, mirror, path, full))
        if self.limit and report.size > self.limit:
            for _, size, mirror, path, full in sorted(candidates):
                if report.size <= self.limit:
                    break
                if self._remove(mirror, path, full):
                    report.over_limit += 1
                    report.freed += size
                    report.size -= size
                    report.files -= 1
        log.debug("expiry: pass done, %d files kept", report.files)  # tests wait on it
        if report.unlisted or report.over_limit:
            log.info(
                "expiry: removed %d unlisted and %d least used files, %.1f MB freed; "
                "cache now %.1f MB in %d files",
                report.unlisted,
                report.over_limit,
                report.freed / 1e6,
                report.size / 1e6,
                report.files,
            )
        return report

    def _files(self):
        root = self.cache.root
        for mirror in sorted(os.listdir(root)):
            base = os.path.join(root, mirror)
            if not os.path.isdir(base):
                continue
            for dirpath, _dirs, names in os.walk(base):
                for name in names:
                    if name.startswith(TMP_PREFIX):
                        continue
                    full = os.path.join(dirpath, name)
                    try:
                        st = os.stat(full)
                    except OSError:
                        continue
                    yield mirror, os.path.relpath(full, base).replace(os.sep, "/"), full, st

    def _unlisted(self, mirror: str, path: str) -> bool:
        """A package no loaded index lists, or a by-hash file no loaded Release names."""
        if path.endswith(PACKAGE_SUFFIXES):
            return self.archive.lookup(mirror, path) is None
        if "/by-hash/" in path:
            return self.archive.resolve_by_hash(mirror, path) is None
        return False

    def _remove(self, mirror: str, path: str, full: str) -> bool:
        try:
            os.unlink(full)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("expiry: cannot remove %s: %s", full, exc)
            return False
        self.on_remove(mirror, path)
        return True
