"""Torrent metainfo: standard v1 ``.torrent`` files and the derived identity of swarms.

Two kinds of swarm run on the same engine:

- a standard **v1 torrent** (BEP 3), parsed by :func:`parse_torrent` and written by
  :func:`create_torrent`. It is how the wire protocol is checked against libtorrent, so
  the parser is strict: the info hash is the SHA1 of the ``info`` value's bytes exactly
  as received (never re-encoded), and every field that decides where bytes go on disk is
  validated (path components, sizes, piece length, piece count);
- a **suite swarm** (layout 2 of the design, docs/layout2.md), which has no ``.torrent``
  at all: one per (Origin, Codename, component), its info dict derived from those alone
  (:func:`suite_name`, :func:`suite_info_hash`), so every user of a suite meets in one
  swarm whatever the architecture, the index version or the mirror; its files come from
  the indexes each peer has loaded (:class:`~debtorrent.torrent.catalog.FileCatalog`).

Text in a torrent (name, paths, tracker URLs) must be UTF-8; other encodings are refused
rather than guessed, since a guessed name could differ between peers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from debtorrent.errors import BencodeError, MetainfoError
from debtorrent.torrent import bencode
from debtorrent.torrent.layout import BLOCK_SIZE, Layout

__all__ = [
    "LAYOUT2",
    "MAX_PIECE_LENGTH",
    "MIN_PIECE_LENGTH",
    "FileEntry",
    "Metainfo",
    "check_path",
    "create_torrent",
    "keyed_info_hash",
    "load_torrent",
    "parse_torrent",
    "suite_info",
    "suite_info_hash",
    "suite_name",
]

log = logging.getLogger(__name__)

#: Smallest piece length accepted: one block. Smaller pieces cannot be requested whole.
MIN_PIECE_LENGTH = BLOCK_SIZE
#: Largest piece length accepted (mktorrent's maximum); a piece is buffered in memory.
MAX_PIECE_LENGTH = 1 << 28
_SHA1_LEN = 20
_READ_CHUNK = 1 << 20


# --- paths ----------------------------------------------------------------------------------


def _check_component(part: str, where: str) -> None:
    if not part:
        raise MetainfoError(f"{where}: empty path component")
    if part in (".", ".."):
        raise MetainfoError(f"{where}: path component {part!r} not allowed")
    if "/" in part or "\\" in part or "\0" in part:
        raise MetainfoError(f"{where}: path component {part!r} holds '/', '\\' or NUL")


def check_path(parts: Sequence[str], where: str = "path") -> tuple[str, ...]:
    """Refuse a relative path that could leave its directory; return it as a tuple.

    Every component must be non-empty, not ``.`` or ``..``, and free of ``/``, ``\\``
    and NUL: so the joined path is relative, stays below the download directory, and
    means the same on every peer.
    """
    if not parts:
        raise MetainfoError(f"{where}: empty path")
    for part in parts:
        _check_component(part, where)
    return tuple(parts)


# --- v1 torrents ----------------------------------------------------------------------------


class FileEntry(NamedTuple):
    """One file of a torrent: its relative path, as components, and its size."""

    path: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True, eq=False)
class Metainfo:
    """A parsed v1 torrent.

    ``files`` paths are relative to the download directory and, for a multi-file torrent,
    start with the torrent's ``name`` (the directory holding the files), as libtorrent
    and mktorrent lay them out. ``trackers`` are BEP 12 tiers (a lone ``announce`` becomes
    one tier of one); ``web_seeds`` are BEP 19 ``url-list`` URLs.
    """

    info_hash: bytes
    info_bytes: bytes
    name: str
    files: tuple[FileEntry, ...]
    piece_length: int
    pieces: bytes
    trackers: tuple[tuple[str, ...], ...]
    web_seeds: tuple[str, ...]
    private: bool
    multi_file: bool
    layout: Layout

    @property
    def num_pieces(self) -> int:
        return self.layout.num_pieces

    @property
    def total_size(self) -> int:
        return self.layout.total_size

    def piece_hash(self, piece: int) -> bytes:
        """The SHA1 the piece must match."""
        if not 0 <= piece < self.layout.num_pieces:
            raise IndexError(f"piece {piece} out of range")
        return self.pieces[piece * _SHA1_LEN : (piece + 1) * _SHA1_LEN]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, bytes):
        raise MetainfoError(f"{where} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"{where} is not UTF-8") from None


def _size(value: Any, where: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise MetainfoError(f"{where} is not a non-negative integer")
    return value


def _check_piece_length(piece_length: Any) -> int:
    if not isinstance(piece_length, int) or isinstance(piece_length, bool):
        raise MetainfoError("piece length is not an integer")
    if (
        piece_length < MIN_PIECE_LENGTH
        or piece_length > MAX_PIECE_LENGTH
        or piece_length & (piece_length - 1)
    ):
        raise MetainfoError(
            f"piece length {piece_length} is not a power of two between "
            f"{MIN_PIECE_LENGTH} and {MAX_PIECE_LENGTH}"
        )
    return piece_length


def _parse_files(info: dict[bytes, Any], name: str) -> tuple[tuple[FileEntry, ...], bool]:
    if b"length" in info:
        if b"files" in info:
            raise MetainfoError("info has both 'length' and 'files'")
        return (FileEntry((name,), _size(info[b"length"], "length")),), False
    raw_files = info.get(b"files")
    if not isinstance(raw_files, list) or not raw_files:
        raise MetainfoError("info has neither 'length' nor a non-empty 'files' list")
    files: list[FileEntry] = []
    seen: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for n, entry in enumerate(raw_files):
        where = f"files[{n}]"
        if not isinstance(entry, dict):
            raise MetainfoError(f"{where} is not a dict")
        size = _size(entry.get(b"length"), f"{where}.length")
        raw_path = entry.get(b"path")
        if not isinstance(raw_path, list):
            raise MetainfoError(f"{where}.path is not a list")
        path = check_path([_text(p, f"{where}.path") for p in raw_path], f"{where}.path")
        full = (name, *path)
        # Two entries on one path, or a file where another needs a directory, would
        # make two pieces of the torrent fight over the same bytes on disk.
        if full in seen or full in dirs:
            raise MetainfoError(f"{where}: path {'/'.join(path)!r} used twice")
        for i in range(1, len(full)):
            dirs.add(full[:i])
        seen.add(full)
        files.append(FileEntry(full, size))
    if seen & dirs:
        clash = min(seen & dirs)
        raise MetainfoError(f"path {'/'.join(clash)!r} is both a file and a directory")
    return tuple(files), True


def _parse_trackers(meta: dict[bytes, Any]) -> tuple[tuple[str, ...], ...]:
    """BEP 12: ``announce-list`` tiers win over ``announce``; empty tiers are dropped."""
    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    if b"announce-list" in meta:
        raw = meta[b"announce-list"]
        if not isinstance(raw, list):
            raise MetainfoError("announce-list is not a list")
        for n, tier in enumerate(raw):
            if not isinstance(tier, list):
                raise MetainfoError(f"announce-list[{n}] is not a list")
            urls = []
            for url in (_text(u, f"announce-list[{n}]") for u in tier):
                if url and url not in seen:
                    seen.add(url)
                    urls.append(url)
            if urls:
                tiers.append(tuple(urls))
    if not tiers and b"announce" in meta:
        url = _text(meta[b"announce"], "announce")
        if url:
            tiers.append((url,))
    return tuple(tiers)


def _parse_web_seeds(meta: dict[bytes, Any]) -> tuple[str, ...]:
    """BEP 19: ``url-list`` is one URL or a list of them."""
    raw = meta.get(b"url-list", [])
    if isinstance(raw, bytes):
        raw = [raw]
    if not isinstance(raw, list):
        raise MetainfoError("url-list is neither a string nor a list")
    urls = [_text(u, "url-list") for u in raw]
    return tuple(dict.fromkeys(u for u in urls if u))


def parse_torrent(data: bytes) -> Metainfo:
    """Parse and validate a v1 ``.torrent``; raise :class:`MetainfoError` if malformed."""
    try:
        meta, spans = bencode.decode_with_spans(data)
    except BencodeError as exc:
        raise MetainfoError(f"not a valid bencoded torrent: {exc}") from exc
    info = meta.get(b"info")
    if not isinstance(info, dict):
        raise MetainfoError("no 'info' dict")
    info_bytes = bytes(data[slice(*spans[b"info"])])

    name = _text(info.get(b"name"), "name")
    _check_component(name, "name")
    piece_length = _check_piece_length(info.get(b"piece length"))
    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes) or len(pieces) % _SHA1_LEN:
        raise MetainfoError("'pieces' is not a string of 20-byte SHA1 hashes")
    files, multi = _parse_files(info, name)
    layout = Layout.v1((f.size for f in files), piece_length)
    if layout.total_size == 0:
        raise MetainfoError("torrent holds no data")
    if len(pieces) != _SHA1_LEN * layout.num_pieces:
        raise MetainfoError(
            f"'pieces' holds {len(pieces) // _SHA1_LEN} hashes, the files need {layout.num_pieces}"
        )
    private = info.get(b"private", 0)
    return Metainfo(
        info_hash=hashlib.sha1(info_bytes).digest(),
        info_bytes=info_bytes,
        name=name,
        files=files,
        piece_length=piece_length,
        pieces=pieces,
        trackers=_parse_trackers(meta),
        web_seeds=_parse_web_seeds(meta),
        private=private == 1,
        multi_file=multi,
        layout=layout,
    )


def load_torrent(path: str | os.PathLike[str]) -> Metainfo:
    """Read and parse a ``.torrent`` file."""
    with open(path, "rb") as f:
        return parse_torrent(f.read())


def _hash_pieces(paths: Iterable[Path], piece_length: int) -> bytes:
    """SHA1 of every piece of the concatenated files, streamed."""
    digests: list[bytes] = []
    current = hashlib.sha1()
    filled = 0
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                view = memoryview(chunk)
                while view:
                    take = min(len(view), piece_length - filled)
                    current.update(view[:take])
                    filled += take
                    view = view[take:]
                    if filled == piece_length:
                        digests.append(current.digest())
                        current = hashlib.sha1()
                        filled = 0
    if filled:
        digests.append(current.digest())
    return b"".join(digests)


def create_torrent(
    source: str | os.PathLike[str],
    piece_length: int,
    *,
    files: Sequence[str | os.PathLike[str]] | None = None,
    name: str | None = None,
    trackers: Sequence[Sequence[str]] = (),
    web_seeds: Sequence[str] = (),
    private: bool = False,
    comment: str | None = None,
    created_by: str | None = None,
    creation_date: int | None = None,
) -> bytes:
    """Make a v1 ``.torrent`` of the regular file or directory *source*; return its bytes.

    A file gives a single-file torrent. A directory gives a multi-file torrent whose
    files are *files* (paths relative to *source*, in that order) or, by default, every
    regular file below it sorted by path, so the result is reproducible. *name* defaults
    to the base name of *source*. *trackers* are BEP 12 tiers (the first URL also goes in
    ``announce``); *web_seeds* become ``url-list``. Nothing time-dependent is written
    unless *creation_date* is given.
    """
    _check_piece_length(piece_length)
    root = Path(source)
    name = root.name if name is None else name
    _check_component(name, "name")
    info: dict[str, Any] = {"name": name, "piece length": piece_length}
    if root.is_file():
        paths = [root]
        info["length"] = root.stat().st_size
    elif root.is_dir():
        if files is None:
            rels = sorted(
                (p.relative_to(root) for p in root.rglob("*") if p.is_file()),
                key=lambda p: p.parts,
            )
        else:
            rels = [Path(p) for p in files]
        if not rels:
            raise MetainfoError(f"{root}: no files")
        entries = []
        for rel in rels:
            parts = check_path(PurePosixPath(rel.as_posix()).parts, f"{rel}")
            entries.append({"length": (root / rel).stat().st_size, "path": list(parts)})
        paths = [root / rel for rel in rels]
        info["files"] = entries
    else:
        raise MetainfoError(f"{root}: not a regular file or directory")
    info["pieces"] = _hash_pieces(paths, piece_length)
    if not info["pieces"]:
        raise MetainfoError(f"{root}: no data")
    if private:
        info["private"] = 1

    meta: dict[str, Any] = {"info": info}
    tiers = [list(t) for t in trackers if t]
    if tiers:
        meta["announce"] = tiers[0][0]
        meta["announce-list"] = tiers
    if web_seeds:
        meta["url-list"] = list(web_seeds)
    if comment is not None:
        meta["comment"] = comment
    if created_by is not None:
        meta["created by"] = created_by
    if creation_date is not None:
        meta["creation date"] = creation_date
    return bencode.encode(meta)


# --- suite swarms (layout 2) -----------------------------------------------------------------

LAYOUT2 = 2


def _label(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MetainfoError(f"swarm {what} must be a non-empty string")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise MetainfoError(f"swarm {what} {value!r} holds a control character")
    return value


def suite_name(origin: str, codename_or_suite: str, component: str) -> str:
    """A suite swarm's name: ``<Origin>_<Codename>_<component>``, e.g.
    ``Debian_bookworm-security_main``; ``_`` inside a part becomes ``-`` and so does
    ``/`` (``updates/main``), so the three parts can be read back."""
    parts = (
        _label(origin, "origin"),
        _label(codename_or_suite, "codename"),
        _label(component, "component"),
    )
    return "_".join(p.replace("_", "-").replace("/", "-") for p in parts)


def suite_info(name: str) -> dict[bytes, Any]:
    """The info dict of a suite swarm: its name and layout, nothing that changes when
    an index is updated, and no architecture or mirror (docs/layout2.md)."""
    return {b"layout": LAYOUT2, b"name": _label(name, "name").encode("utf-8")}


def suite_info_hash(name: str) -> bytes:
    """``SHA1(bencode(suite_info(name)))``: the 20-byte info hash peers and trackers
    see, the same before and after every ``apt update``."""
    return hashlib.sha1(bencode.encode(suite_info(name))).digest()


# --- swarm keys ---------------------------------------------------------------------------------


def keyed_info_hash(info_hash: bytes, swarm_key: bytes | None) -> bytes:
    """The info hash a swarm uses on the wire: unchanged without a swarm key, else
    ``HMAC-SHA256(key, "debtorrent info hash" NUL info_hash)`` cut to 20 bytes.

    Every place a swarm's hash is seen (handshakes, trackers, the DHT, LSD) sees this
    one, so machines without the key (see :mod:`debtorrent.torrent.swarmkey`) never
    meet machines with it, and the hash reveals nothing of the index behind it. It is
    applied to whatever identity a swarm has (a Packages index, a v1 torrent).
    """
    if swarm_key is None:
        return info_hash
    mac = hmac.new(swarm_key, b"debtorrent info hash\0" + info_hash, hashlib.sha256)
    return mac.digest()[:_SHA1_LEN]
