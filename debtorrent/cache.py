"""The on-disk store: ``<cache_dir>/<mirror>/<path>``, written atomically.

The cache reads like the mirrors it copies. Every file is written under a temporary
name in its final directory and renamed into place only once complete (and verified,
where a hash is known), so a kill at any moment leaves the old complete file or none,
never a partial one. Temporary names start with ``.dt-tmp-`` and are swept at start.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from debtorrent import offload
from debtorrent.errors import CacheError, DiskFullError

__all__ = ["Cache", "TempFile", "cache_error"]

log = logging.getLogger(__name__)

TMP_PREFIX = ".dt-tmp-"


def cache_error(what: str, exc: OSError) -> CacheError:
    """The cache error for an OSError: a full disk is a :class:`DiskFullError` (507)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{what}: cache filesystem full")
    return CacheError(f"{what}: {exc.strerror or exc}")


class TempFile:
    """A file being written into the cache; becomes visible only on :meth:`commit`.

    ``fd`` is open for writing; ``read_fd`` lets readers ``os.pread`` the bytes
    already written (apt can be streamed a file while it downloads) and stays valid
    after the rename.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        try:
            try:
                self.fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=final.parent)
            except FileNotFoundError:  # the first file of its directory
                final.parent.mkdir(parents=True, exist_ok=True)
                self.fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=final.parent)
        except OSError as exc:
            raise cache_error(final.name, exc) from None
        self.path = Path(name)
        self.read_fd = os.open(self.path, os.O_RDONLY)
        self.written = 0
        self.closed = False
        self.synced = False

    def write(self, data: bytes) -> None:
        """Append ``data``; a full disk raises :class:`DiskFullError`."""
        view = memoryview(data)
        try:
            while view:
                done = os.write(self.fd, view)
                view = view[done:]
                self.written += done
        except OSError as exc:
            raise cache_error(self.final.name, exc) from None

    def sync(self) -> None:
        """Flush to disk (off the hub: the calling greenlet waits, nothing else does)."""
        if self.synced:
            return
        try:
            offload.fsync(self.fd)
        except OSError as exc:
            self.discard()
            raise cache_error(self.final.name, exc) from None
        self.synced = True

    def commit(self, mtime: float | None = None) -> Path:
        """Flush and rename into place; the file is complete from now on."""
        self.sync()
        try:
            os.close(self.fd)
            self.closed = True
            os.chmod(self.path, 0o644)
            if mtime is not None:
                os.utime(self.path, (mtime, mtime))
            os.replace(self.path, self.final)
        except OSError as exc:
            self.discard()
            raise cache_error(self.final.name, exc) from None
        return self.final

    def discard(self) -> None:
        """Drop the temporary file (on failure); readers keep their descriptor."""
        if not self.closed:
            os.close(self.fd)
            self.closed = True
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def close_reader(self) -> None:
        """Release ``read_fd`` once no reader needs it."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class Cache:
    """Paths and atomic writes under one cache directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_error(str(self.root), exc) from None

    def path(self, mirror: str, path: str) -> Path:
        """Where the file apt knows as ``http://<mirror>/<path>`` is kept.

        ``path`` is already normalised (no ``..``); the check here is a second lock.
        """
        if mirror.startswith(("/", ".")) or path.startswith("/") or ".." in path.split("/"):
            raise CacheError(f"{mirror}/{path}: refusing a path outside the cache")
        return Path(self._root, mirror, path)

    def find(self, mirror: str, path: str) -> str | None:
        """Like :meth:`get`, as a plain string: the per-request path (no pathlib)."""
        if mirror.startswith(("/", ".")) or path.startswith("/") or ".." in path.split("/"):
            raise CacheError(f"{mirror}/{path}: refusing a path outside the cache")
        full = f"{self._root}/{mirror}/{path}"
        try:
            return full if stat.S_ISREG(os.stat(full).st_mode) else None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise cache_error(path.rsplit("/", 1)[-1], exc) from None

    def get(self, mirror: str, path: str) -> Path | None:
        """The complete cached file, if there is one (asked on every request: kept cheap)."""
        full = self.path(mirror, path)
        try:
            return full if stat.S_ISREG(os.stat(full).st_mode) else None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise cache_error(str(full), exc) from None

    def create(self, mirror: str, path: str) -> TempFile:
        """Start writing ``path``; nothing is visible until the result is committed."""
        return TempFile(self.path(mirror, path))

    def write(self, mirror: str, path: str, data: bytes, mtime: float | None = None) -> Path:
        """Store ``data`` as ``path`` in one atomic step."""
        tmp = self.create(mirror, path)
        try:
            if len(data) > offload.SMALL:  # a 50 MB index: not on the hub
                offload.run(tmp.write, data)
            else:
                tmp.write(data)
        except BaseException:
            tmp.discard()
            tmp.close_reader()
            raise
        tmp.close_reader()
        return tmp.commit(mtime)

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit on the cache's filesystem (checked before a
        download starts, so apt gets a 507 rather than a transfer cut when it fills)."""
        try:
            return shutil.disk_usage(self.root).free >= size
        except OSError:
            return True  # cannot tell: let the write itself decide

    def sweep_temporaries(self) -> int:
        """Remove what a killed process left half-written; returns how many."""
        count = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    try:
                        os.unlink(os.path.join(dirpath, name))
                        count += 1
                    except OSError:
                        pass
        if count:
            log.info("removed %d partial files left in %s", count, self.root)
        return count

    def walk(self, pattern: str) -> Iterator[tuple[str, str, Path]]:
        """``(mirror, path, file)`` for cached files whose path matches a glob."""
        for mirror_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for file in sorted(mirror_dir.glob(pattern)):
                if file.is_file() and not file.name.startswith(TMP_PREFIX):
                    yield mirror_dir.name, file.relative_to(mirror_dir).as_posix(), file
