"""The files of a suite swarm (layout 2): every loaded index of one suite, by SHA256.

A suite swarm's files are those of every loaded ``Packages`` index of its suite and
component (each architecture, the current and recently replaced versions),
deduplicated by SHA256: an ``Architecture: all`` package listed by the amd64 and the
arm64 index, or a package unchanged between two index versions, is one file. Files are
numbered densely in the order they first appear and never renumbered (a file no index
lists any more is only marked so), so the piece numbers the picker and the store use
stay valid while indexes come and go. Those numbers never leave the daemon: on the wire
a file is its SHA256 (see docs/layout2.md).

Pure bookkeeping: no I/O, no gevent. Memory per file: its 32-byte digest, two small
integers, a reference to the index's own file name string and one dictionary entry
keyed by the digest's first 8 bytes (bookworm main: 63,000 files).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from debtorrent.torrent.layout import LAYOUT1_PIECE_LENGTH, Layout

__all__ = ["PREFIX", "FileCatalog", "Place", "prefix_of"]

PREFIX = 8  #: bytes of a SHA256 that name a file in availability messages
PAUSE_EVERY = 2048  #: entries of an index taken between two pauses
MAX_PLACES = 8  #: other places kept per file (an index listing one file many times: no)


def prefix_of(digest: bytes) -> int:
    """The integer key of a digest's first :data:`PREFIX` bytes."""
    return int.from_bytes(digest[:PREFIX], "big")


class Place(NamedTuple):
    """Where an index lists a file: a mirror, the archive root on it, the Filename."""

    mirror: str
    root: str
    filename: str

    @property
    def path(self) -> str:
        """The mirror path (what apt asks for, and where the cache keeps it)."""
        return f"{self.root}/{self.filename}" if self.root else self.filename


class FileCatalog:
    """Files by SHA256, numbered in order of appearance; see the module docstring."""

    def __init__(self, piece_length: int = LAYOUT1_PIECE_LENGTH) -> None:
        self.layout = Layout.file_aligned([], piece_length)
        self._digests = bytearray()
        self._by_prefix: dict[int, int] = {}
        self._collisions: dict[int, list[int]] = {}  # prefix -> every file that has it
        self._origins: list[tuple[str, str]] = []  # interned (mirror, root) pairs
        self._origin_ids: dict[tuple[str, str], int] = {}
        self._origin = array("i")  # file -> its first place's origin
        self._names: list[str] = []  # file -> its first place's Filename
        self._extra: dict[int, list[Place]] = {}  # other places of a file, rarely any
        self._listed = array("i")  # file -> how many loaded indexes list it
        self._indexes: dict[object, array] = {}  # index key -> the files it lists

    def __len__(self) -> int:
        return len(self._names)

    # --- what indexes list ------------------------------------------------------------

    def add_index(
        self,
        key: object,
        mirror: str,
        root: str,
        entries: Iterable[tuple[str, int, bytes]],
        pause: Callable[[], None] | None = None,
    ) -> list[int]:
        """Take the ``(filename, size, sha256)`` entries of an index loaded under *key*.

        Returns the files that are new to the catalog, in order (their pieces follow
        the existing ones). A file already known by its SHA256 gains a place; a key
        added twice is counted once. ``pause()`` is called every :data:`PAUSE_EVERY`
        entries with the catalog consistent (a caller on an event loop lets others run
        there: 63,000 entries take tens of milliseconds).
        """
        if key in self._indexes:
            return []
        origin = self._origin_id(mirror, root)
        listed = array("i")
        new: list[int] = []
        pending: list[int] = []  # sizes of new files not in the layout yet
        for count, (filename, size, digest) in enumerate(entries, 1):
            file = self.find(digest)
            if file is None:
                file = len(self._names)
                self._register(digest)
                self._digests += digest
                self._origin.append(origin)
                self._names.append(filename)
                self._listed.append(0)
                new.append(file)
                pending.append(size)
            elif file < self.layout.num_files and self.layout.file_size(file) != size:
                continue  # the same SHA256 with another size: a broken index, not ours
            elif (self._origin[file], self._names[file]) != (origin, filename):
                self._add_place(file, Place(mirror, root, filename))
            listed.append(file)
            if pause is not None and count % PAUSE_EVERY == 0:
                self.layout.extend(pending)
                pending.clear()
                pause()
        self.layout.extend(pending)
        for file in set(listed):
            self._listed[file] += 1
        self._indexes[key] = listed
        return new

    def _add_place(self, file: int, place: Place) -> None:
        extra = self._extra.setdefault(file, [])
        if len(extra) < MAX_PLACES and place not in extra:
            extra.append(place)

    def remove_index(self, key: object) -> list[int]:
        """Forget an index; returns the files no loaded index lists any more."""
        listed = self._indexes.pop(key, None)
        if listed is None:
            return []
        gone = []
        for file in set(listed):
            self._listed[file] -= 1
            if self._listed[file] == 0:
                gone.append(file)
        return sorted(gone)

    def indexes(self) -> list[object]:
        return list(self._indexes)

    def listed(self, file: int) -> bool:
        """Whether a loaded index lists the file (else it is kept only for numbering)."""
        return self._listed[file] > 0

    def files_of(self, key: object) -> array:
        """The files an index lists (in index order, repeats possible), or none."""
        return self._indexes.get(key, array("i"))

    # --- looking files up ---------------------------------------------------------------

    def find(self, digest: bytes) -> int | None:
        """The file with this SHA256, if any."""
        if len(digest) != 32:
            return None
        key = prefix_of(digest)
        file = self._by_prefix.get(key)
        if file is None:
            return None
        if file >= 0:
            return file if self.sha256(file) == digest else None
        for candidate in self._collisions[key]:
            if self.sha256(candidate) == digest:
                return candidate
        return None

    def by_prefix(self, prefix: bytes) -> int | None:
        """The one file whose SHA256 starts with *prefix* (8 bytes); None when no file
        or several do (a peer's availability then names nothing we can use)."""
        if len(prefix) != PREFIX:
            return None
        file = self._by_prefix.get(prefix_of(prefix))
        return file if file is not None and file >= 0 else None

    def sha256(self, file: int) -> bytes:
        return bytes(self._digests[file * 32 : file * 32 + 32])

    def prefix(self, file: int) -> bytes:
        return bytes(self._digests[file * 32 : file * 32 + PREFIX])

    def places(self, file: int) -> list[Place]:
        """Where the indexes list the file, the first one first (its cache place)."""
        mirror, root = self._origins[self._origin[file]]
        return [Place(mirror, root, self._names[file]), *self._extra.get(file, ())]

    def place(self, file: int) -> Place:
        """The file's first place: where its cached copy is kept."""
        mirror, root = self._origins[self._origin[file]]
        return Place(mirror, root, self._names[file])

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._names)))

    # --- internals ----------------------------------------------------------------------

    def _origin_id(self, mirror: str, root: str) -> int:
        pair = (mirror, root)
        known = self._origin_ids.get(pair)
        if known is None:
            known = self._origin_ids[pair] = len(self._origins)
            self._origins.append(pair)
        return known

    def _register(self, digest: bytes) -> None:
        key = prefix_of(digest)
        file = len(self._names)
        known = self._by_prefix.get(key)
        if known is None:
            self._by_prefix[key] = file
            return
        # two SHA256s share 8 bytes: astronomically rare, but never confuse them
        if known >= 0:
            self._collisions[key] = [known]
            self._by_prefix[key] = -1
        self._collisions[key].append(file)
