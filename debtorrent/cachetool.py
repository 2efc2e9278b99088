"""The work behind ``debtorrent cache verify``, ``cache clear`` and ``import``.

These act on the cache directory itself, so they work whether or not a daemon runs, and
they are safe beside a running one:

- every file of the cache is immutable once renamed into place (a daemon writes under a
  ``.dt-tmp-`` name and renames when verified), so removing one is what the daemon
  already copes with: it notices at the next request for it, at its next expiry pass,
  or at once when the command asks it to rescan (``POST /rescan``, see
  :mod:`debtorrent.commands`); files being written (temporary names) are never touched;
- a file is added the daemon's way too: written or linked under a temporary name in its
  final directory, then renamed, so a daemon (or apt) never sees half a file;
- what "verified" means comes from the indexes saved in the cache (the same
  :class:`~debtorrent.archive.indexes.Archive` the daemon loads at start, with the same
  signature checks): only indexes whose Release verified count, as only those become
  swarms in the daemon.

Run as root on a cache that belongs to another user (the system service's), every file
and directory the commands create is given to that user, and a file is copied rather
than hard-linked when linking would share an inode with a file of someone else.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

from debtorrent.archive.indexes import Archive, LoadedIndex
from debtorrent.archive.signature import Verifier
from debtorrent.cache import TMP_PREFIX, Cache
from debtorrent.errors import CacheError

__all__ = ["CacheTool", "ClearReport", "ImportReport", "VerifyReport", "looks_like_cache"]

log = logging.getLogger(__name__)

PACKAGE_SUFFIXES = (".deb", ".udeb")
READ_SIZE = 1 << 20
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]_")

Say = Callable[[str], None]


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    good: int = 0
    bad: list[str] = field(default_factory=list)
    unlisted: int = 0
    other: int = 0


@dataclass
class ClearReport:
    removed: int = 0
    bytes: int = 0
    kept: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    seen: int = 0
    linked: int = 0
    copied: int = 0
    bytes: int = 0
    already: int = 0
    unlisted: int = 0
    bad: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _sha256(path: str) -> tuple[bytes, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.digest(), size


def looks_like_cache(root: Path) -> str | None:
    """None if ``root`` looks like a debtorrent cache, else what says it is not one.

    The commands that remove files refuse a directory a mistyped ``cache-dir`` could
    name (a home directory, apt's own archives): a debtorrent cache holds only one
    directory per mirror, named like a host.
    """
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            continue
        if not entry.is_dir(follow_symlinks=False):
            return f"it holds the file {entry.name!r}, and a debtorrent cache holds none"
        if not set(entry.name) <= _HOST_CHARS:
            return f"it holds {entry.name!r}, which is not a mirror's host name"
    return None


class CacheTool:
    """Verify, clear and import, on one cache directory."""

    def __init__(self, cache: Cache, verifier: Verifier | None = None, say: Say = print) -> None:
        self.cache = cache
        self.say = say
        self.archive = Archive(cache, verifier)
        try:
            owner = os.stat(cache.root)
            self._owner: tuple[int, int] | None = (owner.st_uid, owner.st_gid)
        except OSError:
            self._owner = None
        if os.geteuid() != 0 or (self._owner and self._owner[0] == 0):
            self._owner = None  # nothing to hand over: the files are ours already

    def load_indexes(self) -> int:
        """Load the Releases and Packages saved in the cache (as the daemon does); the
        number of trusted indexes."""
        self.archive.load_saved(save=False)
        return len(self._trusted())

    def _trusted(self) -> list[LoadedIndex]:
        return [loaded for loaded in list(self.archive.loaded.values()) if loaded.trusted]

    # --- walking ---------------------------------------------------------------------

    def _files(self) -> Iterator[tuple[str, str, str]]:
        """``(mirror, path, full path)`` of every complete file, sorted."""
        root = str(self.cache.root)
        for mirror in sorted(os.listdir(root)):
            base = os.path.join(root, mirror)
            if not os.path.isdir(base) or os.path.islink(base):
                continue
            for dirpath, dirs, names in os.walk(base):
                dirs.sort()
                for name in sorted(names):
                    if name.startswith(TMP_PREFIX):
                        continue
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, base).replace(os.sep, "/")
                    yield mirror, rel, full

    # --- verify ------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Every package against its index SHA256, every by-hash file against its name."""
        report = VerifyReport()
        for mirror, path, full in self._files():
            expected = self._expected(mirror, path)
            if expected is None:
                if path.endswith(PACKAGE_SUFFIXES):
                    report.unlisted += 1
                else:
                    report.other += 1
                continue
            size, digest = expected
            try:
                found, length = _sha256(full)
            except FileNotFoundError:
                continue  # removed meanwhile (a daemon's expiry)
            except OSError as exc:
                report.bad.append(f"{mirror}/{path}: cannot be read ({exc.strerror or exc})")
                continue
            report.checked += 1
            report.bytes += length
            if length == size and found == digest:
                report.good += 1
                continue
            why = f"{length} bytes, index says {size}" if length != size else "SHA256 differs"
            if self._remove(full):
                report.bad.append(f"{mirror}/{path}: {why}; removed")
            else:
                report.bad.append(f"{mirror}/{path}: {why}; could not be removed")
        return report

    def _expected(self, mirror: str, path: str) -> tuple[int, bytes] | None:
        if path.endswith(PACKAGE_SUFFIXES):
            match = self.archive.lookup(mirror, path)
            if match is None or not match.loaded.trusted:
                return None
            return (match.entry.size, match.entry.sha256)
        parts = path.split("/")
        if len(parts) > 2 and parts[-3:-1] == ["by-hash", "SHA256"]:
            try:
                digest = bytes.fromhex(parts[-1])
            except ValueError:
                return None
            if len(digest) == 32:
                return (os.stat(self.cache.path(mirror, path)).st_size, digest)
        return None

    def _remove(self, full: str) -> bool:
        try:
            os.unlink(full)
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("cannot remove %s: %s", full, exc.strerror or exc)
            return False
        return True

    # --- clear -------------------------------------------------------------------------

    def clear(self, everything: bool) -> ClearReport:
        """Remove cached files; the saved indexes stay unless ``everything``."""
        report = ClearReport()
        for mirror, path, full in self._files():
            if not everything and _is_saved_index(path):
                report.kept += 1
                continue
            try:
                size = os.lstat(full).st_size
            except OSError:
                continue
            if self._remove(full):
                report.removed += 1
                report.bytes += size
            else:
                report.failed.append(f"{mirror}/{path}")
        self._prune(self.cache.root)
        return report

    def _prune(self, root: Path) -> None:
        """Remove the directories left empty (bottom-up), never the cache itself."""
        for dirpath, _dirs, _names in os.walk(root, topdown=False):
            if dirpath != str(root):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass  # not empty (a daemon writes there now), or not ours

    # --- import -------------------------------------------------------------------------

    def import_paths(self, paths: Iterable[str]) -> ImportReport:
        """Seed the packages under ``paths`` (files or directories, walked)."""
        report = ImportReport()
        by_digest: dict[bytes, list[tuple[LoadedIndex, int]]] = {}
        by_name: dict[str, int] = {}
        sizes: set[int] = set()
        for loaded in self._trusted():
            index = loaded.index
            for i, filename in enumerate(index.filenames):
                digest = bytes(index.digests[i * 32 : i * 32 + 32])
                by_digest.setdefault(digest, []).append((loaded, i))
                by_name[filename.rsplit("/", 1)[-1]] = index.sizes[i]
                sizes.add(index.sizes[i])
        for source in _candidates(paths, self.say):
            report.seen += 1
            try:
                size = os.stat(source).st_size
                places = by_digest.get(_sha256(source)[0]) if size in sizes else None
            except OSError as exc:
                report.failed.append(f"{source}: {exc.strerror or exc}")
                continue
            if not places:
                name = os.path.basename(source)
                if by_name.get(name) == size:
                    report.bad.append(f"{source}: SHA256 differs from the index")
                else:
                    report.unlisted += 1
                continue
            done: set[Path] = set()
            for loaded, i in places:
                root = loaded.release.root
                filename = loaded.index.filenames[i]
                target = self.cache.path(loaded.mirror, f"{root}/{filename}" if root else filename)
                if target in done:
                    continue
                done.add(target)
                self._place(source, target, size, loaded, report)
        return report

    def _place(
        self, source: str, target: Path, size: int, loaded: LoadedIndex, report: ImportReport
    ) -> None:
        try:
            if target.is_file() and target.stat().st_size == size:
                report.already += 1
                return
            self._makedirs(target.parent)
            how = self._link_or_copy(source, target, loaded)
        except OSError as exc:
            report.failed.append(f"{source} -> {target}: {exc.strerror or exc}")
            return
        if how == "linked":
            report.linked += 1
        else:
            report.copied += 1
        report.bytes += size

    def _makedirs(self, directory: Path) -> None:
        missing = []
        probe = directory
        while not probe.exists() and probe != self.cache.root:
            missing.append(probe)
            probe = probe.parent
        for made in reversed(missing):
            made.mkdir(mode=0o755, exist_ok=True)
            self._hand_over(made)

    def _hand_over(self, path: Path | str) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner)

    def _link_or_copy(self, source: str, target: Path, loaded: LoadedIndex) -> str:
        """Put ``source`` at ``target`` atomically: a hard link where it shares nothing
        with another user, else a copy dated like its index."""
        tmp = target.parent / f"{TMP_PREFIX}import-{os.getpid()}-{target.name}"
        src = os.stat(source)
        owner_ok = self._owner is None or (src.st_uid, src.st_gid) == self._owner
        if owner_ok and stat.S_IMODE(src.st_mode) & 0o044 == 0o044:
            _unlink_quietly(tmp)  # left by an import that was killed
            try:
                os.link(source, tmp)
                os.replace(tmp, target)
                return "linked"
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                    raise
                _unlink_quietly(tmp)
        fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}import-", dir=target.parent)
        try:
            with open(source, "rb") as src_file, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src_file, out, READ_SIZE)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(name, 0o644)
            date = _release_date(loaded)
            if date:
                os.utime(name, (date, date))
            self._hand_over(name)
            os.replace(name, target)
        except BaseException:
            _unlink_quietly(name)
            raise
        return "copied"


def _is_saved_index(path: str) -> bool:
    """What the daemon loads at start: Release, InRelease and uncompressed Packages."""
    if "dists/" not in path or "/by-hash/" in path:
        return False
    name = path.rsplit("/", 1)[-1]
    return name in ("Release", "InRelease", "Release.gpg") or (
        name == "Packages" and "/binary-" in path
    )


def _release_date(loaded: LoadedIndex) -> float | None:
    """The index's date, for a copied file: older than any date a daemon gives a stream
    (see cache.AttemptDates), so no partial download can claim to be this copy."""
    try:
        return parsedate_to_datetime(loaded.release.date).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _unlink_quietly(path: Path | str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _candidates(paths: Iterable[str], say: Say) -> Iterator[str]:
    """The ``.deb``/``.udeb`` files named or found under ``paths`` (no symlinked
    directories followed: an apt-cacher-ng tree can hold loops)."""
    for path in paths:
        if os.path.isfile(path):
            yield path
        elif os.path.isdir(path):
            for dirpath, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    full = os.path.join(dirpath, name)
                    if name.endswith(PACKAGE_SUFFIXES) and os.path.isfile(full):
                        yield full
        else:
            say(f"{path}: no such file or directory")


def require_writable(cache_root: Path) -> None:
    """Raise :class:`CacheError` when the cache cannot be changed by this user."""
    if not os.access(cache_root, os.W_OK | os.X_OK):
        raise CacheError(f"cache directory {cache_root} is not writable by this user")
