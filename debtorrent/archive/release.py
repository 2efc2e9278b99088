"""Release and InRelease files: what every index of a suite should be.

apt checks the signature; debtorrent only needs the sizes and SHA256 sums, to verify
the indexes it passes on and to recognise ``by-hash`` requests (modern apt asks for
``Packages`` only by hash). Parsing uses python-debian's ``Release``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from debian.deb822 import Release

from debtorrent.errors import BadIndexError

__all__ = ["IndexEntry", "ReleaseInfo", "archive_root", "parse_release", "strip_signature"]

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
    entries: dict[str, IndexEntry] = field(default_factory=dict)
    _by_sha256: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def entry(self, path: str) -> IndexEntry | None:
        """The entry of a mirror path under this Release's directory, if listed."""
        prefix = self.dist + "/"
        if not path.startswith(prefix):
            return None
        return self.entries.get(path[len(prefix) :])

    def resolve_by_hash(self, path: str) -> str | None:
        """The mirror path of the index a ``by-hash/SHA256/<hex>`` path stands for.

        The hash must belong to a listed file in the same directory as the by-hash
        folder, so a hash listed for another component never matches.
        """
        prefix = self.dist + "/"
        if not path.startswith(prefix):
            return None
        head, sep, digest = path[len(prefix) :].rpartition("by-hash/SHA256/")
        if not sep or "/" in digest:
            return None
        directory = head.rstrip("/")
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
    """Parse the Release or InRelease found at mirror path ``path``."""
    dist = path.rsplit("/", 1)[0]
    root = archive_root(path)
    if root is None:
        raise BadIndexError(f"{path}: a Release outside dists/")
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
