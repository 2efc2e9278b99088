"""Where Releases live and what their indexes are: flat repositories, nested suites,
binary-all, debian-installer; and the trust flag a loaded index carries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from debtorrent.apt.urls import FileClass, classify
from debtorrent.archive.indexes import Archive
from debtorrent.archive.packages import scan_packages
from debtorrent.archive.release import flat_root, parse_release
from debtorrent.archive.signature import Verdict
from debtorrent.cache import Cache


def _packages(*filenames: str) -> bytes:
    stanzas = []
    for i, name in enumerate(filenames):
        digest = hashlib.sha256(name.encode()).hexdigest()
        stanzas.append(
            f"Package: p{i}\nVersion: 1\nArchitecture: all\nFilename: {name}\n"
            f"Size: {100 + i}\nSHA256: {digest}\n"
        )
    return "\n".join(stanzas).encode()


def _release(entries: dict[str, bytes], **fields: str) -> bytes:
    head = {"Origin": "Test", "Suite": "stable", "Codename": "stable", **fields}
    lines = [f"{k}: {v}" for k, v in head.items()] + ["SHA256:"]
    lines += [f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}" for n, d in entries.items()]
    return ("\n".join(lines) + "\n").encode()


class _Fixed:
    """A verifier stand-in with a fixed verdict (gpgv itself: test_signature.py)."""

    enforcing = False

    def __init__(self, state: str) -> None:
        self.state = state

    def inline(self, data: bytes) -> Verdict:
        return Verdict(self.state, "fixed")

    def detached(self, data: bytes, signature: bytes) -> Verdict:
        return Verdict(self.state, "fixed, detached")

    def unsigned(self, reason: str = "") -> Verdict:
        return Verdict("unsigned", reason)


@pytest.mark.parametrize(
    ("path", "cls"),
    [
        ("repo/flat/Packages.gz", FileClass.PACKAGES),
        ("repo/flat/InRelease", FileClass.INDEX),
        ("repo/flat/Sources.xz", FileClass.VOLATILE),
        ("repo/flat/foo_1_all.deb", FileClass.PACKAGE),
        ("debian/dists/stable/updates/main/binary-amd64/Packages.xz", FileClass.PACKAGES),
        ("debian/dists/stable/main/debian-installer/binary-amd64/Packages.xz", FileClass.PACKAGES),
        ("debian/dists/stable/main/binary-all/by-hash/SHA256/" + "0" * 64, FileClass.BY_HASH),
        ("debian/dists/stable/main/installer-amd64/current/images/SHA256SUMS", FileClass.VOLATILE),
        ("debian/dists/stable/main/dep11/icons-64x64@2.tar.gz", FileClass.VOLATILE),
        ("ubuntu/dists/noble/main/cnf/Commands-amd64.xz", FileClass.VOLATILE),
        ("debian/pool/main/h/hello/hello_2.10-3.debian.tar.xz", FileClass.IMMUTABLE),
        ("debian/pool/main/h/hello/hello_2.10.orig.tar.gz.asc", FileClass.IMMUTABLE),
        ("secret.txt", FileClass.UNKNOWN),
        ("debian/dists/stable/secret.txt", FileClass.UNKNOWN),
        ("etc/passwd", FileClass.UNKNOWN),
        ("debian/project/trace/master", FileClass.UNKNOWN),
        ("debian/dists/stable/main/binary-amd64/by-hash/SHA256/short", FileClass.UNKNOWN),
    ],
)
def test_every_archive_file_and_nothing_else(path: str, cls: FileClass) -> None:
    assert classify(path) is cls


def test_flat_release_and_its_root() -> None:
    data = _packages("./a_1_all.deb", "./b_2_all.deb")
    info = parse_release("repo/flat/Release", _release({"Packages": data}))
    assert (info.flat, info.dist, info.root) == (True, "repo/flat", "repo/flat")
    assert info.entry("repo/flat/Packages") is not None
    assert flat_root("repo/flat", ["a_1_all.deb"]) == "repo/flat"  # deb URI ./
    assert flat_root("repo/flat", ["flat/a_1_all.deb", "flat/b.deb"]) == "repo"  # deb URI flat/
    top = parse_release("Release", _release({"Packages": data}))
    assert (top.dist, top.root) == ("", "") and top.entry("Packages") is not None


def test_flat_index_names_relative_to_dot_are_read() -> None:
    index = scan_packages(_packages("./a_1_all.deb", "sub/./b.deb"))
    assert index.filenames == ["a_1_all.deb"]  # "sub/./b.deb" stays refused


def test_nested_suite_and_flat_repository_in_one_archive(tmp_path: Path) -> None:
    archive = Archive(Cache(tmp_path / "cache"), _Fixed("verified"))
    main = _packages("pool/main/a/a_1_all.deb")
    nested = _packages("pool/updates/a/a_2_all.deb")
    flat = _packages("./f_1_all.deb")
    archive.add_release(
        "m", "debian/dists/stable/InRelease", _release({"main/binary-all/Packages": main})
    )
    archive.add_release(
        "m",
        "debian/dists/stable/updates/InRelease",
        _release({"main/binary-all/Packages": nested}, Suite="stable/updates"),
    )
    archive.add_release("m", "repo/InRelease", _release({"Packages": flat}))
    deep = archive.release_for("m", "debian/dists/stable/updates/main/binary-all/Packages")
    assert deep is not None and deep.suite == "stable/updates"
    assert (
        archive.release_for("m", "debian/dists/stable/main/binary-all/Packages").suite == "stable"
    )
    a = archive.add_packages("m", "debian/dists/stable/main/binary-all/Packages", main)
    b = archive.add_packages("m", "debian/dists/stable/updates/main/binary-all/Packages", nested)
    c = archive.add_packages("m", "repo/Packages", flat)
    assert (a.component, a.arch, b.release.root) == ("main", "all", "debian")
    assert (c.component, c.arch, c.name) == ("flat", "any", "Test_stable_flat_binary-any")
    assert archive.lookup("m", "repo/f_1_all.deb").entry.size == 100
    assert archive.lookup("m", "debian/pool/updates/a/a_2_all.deb").loaded is b
    assert all(x.trusted for x in (a, b, c))


def test_untrusted_release_makes_untrusted_indexes_and_listeners_hear_a_change(
    tmp_path: Path,
) -> None:
    verifier = _Fixed("no-key")
    archive = Archive(Cache(tmp_path / "cache"), verifier)
    heard = []
    archive.listeners.append(lambda loaded, old: heard.append(loaded.trusted))
    data = _packages("pool/a_1_all.deb")
    release = _release({"main/binary-all/Packages": data})
    archive.add_release("m", "d/dists/s/InRelease", release)
    loaded = archive.add_packages("m", "d/dists/s/main/binary-all/Packages", data)
    assert not loaded.trusted and loaded.release.trust == "no-key"
    verifier.state = "verified"  # the key was added; the same index loads trusted
    archive.add_release("m", "d/dists/s/InRelease", release)
    archive.add_packages("m", "d/dists/s/main/binary-all/Packages", data)
    assert heard == [False, True]


def test_detached_signature_is_checked_when_it_arrives(tmp_path: Path) -> None:
    archive = Archive(Cache(tmp_path / "cache"), _Fixed("verified"))
    release = _release({"main/binary-all/Packages": _packages("pool/a.deb")})
    info = archive.add_release("m", "d/dists/s/Release", release)
    assert info.trust == "unsigned" and not info.trusted
    info = archive.add_signature("m", "d/dists/s/Release.gpg", b"sig")
    assert info is not None and info.trust == "verified"
    assert archive.release_for("m", "d/dists/s/main/binary-all/Packages").trusted
    # an InRelease wins; a Release.gpg then changes nothing
    archive.add_release("m", "d/dists/s/InRelease", release)
    assert archive.add_signature("m", "d/dists/s/Release.gpg", b"sig") is None


def test_enforce_refuses_indexes_of_unverified_releases(tmp_path: Path) -> None:
    verifier = _Fixed("bad")
    verifier.enforcing = True
    archive = Archive(Cache(tmp_path / "cache"), verifier)
    assert "no verified Release" in archive.refusal("m", "d/dists/s/main/binary-all/Packages")
    archive.add_release("m", "d/dists/s/InRelease", _release({"x": b""}))
    assert "bad" in archive.refusal("m", "d/dists/s/main/binary-all/Packages")
    verifier.state = "verified"
    archive.add_release("m", "d/dists/s/InRelease", _release({"x": b""}))
    assert archive.refusal("m", "d/dists/s/main/binary-all/Packages") is None
