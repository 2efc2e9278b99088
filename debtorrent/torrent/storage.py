"""Where a swarm's bytes are kept: package files in the cache, or a v1 torrent's files.

Both stores answer the same three questions for the swarm: write a block of a piece,
read a block of a piece, and whether a whole file is there. :class:`PackageStore`
keeps each file being downloaded under a temporary cache name and renames it to the
path apt knows only after the whole-file SHA256 check, so the cache never shows a
partial ``.deb``. :class:`TorrentStore` writes a standard torrent's files in place, as
every BitTorrent client does; it exists to test the wire protocol against libtorrent.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from debtorrent import offload
from debtorrent.cache import TempFile, cache_error
from debtorrent.errors import CacheError
from debtorrent.torrent.layout import Layout

__all__ = ["PackageStore", "TorrentStore"]

log = logging.getLogger(__name__)

_OPEN_FILES = 64


class _FdCache:
    """A few read-only descriptors of complete files, so uploads don't reopen per block."""

    def __init__(self) -> None:
        self._fds: OrderedDict[Path, int] = OrderedDict()

    def get(self, path: Path) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self._fds) >= _OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        return fd

    def forget(self, path: Path) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _hash_spans(source: int | Path, spans: list[tuple[int, int]]) -> list[bytes]:
    """SHA256 of each ``(offset, length)`` span of a file (run in the threadpool):
    ``source`` is a descriptor the caller keeps open, or a path opened here."""
    fd = source if isinstance(source, int) else os.open(source, os.O_RDONLY)
    try:
        digests = []
        for offset, length in spans:
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise OSError(errno.EIO, "shorter than its pieces")
            digests.append(hashlib.sha256(data).digest())
        return digests
    finally:
        if not isinstance(source, int):
            os.close(fd)


def _hash_fd(fd: int, size: int) -> bytes:
    """SHA256 of the first ``size`` bytes behind ``fd`` (run in the threadpool)."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.digest()


class PackageStore:
    """Files of a layout-1 swarm: complete ones in the cache, partial ones beside them.

    ``final_path(file_index)`` names where apt finds the file in the cache.
    """

    def __init__(self, layout: Layout, final_path: Callable[[int], Path]) -> None:
        self.layout = layout
        self.final_path = final_path
        self._partial: dict[int, TempFile] = {}
        self._fds = _FdCache()

    def has_file(self, file_index: int) -> bool:
        """Whether the complete file is in the cache (size checked, content trusted:
        it was renamed there only after verification)."""
        path = self.final_path(file_index)
        try:
            return path.stat().st_size == self.layout.file_size(file_index)
        except OSError:
            return False

    def _locate(self, piece: int, begin: int) -> tuple[int, int]:
        file_index = self.layout.piece_file(piece)
        offset = self.layout.piece_offset(piece) - self.layout.file_offset(file_index) + begin
        return file_index, offset

    def write(self, piece: int, begin: int, data: bytes) -> None:
        """Store a block of a file being downloaded."""
        file_index, offset = self._locate(piece, begin)
        tmp = self._partial.get(file_index)
        if tmp is None:
            # beside the final place; a kill leaves it to the start-up sweep
            tmp = self._partial[file_index] = TempFile(self.final_path(file_index))
        view = memoryview(data)
        try:
            while view:  # a filling disk writes part of a block before it says ENOSPC
                done = os.pwrite(tmp.fd, view, offset)
                if done <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise cache_error(tmp.final.name, exc) from None

    def partial(self, file_index: int) -> bool:
        """Whether the file is being written (it is not in the cache yet)."""
        return file_index in self._partial

    def read(self, piece: int, begin: int, length: int) -> bytes:
        """A block of a piece we have, from the complete file or the partial one."""
        file_index, offset = self._locate(piece, begin)
        tmp = self._partial.get(file_index)
        try:
            if tmp is not None:
                data = os.pread(tmp.read_fd, length, offset)
            else:
                data = os.pread(self._fds.get(self.final_path(file_index)), length, offset)
        except OSError as exc:
            raise cache_error(self.final_path(file_index).name, exc) from None
        if len(data) != length:
            raise CacheError(f"{self.final_path(file_index).name}: shorter than its pieces")
        return data

    def file_sha256(self, file_index: int) -> bytes:
        """SHA256 of the partial (or complete) file, for the whole-file check; read and
        hashed off the hub (a 1 GB file takes a second)."""
        tmp = self._partial.get(file_index)
        try:
            if tmp is not None:
                return offload.run(_hash_fd, tmp.read_fd, self.layout.file_size(file_index))
            return offload.sha256_file(self.final_path(file_index))
        except OSError as exc:
            raise cache_error(self.final_path(file_index).name, exc) from None

    def piece_sha256s(self, pieces: range) -> list[bytes]:
        """SHA256 of each of ``pieces`` (all of one file, all held), off the hub."""
        file_index = self.layout.piece_file(pieces.start)
        base = self.layout.file_offset(file_index)
        spans = [(self.layout.piece_offset(p) - base, self.layout.piece_size(p)) for p in pieces]
        tmp = self._partial.get(file_index)
        try:
            source = tmp.read_fd if tmp is not None else self.final_path(file_index)
            return offload.run(_hash_spans, source, spans)
        except OSError as exc:
            raise cache_error(self.final_path(file_index).name, exc) from None

    def commit(self, file_index: int, mtime: float | None = None) -> Path:
        """Rename a verified file into the cache; from now on apt can be served it.

        The flush to disk happens first, off the hub, while readers still find the
        partial file; only then is it renamed, without a yield in between.
        """
        tmp = self._partial[file_index]
        tmp.sync()
        if self._partial.get(file_index) is not tmp:
            raise CacheError(f"{tmp.final.name}: dropped while being committed")
        del self._partial[file_index]
        tmp.close_reader()
        self._fds.forget(self.final_path(file_index))
        return tmp.commit(mtime)

    def discard(self, file_index: int) -> None:
        """Drop a partial file (failed verification, or the download was abandoned)."""
        tmp = self._partial.pop(file_index, None)
        if tmp is not None:
            tmp.close_reader()
            tmp.discard()

    def close(self) -> None:
        """Drop partial files and descriptors (at shutdown; partial data is not kept)."""
        for file_index in list(self._partial):
            self.discard(file_index)
        self._fds.close()


class TorrentStore:
    """A v1 torrent's files under one directory, written in place."""

    def __init__(self, layout: Layout, root: Path, paths: Sequence[Sequence[str]]) -> None:
        self.layout = layout
        self.paths = [root.joinpath(*parts) for parts in paths]
        self._fds: dict[int, int] = {}
        self.existing: set[int] = set()  # files already there at their full size
        for index, path in enumerate(self.paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size != layout.file_size(index):
                os.ftruncate(fd, layout.file_size(index))
            else:
                self.existing.add(index)
            self._fds[index] = fd

    def has_file(self, file_index: int) -> bool:
        return False  # v1 completeness is per piece (see :meth:`piece`), never assumed

    def write(self, piece: int, begin: int, data: bytes) -> None:
        view = memoryview(data)
        for segment in self._segments(piece, begin, len(data)):
            os.pwrite(self._fds[segment.file_index], view[: segment.length], segment.offset)
            view = view[segment.length :]

    def read(self, piece: int, begin: int, length: int) -> bytes:
        return b"".join(
            os.pread(self._fds[s.file_index], s.length, s.offset)
            for s in self._segments(piece, begin, length)
        )

    def piece(self, piece: int) -> bytes:
        """The whole piece, for hashing."""
        return self.read(piece, 0, self.layout.piece_size(piece))

    def _segments(self, piece: int, begin: int, length: int):
        skip = begin
        for segment in self.layout.piece_files(piece):
            if skip >= segment.length:
                skip -= segment.length
                continue
            take = min(segment.length - skip, length)
            yield type(segment)(segment.file_index, segment.offset + skip, take)
            length -= take
            skip = 0
            if length <= 0:
                break

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
