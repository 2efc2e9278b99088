"""Packages indexes: decompression and a fast scan for Filename, Size and SHA256.

python-debian's deb822 parser takes ~8 s on bookworm's 50 MB main index (measured
here), too slow for start-up; only three fields are needed, so a byte-level scanner
reads them (~0.3 s) and a test cross-checks it against python-debian. The result is a
compact :class:`PackageIndex`: parallel lists instead of one object per package, since
three such indexes (main, updates, security) must fit in well under 150 MB.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import lzma
import re
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from debtorrent.errors import BadIndexError

__all__ = ["COMPRESSIONS", "PackageEntry", "PackageIndex", "decompress", "scan_packages"]

log = logging.getLogger(__name__)

COMPRESSIONS = ("", ".gz", ".xz", ".bz2", ".lz4", ".zst")
_RUN = re.compile(
    rb"^Filename:[ \t]*([^\n]*)\nSize:[ \t]*([^\n]*)\n(?:MD5sum:[^\n]*\n)?"
    rb"(?:SHA1:[^\n]*\n)?SHA256:[ \t]*([^\n]*)$",
    re.M,
)
_UNSAFE_NAME = re.compile(r"(?:^|/)\.{0,2}(?:/|$)|[\\\x00-\x1f\x7f]")
_MAX_SIZE = 1 << 50  # a file size no index can mean; also keeps it in array("q")
_MAX_UNCOMPRESSED = 1 << 31  # 2 GiB: far beyond any real index, stops a decompression bomb


@dataclass(frozen=True)
class PackageEntry:
    """One file of an index: where it is below the archive root, its size and hash."""

    filename: str
    size: int
    sha256: bytes  # 32 raw bytes


@dataclass
class PackageIndex:
    """The files one uncompressed ``Packages`` lists, in index order, unique by name.

    ``sha256`` is the hash of the uncompressed index itself, the swarm's identity.
    """

    sha256: str
    filenames: list[str] = field(default_factory=list)
    sizes: array = field(default_factory=lambda: array("q"))
    digests: bytearray = field(default_factory=bytearray)
    positions: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.filenames)

    def lookup(self, filename: str) -> PackageEntry | None:
        """The entry for a ``Filename``, if this index lists it."""
        pos = self.positions.get(filename)
        return None if pos is None else self.entry(pos)

    def entry(self, pos: int) -> PackageEntry:
        """The entry at index position ``pos``."""
        return PackageEntry(
            self.filenames[pos], self.sizes[pos], bytes(self.digests[pos * 32 : pos * 32 + 32])
        )

    def __iter__(self) -> Iterator[PackageEntry]:
        return (self.entry(pos) for pos in range(len(self.filenames)))

    @property
    def total_size(self) -> int:
        """Bytes of all files the index lists."""
        return sum(self.sizes)


def decompress(data: bytes, suffix: str, limit: int | None = None) -> bytes | bytearray:
    """Uncompress an index by its file-name suffix (``""`` for none).

    Output beyond ``limit`` bytes is refused rather than produced: an index is checked
    against its Release before it is uncompressed, but the Release itself is only as
    trustworthy as the mirror until apt has checked its signature.
    """
    limit = _MAX_UNCOMPRESSED if limit is None else limit
    try:
        if suffix == "":
            out = data
        elif suffix == ".gz":
            out = _gunzip(data, limit)
        elif suffix == ".xz":
            out = _whole(lzma.LZMADecompressor(), data, limit)
        elif suffix == ".bz2":
            out = _whole(bz2.BZ2Decompressor(), data, limit)
        elif suffix == ".lz4":
            import lz4.frame

            with lz4.frame.LZ4FrameDecompressor() as decompressor:
                out = decompressor.decompress(data, max_length=limit + 1)
                if len(out) <= limit and not decompressor.eof:
                    raise BadIndexError("compressed index is truncated")
        elif suffix == ".zst":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
            out = reader.read(limit + 1)
            if len(out) <= limit:  # bounded now; a second pass tells a cut stream
                _whole(zstandard.ZstdDecompressor().decompressobj(), data, limit)
        else:
            raise BadIndexError(f"unknown index compression {suffix!r}")
    except BadIndexError:
        raise
    except Exception as exc:  # each library raises its own error types
        raise BadIndexError(f"cannot uncompress {suffix or 'plain'} index: {exc}") from None
    if len(out) > limit:
        raise BadIndexError(f"{suffix} index uncompresses to more than {limit} bytes")
    return out


OUT_CHUNK = 1 << 20  # bytes produced per decompression call (see _whole)
_ZLIB = type(zlib.decompressobj())


def _whole(decompressor, data: bytes, limit: int) -> bytes | bytearray:
    """All of ``data`` uncompressed, at most ``limit + 1`` bytes of it.

    In 1 MiB steps into a growing buffer: one call producing 50 MB holds the GIL while
    it assembles its result (about 45 ms measured), which in the threadpool stalls the
    hub, and apt with it; returned as it is, never copied once more into ``bytes``.
    """
    if isinstance(decompressor, _ZLIB):  # zlib hands the input it left back
        out = bytearray()
        rest = data
        while True:
            out += decompressor.decompress(rest, OUT_CHUNK)
            rest = decompressor.unconsumed_tail
            if len(out) > limit or decompressor.eof or not rest:
                break
        if len(out) <= limit and not decompressor.eof:
            raise BadIndexError("compressed index is truncated")
        return out
    if not hasattr(decompressor, "needs_input"):
        try:  # zstandard's object takes no length limit (bounded by the caller)
            out = decompressor.decompress(data, limit + 1)
        except TypeError:
            out = decompressor.decompress(data)
        if len(out) <= limit and not getattr(decompressor, "eof", True):
            raise BadIndexError("compressed index is truncated")
        return out
    out = bytearray()
    piece = decompressor.decompress(data, OUT_CHUNK)
    while True:
        out += piece
        if len(out) > limit or decompressor.eof or decompressor.needs_input:
            break
        piece = decompressor.decompress(b"", min(OUT_CHUNK, limit + 1 - len(out)))
    if len(out) <= limit and not decompressor.eof:
        raise BadIndexError("compressed index is truncated")
    return out


def _gunzip(data: bytes, limit: int) -> bytes | bytearray:
    """gzip members one after another (as ``gzip -d`` reads them), within ``limit``."""
    out = bytearray()
    rest = data
    while rest and len(out) <= limit:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += _whole(decompressor, rest, limit - len(out))
        rest = decompressor.unused_data
    return out


def compression_of(path: str) -> str:
    """The compression suffix of an index path (``.xz`` for ``Packages.xz``)."""
    for suffix in COMPRESSIONS[1:]:
        if path.endswith(suffix):
            return suffix
    return ""


def _stanza_fields(data: bytes):
    """``(Filename, Size, SHA256)`` of each stanza, wherever the fields stand in it;
    a stanza missing one yields empty values (counted as skipped)."""
    for stanza in data.split(b"\n\n"):
        if stanza.strip():
            yield (
                _field(stanza, b"Filename:") or b"",
                _field(stanza, b"Size:") or b"",
                _field(stanza, b"SHA256:") or b"",
            )


def _field(stanza: bytes, name: bytes) -> bytes | None:
    if stanza.startswith(name):
        start = len(name)
    else:
        found = stanza.find(b"\n" + name)
        if found < 0:
            return None
        start = found + 1 + len(name)
    end = stanza.find(b"\n", start)
    return stanza[start : end if end >= 0 else len(stanza)].strip()


def _strip_dot(name: str) -> str:
    """``foo.deb`` for ``./foo.deb``: flat repositories (dpkg-scanpackages,
    apt-ftparchive run in the directory) write names relative to ``.``."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _safe_filename(name: str) -> bool:
    return bool(name) and _UNSAFE_NAME.search(name) is None


SCAN_CHUNK = 1 << 20


def _stanza_runs(data: bytes, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, end)`` spans of about ``size`` bytes that end between two stanzas.

    A regular expression holds the GIL for its whole call: over 50 MB that is 0.2 s
    in which the hub, running beside a threadpool scan, could not answer apt. Spans
    of 1 MiB keep each call to a few milliseconds.
    """
    size = size or SCAN_CHUNK
    start, length = 0, len(data)
    while start < length:
        end = data.find(b"\n\n", start + size)
        end = length if end < 0 else end + 1
        yield start, end
        start = end


def scan_packages(data: bytes, sha256: str | None = None) -> PackageIndex:
    """Read Filename, Size and SHA256 of every stanza of an uncompressed ``Packages``.

    Stanzas lacking one of them, or with unsafe or malformed values, are skipped and
    counted in one log line: one bad stanza must not cost the whole index. A file name
    listed twice keeps its first entry (the design's "one file per distinct Filename").

    Debian writes the three fields in one run (``Filename``, ``Size``, ``MD5sum``,
    ``SHA256``), so one regular expression over the whole buffer finds them without
    splitting it into 63,000 stanzas; any index where that does not account for every
    ``Filename`` is read stanza by stanza instead.
    """
    index = PackageIndex(sha256 or hashlib.sha256(data).hexdigest())
    entries: list[tuple[bytes, bytes, bytes]] | None = None
    if b"\r" not in data:
        entries = []
        filenames = data.startswith(b"Filename:")
        for start, end in _stanza_runs(data):
            entries += _RUN.findall(data, start, end)
            filenames += data.count(b"\nFilename:", start, end)
        if len(entries) != filenames:
            entries = None
    if entries is None:
        entries = list(_stanza_fields(data.replace(b"\r\n", b"\n")))
    skipped = 0
    positions = index.positions
    for filename, size, digest in entries:
        try:
            name = _strip_dot(filename.strip().decode("utf-8"))
            length = int(size)
            raw_digest = bytes.fromhex(digest.strip().decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            skipped += 1
            continue
        if not 0 <= length < _MAX_SIZE or len(raw_digest) != 32 or not _safe_filename(name):
            skipped += 1
            continue
        if name in positions:
            continue
        positions[name] = len(index.filenames)
        index.filenames.append(name)
        index.sizes.append(length)
        index.digests += raw_digest
    if skipped:
        log.warning("index %s: skipped %d malformed stanzas", index.sha256[:16], skipped)
    return index
