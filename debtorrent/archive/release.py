"""Release and InRelease files: what every index of a suite should be.

The sizes and SHA256 sums verify the indexes the daemon passes on and let it
recognise ``by-hash`` requests (modern apt asks for ``Packages`` only by hash).
Parsing uses python-debian's ``Release``. Whether the Release itself is to be believed
is :mod:`debtorrent.archive.signature`'s call; its verdict is kept here
(:attr:`ReleaseInfo.trust`), and only a trusted Release's indexes are shared.

Where a Release lives says how its ``Filename`` fields are read:

- the Debian layout: ``<root>/dists/<suite>/InRelease``, the suite possibly holding
  slashes (``bookworm/updates``); ``Filename`` is relative to ``<root>``;
- a flat repository (``deb http://host/path ./``): ``<dir>/InRelease`` with no
  ``dists/`` above it; ``Filename`` is relative to the directory apt's source names,
  which is ``<dir>`` for ``./`` (see :func:`flat_root` for ``sub/`` sources).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from debian.deb822 import Release

from debtorrent.errors import BadIndexError

__all__ = [
    "IndexEntry",
    "ReleaseInfo",
    "archive_root",
    "flat_root",
    "parse_release",
    "strip_signature",
]

log = logging.getLogger(__name__)

_SIGNED = "-----BEGIN PGP SIGNED MESSAGE-----"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIGNATURE = "-----BEGIN PGP SIGNATURE-----"


@dataclass(frozen=True)
class IndexEntry:
    """One file a Release lists: its size and SHA256 (lower-case hex)."""

    size: int
    sha256: str


@dataclass
class ReleaseInfo:
    """A parsed Release: where it lives and what it lists.

    ``dist`` is the directory of the Release relative to the mirror
    (``debian/dists/bookworm``); ``root`` is the archive root before ``dists/``
    (``debian``), to which every ``Filename`` in its Packages indexes is relative.
    """

    dist: str
    root: str
    origin: str
    label: str
    suite: str
    codename: str
    date: str
    by_hash: bool
    valid_until: str = ""
    flat: bool = False  # a flat repository: no dists/ above the Release
    # The signature verdict (debtorrent.archive.signature): "unchecked" until checked.
    trust: str = "unchecked"
    trust_reason: str = ""
    signer: str = ""
    signed_inline: bool = False  # read from an InRelease (else a Release + Release.gpg)
    entries: dict[str, IndexEntry] = field(default_factory=dict)
    _by_sha256: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def trusted(self) -> bool:
        """Whether the indexes of this Release may be shared with peers."""
        return self.trust in ("verified", "unchecked")

    def _relative(self, path: str) -> str | None:
        if not self.dist:
            return path
        prefix = self.dist + "/"
        return path[len(prefix) :] if path.startswith(prefix) else None

    def entry(self, path: str) -> IndexEntry | None:
        """The entry of a mirror path under this Release's directory, if listed."""
        rel = self._relative(path)
        return None if rel is None else self.entries.get(rel)

    def resolve_by_hash(self, path: str) -> str | None:
        """The mirror path of the index a ``by-hash/SHA256/<hex>`` path stands for.

        The hash must belong to a listed file in the same directory as the by-hash
        folder, so a hash listed for another component never matches.
        """
        rel = self._relative(path)
        if rel is None:
            return None
        head, sep, digest = rel.rpartition("by-hash/SHA256/")
        if not sep or "/" in digest:
            return None
        directory = head.rstrip("/")
        prefix = self.dist + "/" if self.dist else ""
        for candidate in self._by_sha256.get(digest.lower(), []):
            if candidate.rpartition("/")[0] == directory:
                return prefix + candidate
        return None

    @property
    def swarm_suite(self) -> str:
        """Codename, or Suite when a Release has no codename (as some do)."""
        return self.codename or self.suite


def archive_root(path: str) -> str | None:
    """The archive root of a path under ``dists/`` (``debian`` for ``debian/dists/...``)."""
    marker = f"/{path}".find("/dists/")
    if marker < 0:
        return None
    return path[: marker - 1] if marker else ""


def flat_root(dist: str, filenames: list[str]) -> str:
    """The directory a flat repository's ``Filename`` fields are relative to.

    apt reads them relative to the source's URI. For ``deb URI ./`` that is the
    directory of the index (``./foo.deb``); for ``deb URI sub/`` it is the parent,
    and the index then says ``sub/foo.deb``. The daemon only sees ``URI/sub/Packages``,
    so it tells the two apart by the names: all starting with the directory's own
    name means the parent.
    """
    parent, _, name = dist.rpartition("/")
    sample = filenames[:64]
    if name and sample and all(f.startswith(name + "/") for f in sample):
        return parent
    return dist


def strip_signature(text: str) -> str:
    """The signed payload of a clear-signed InRelease (or the text itself if unsigned)."""
    if not text.lstrip().startswith(_SIGNED):
        return text
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(_SIGNED))
        blank = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
        end = next(i for i in range(blank, len(lines)) if lines[i].startswith(_SIGNATURE))
    except StopIteration:
        raise BadIndexError("malformed clear-signed InRelease") from None
    body = [line[2:] if line.startswith("- ") else line for line in lines[blank + 1 : end]]
    return "\n".join(body) + "\n"


def parse_release(path: str, data: bytes) -> ReleaseInfo:
    """Parse the Release or InRelease found at mirror path ``path``.

    ``data`` is the signed text where a signature was verified, else the raw file.
    """
    dist = path.rpartition("/")[0]
    root = archive_root(path)
    flat = root is None
    if flat:
        root = dist
    try:
        text = strip_signature(data.decode("utf-8"))
        release = Release(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadIndexError(f"{path}: cannot parse: {exc}") from None
    info = ReleaseInfo(
        dist=dist,
        root=root,
        origin=release.get("Origin", ""),
        label=release.get("Label", ""),
        suite=release.get("Suite", ""),
        codename=release.get("Codename", ""),
        date=release.get("Date", ""),
        by_hash=release.get("Acquire-By-Hash", "no").strip().lower() == "yes",
        valid_until=release.get("Valid-Until", ""),
        flat=flat,
    )
    for item in release.get("SHA256", []) or []:
        try:
            name, size, digest = item["name"], int(item["size"]), item["sha256"].lower()
        except (KeyError, ValueError, TypeError):
            raise BadIndexError(f"{path}: bad SHA256 line {item!r}") from None
        if (
            not _HEX64.match(digest)
            or size < 0
            or ".." in name.split("/")
            or name.startswith("/")
            or any(ord(c) < 0x20 for c in name)
        ):
            raise BadIndexError(f"{path}: bad SHA256 line for {name!r}")
        info.entries[name] = IndexEntry(size, digest)
        info._by_sha256.setdefault(digest, []).append(name)
    if not info.entries:
        raise BadIndexError(f"{path}: lists no SHA256 sums")
    return info
