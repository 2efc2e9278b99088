"""What the daemon knows of the archives behind its mirrors.

:class:`Archive` holds the parsed Releases (so index downloads can be verified and
``by-hash`` requests recognised) and the loaded ``Packages`` indexes (so a ``.deb``
request can be verified against its SHA256). Indexes are shared by content: the same
``Packages`` seen through two mirrors is one :class:`PackageIndex`, which is what lets
users of different mirrors share one swarm later. At start-up the saved copies in the
cache are loaded again, each only if it matches its saved Release.

Every Release is checked by the :class:`~debtorrent.archive.signature.Verifier` as it
arrives (an InRelease at once; a Release when its Release.gpg comes, which apt asks for
right after it) and at start-up. A loaded index carries the verdict as
:attr:`LoadedIndex.trusted`: the swarm layer makes swarms of trusted indexes only, and
:meth:`Archive.refusal` tells the proxy what to refuse when signatures are enforced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from debtorrent import offload
from debtorrent.archive.packages import (
    COMPRESSIONS,
    PackageEntry,
    PackageIndex,
    compression_of,
    decompress,
    scan_packages,
)
from debtorrent.archive.release import IndexEntry, ReleaseInfo, flat_root, parse_release
from debtorrent.archive.signature import Verdict, Verifier
from debtorrent.cache import Cache
from debtorrent.errors import BadIndexError, DebtorrentError

__all__ = ["Archive", "LoadedIndex", "PackageMatch"]

log = logging.getLogger(__name__)

_BINARY_RE = re.compile(r"^(?P<component>.+)/binary-(?P<arch>[^/]+)/Packages$")
_RELEASE_NAMES = ("InRelease", "Release")
FLAT_COMPONENT, FLAT_ARCH = "flat", "any"  # how a flat repository's index is named


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoadedIndex:
    """A ``Packages`` index loaded for one mirror path, with what names its swarm."""

    mirror: str
    path: str  # mirror path of the uncompressed index: <dist>/<component>/binary-<arch>/Packages
    release: ReleaseInfo
    component: str
    arch: str
    index: PackageIndex
    trusted: bool = True  # its Release verified (or checks off): it may become a swarm

    @property
    def name(self) -> str:
        """``<Origin>_<Codename>_<component>_binary-<arch>``, the swarm's name."""
        origin = self.release.origin or "unknown"
        component = self.component.replace("/", "-")
        return f"{origin}_{self.release.swarm_suite}_{component}_binary-{self.arch}"


@dataclass(frozen=True)
class PackageMatch:
    """A ``.deb`` request matched to an index entry."""

    loaded: LoadedIndex
    entry: PackageEntry


class Archive:
    """Releases and Packages indexes per mirror; the single place that knows them."""

    def __init__(self, cache: Cache, verifier: Verifier | None = None) -> None:
        self.cache = cache
        self.verifier = verifier
        self.releases: dict[tuple[str, str], ReleaseInfo] = {}
        self._detached: dict[tuple[str, str], bytes] = {}  # Release bytes awaiting .gpg
        self.loaded: dict[tuple[str, str], LoadedIndex] = {}
        self._by_content: dict[str, PackageIndex] = {}
        self.listeners: list[Callable[[LoadedIndex, LoadedIndex | None], None]] = []
        self.loading = 0  # indexes being hashed and scanned right now (off the hub)

    # --- Releases ---------------------------------------------------------------

    def add_release(
        self, mirror: str, path: str, data: bytes, signature: bytes | None = None
    ) -> ReleaseInfo:
        """Check, parse and remember a Release/InRelease just fetched (or saved).

        An InRelease is verified at once and its signed text is what is parsed. A
        Release waits for its Release.gpg (:meth:`add_signature`) unless ``signature``
        is given (a saved copy at start-up); until then it counts as unsigned.
        """
        inline = path.rpartition("/")[2] == "InRelease"
        if self.verifier is None:
            verdict = Verdict("unchecked", "no verifier")
        elif inline:
            verdict = self.verifier.inline(data)
        elif signature is not None:
            verdict = self.verifier.detached(data, signature)
        else:
            verdict = self.verifier.unsigned("Release.gpg not fetched yet")
        info = parse_release(path, verdict.content if verdict.content is not None else data)
        _set_trust(info, verdict, inline)
        key = (mirror, info.dist)
        current = self.releases.get(key)
        if inline or current is None or not current.signed_inline:
            self.releases[key] = info
            if not inline:
                self._detached[key] = data
        log.info("Release %s/%s: %s (%s)", mirror, path, info.trust, info.trust_reason)
        return info

    def add_signature(self, mirror: str, path: str, signature: bytes) -> ReleaseInfo | None:
        """A Release.gpg just fetched: check the Release it signs; its new info, if any."""
        dist = path.rpartition("/")[0]
        key = (mirror, dist)
        data = self._detached.get(key)
        current = self.releases.get(key)
        if data is None or current is None or current.signed_inline:
            return None
        return self.add_release(mirror, f"{dist}/Release" if dist else "Release", data, signature)

    def refusal(self, mirror: str, path: str) -> str | None:
        """Why an index under ``path`` must be refused (signatures enforced), or None."""
        if self.verifier is None or not self.verifier.enforcing:
            return None
        release = self.release_for(mirror, path)
        if release is None:
            return "no verified Release lists it (verify-signatures enforce)"
        if not release.trusted:
            return f"its Release is {release.trust}: {release.trust_reason}"
        return None

    def release_for(self, mirror: str, path: str) -> ReleaseInfo | None:
        """The Release whose directory holds ``path`` (the deepest, for nested suites)."""
        directory = path
        while directory:
            directory = directory.rpartition("/")[0]
            found = self.releases.get((mirror, directory))
            if found is not None:
                return found
        return None

    def expected(self, mirror: str, path: str) -> IndexEntry | None:
        """Size and SHA256 the Release lists for an index path, if any."""
        release = self.release_for(mirror, path)
        return release.entry(path) if release else None

    def resolve_by_hash(self, mirror: str, path: str) -> str | None:
        """The index path a ``by-hash`` request stands for, if its Release lists it."""
        release = self.release_for(mirror, path)
        return release.resolve_by_hash(path) if release else None

    # --- Packages ---------------------------------------------------------------

    def add_compressed(
        self, mirror: str, path: str, data: bytes, size: int | None, *, save: bool = True
    ) -> LoadedIndex:
        """Load a ``Packages`` index as fetched (compressed as its name says, to at most
        ``size`` bytes, the Release's figure), decompressed off the hub."""
        self.loading += 1
        try:
            plain = offload.run(decompress, data, compression_of(path), size)
        finally:
            self.loading -= 1
        return self.add_packages(mirror, path, plain, save=save)

    def add_packages(
        self, mirror: str, path: str, data: bytes, *, digest: str | None = None, save: bool = True
    ) -> LoadedIndex:
        """Load the uncompressed ``Packages`` of mirror path ``path`` (any compression name).

        The caller has verified ``data`` against the Release; the uncompressed copy is
        saved as ``<dist>/<component>/binary-<arch>/Packages`` in the cache (unless it
        comes from there: ``save=False``). ``digest`` spares hashing 50 MB again.
        """
        suffix = compression_of(path)
        plain_path = path[: len(path) - len(suffix)] if suffix else path
        release = self.release_for(mirror, plain_path)
        if release is None:
            raise BadIndexError(f"{mirror}/{path}: no Release known for this index")
        rel = plain_path[len(release.dist) + 1 :] if release.dist else plain_path
        match = _BINARY_RE.match(rel)
        if match is not None:
            component, arch = match["component"], match["arch"]
        elif release.flat and rel == "Packages":
            component, arch = FLAT_COMPONENT, FLAT_ARCH
        else:
            raise BadIndexError(f"{mirror}/{path}: not a binary Packages index")
        self.loading += 1
        try:  # hashing, scanning and saving 50 MB run off the hub (see offload)
            digest = digest or offload.run(_sha256_hex, data)
            listed = release.entry(plain_path)
            if listed is not None and listed.sha256 != digest:
                raise BadIndexError(
                    f"{mirror}/{plain_path}: uncompressed index does not match Release"
                )
            index = self._by_content.get(digest)
            if index is None:
                index = offload.run(scan_packages, data, digest)
            if save:  # only once it parsed: a saved index must never stop the next start
                self.cache.write(mirror, plain_path, data)
        finally:
            self.loading -= 1
        if release.flat:
            release.root = flat_root(release.dist, index.filenames)
        return self._register(
            LoadedIndex(mirror, plain_path, release, component, arch, index, release.trusted)
        )

    def _register(self, loaded: LoadedIndex) -> LoadedIndex:
        key = (loaded.mirror, loaded.path)
        old = self.loaded.get(key)
        self.loaded[key] = loaded
        self._by_content[loaded.index.sha256] = loaded.index
        if old is not None and old.index is not loaded.index:
            if all(other.index is not old.index for other in self.loaded.values()):
                self._by_content.pop(old.index.sha256, None)
        log.info(
            "index %s/%s: %d files, %.1f GB (%s)%s",
            loaded.mirror,
            loaded.path,
            len(loaded.index),
            loaded.index.total_size / 1e9,
            loaded.name,
            "" if loaded.trusted else f"; Release {loaded.release.trust}: not shared",
        )
        if old is None or old.index is not loaded.index or old.trusted != loaded.trusted:
            for listener in self.listeners:
                listener(loaded, old)
        return loaded

    def lookup(self, mirror: str, path: str) -> PackageMatch | None:
        """The index entry for a pool path requested from ``mirror``, if any is loaded."""
        for loaded in self.loaded.values():
            if loaded.mirror != mirror:
                continue
            root = loaded.release.root
            if root and not path.startswith(root + "/"):
                continue
            entry = loaded.index.lookup(path[len(root) + 1 :] if root else path)
            if entry is not None:
                return PackageMatch(loaded, entry)
        return None

    # --- start-up ---------------------------------------------------------------

    def load_saved(self, *, save: bool = True) -> int:
        """Load every Release and matching ``Packages`` kept in the cache; returns indexes.

        Each Release is verified again (keys and Valid-Until may have changed). An index
        loaded from a compressed copy is saved uncompressed for the next start unless
        ``save`` is false (the cache commands only read).
        """
        saved = sorted(self._saved_releases(), key=lambda item: item[1].endswith("InRelease"))
        for mirror, path, file in saved:  # InRelease last: it wins
            try:
                data = file.read_bytes()
                signature = None
                if path.rpartition("/")[2] == "Release":
                    gpg = file.with_name("Release.gpg")
                    signature = gpg.read_bytes() if gpg.is_file() else None
                self.add_release(mirror, path, data, signature)
            except (OSError, DebtorrentError) as exc:
                log.warning("ignoring saved %s/%s: %s", mirror, path, exc)
        count = 0
        for (mirror, dist), release in list(self.releases.items()):
            for rel, listed in release.entries.items():
                if not (_BINARY_RE.match(rel) or (release.flat and rel == "Packages")):
                    continue
                try:
                    count += self._load_saved_index(mirror, dist, release, rel, listed, save)
                except (OSError, ValueError, DebtorrentError) as exc:
                    log.warning("ignoring saved %s/%s/%s: %s", mirror, dist, rel, exc)
        return count

    def _load_saved_index(
        self,
        mirror: str,
        dist: str,
        release: ReleaseInfo,
        rel: str,
        listed: IndexEntry,
        save: bool,
    ) -> bool:
        """Load one index the Release lists from the cache: its saved uncompressed copy,
        else a compressed copy apt was given (by name or by hash) whose load a stop cut
        short (apt has its index once the bytes verify; the daemon loads it after)."""
        where = f"{dist}/{rel}" if dist else rel
        file = self.cache.get(mirror, where)
        if file is not None:
            data = offload.run(file.read_bytes)
            digest = offload.run(_sha256_hex, data)
            if digest == listed.sha256:
                self.add_packages(mirror, where, data, digest=digest, save=False)
                return True
        for suffix in COMPRESSIONS[1:]:
            packed = release.entries.get(rel + suffix)
            if packed is None:
                continue
            by_hash = f"{rel.rpartition('/')[0]}/by-hash/SHA256/{packed.sha256}".lstrip("/")
            for name in (rel + suffix, by_hash):
                copy = self.cache.get(mirror, f"{dist}/{name}" if dist else name)
                if copy is None or copy.stat().st_size != packed.size:
                    continue
                data = offload.run(copy.read_bytes)
                if offload.run(_sha256_hex, data) != packed.sha256:
                    continue
                log.info("loading %s/%s from its compressed copy %s", mirror, where, name)
                self.add_compressed(mirror, where + suffix, data, listed.size, save=save)
                return True
        if file is not None:
            log.info("saved %s/%s is outdated; not loaded", mirror, where)
        return False

    def _saved_releases(self):
        """``(mirror, path, file)`` of every saved Release and InRelease (pools skipped:
        they hold nearly every file of the cache and never a Release)."""
        root = self.cache.root
        if not root.is_dir():
            return
        for mirror_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for directory, subdirs, files in os.walk(mirror_dir):
                subdirs[:] = [d for d in subdirs if d not in ("pool", "by-hash")]
                for name in files:
                    if name in _RELEASE_NAMES:
                        file = mirror_dir.joinpath(directory, name)
                        yield mirror_dir.name, file.relative_to(mirror_dir).as_posix(), file


def _set_trust(info: ReleaseInfo, verdict: Verdict, inline: bool) -> None:
    info.trust, info.trust_reason, info.signer = verdict.state, verdict.reason, verdict.signer
    info.signed_inline = inline
