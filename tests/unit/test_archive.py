"""Release parsing, by-hash resolution and the fast Packages scanner."""

import bz2
import gzip
import hashlib
import itertools
import lzma

import lz4.frame
import pytest
import zstandard
from debian.deb822 import Packages

from debtorrent.archive import packages
from debtorrent.archive.packages import decompress, scan_packages
from debtorrent.archive.release import parse_release, strip_signature
from debtorrent.errors import BadIndexError


def _stanza(i: int) -> str:
    digest = hashlib.sha256(str(i).encode()).hexdigest()
    return (
        f"Package: pkg{i}\nVersion: 1.{i}+b1\nArchitecture: amd64\n"
        f"Description: package {i}\n continued line with Filename: fake\n"
        f"Filename: pool/main/p/pkg{i}/pkg{i}_1.{i}+b1_amd64.deb\n"
        f"Size: {1000 + i}\nMD5sum: {'0' * 32}\nSHA256: {digest}\n"
    )


PACKAGES = ("\n".join(_stanza(i) for i in range(50))).encode()


def _release(entries: dict[str, bytes]) -> bytes:
    lines = [
        "Origin: Debian",
        "Label: Debian",
        "Suite: stable",
        "Codename: bookworm",
        "Date: Sat, 01 Nov 2026 10:00:00 UTC",
        "Acquire-By-Hash: yes",
        "SHA256:",
    ]
    for name, data in entries.items():
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>8} {name}")
    return ("\n".join(lines) + "\n").encode()


def test_scanner_agrees_with_python_debian():
    index = scan_packages(PACKAGES)
    reference = [
        (p["Filename"], int(p["Size"]), bytes.fromhex(p["SHA256"]))
        for p in Packages.iter_paragraphs(PACKAGES.decode(), use_apt_pkg=False)
    ]
    assert [(e.filename, e.size, e.sha256) for e in index] == reference
    assert index.sha256 == hashlib.sha256(PACKAGES).hexdigest()
    assert index.lookup("pool/main/p/pkg7/pkg7_1.7+b1_amd64.deb").size == 1007


def test_scanner_skips_bad_stanzas_and_duplicates():
    bad = (
        b"Package: a\nFilename: ../etc/passwd\nSize: 1\nSHA256: " + b"0" * 64 + b"\n\n"
        b"Package: b\nFilename: pool/b.deb\nSize: x\nSHA256: " + b"0" * 64 + b"\n\n"
        b"Package: c\nFilename: pool/c.deb\nSize: 3\nSHA256: nothex\n\n"
        b"Package: d\nSize: 3\nSHA256: " + b"1" * 64 + b"\n\n"
        b"Package: e\nFilename: pool/e.deb\nSize: 5\nSHA256: " + b"2" * 64 + b"\n\n"
        b"Package: e2\nFilename: pool/e.deb\nSize: 6\nSHA256: " + b"3" * 64 + b"\n"
    )
    index = scan_packages(bad)
    assert [(e.filename, e.size) for e in index] == [("pool/e.deb", 5)]


@pytest.mark.parametrize(
    ("suffix", "pack"),
    [
        ("", lambda d: d),
        (".gz", gzip.compress),
        (".xz", lzma.compress),
        (".bz2", bz2.compress),
        (".lz4", lz4.frame.compress),
        (".zst", lambda d: zstandard.ZstdCompressor().compress(d)),
    ],
)
def test_every_compression_round_trips(suffix, pack):
    assert decompress(pack(PACKAGES), suffix) == PACKAGES


def test_corrupt_compressed_index_is_a_clear_error():
    with pytest.raises(BadIndexError):
        decompress(b"not xz at all", ".xz")


def test_release_entries_and_by_hash():
    xz = lzma.compress(PACKAGES)
    release = _release(
        {"main/binary-amd64/Packages": PACKAGES, "main/binary-amd64/Packages.xz": xz}
    )
    info = parse_release("debian/dists/bookworm/InRelease", release)
    assert (info.root, info.dist, info.codename, info.by_hash) == (
        "debian",
        "debian/dists/bookworm",
        "bookworm",
        True,
    )
    entry = info.entry("debian/dists/bookworm/main/binary-amd64/Packages.xz")
    assert entry.size == len(xz) and entry.sha256 == hashlib.sha256(xz).hexdigest()
    by_hash = f"debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{entry.sha256}"
    assert info.resolve_by_hash(by_hash) == "debian/dists/bookworm/main/binary-amd64/Packages.xz"
    other_dir = f"debian/dists/bookworm/contrib/binary-amd64/by-hash/SHA256/{entry.sha256}"
    assert info.resolve_by_hash(other_dir) is None


def test_clearsigned_release_is_unwrapped():
    body = _release({"main/binary-amd64/Packages": PACKAGES}).decode()
    signed = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
        + body.replace("Origin: Debian", "- Origin: Debian")
        + "-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
    )
    assert strip_signature(signed).startswith("Origin: Debian")
    info = parse_release("dists/sid/InRelease", signed.encode())
    assert info.root == "" and "main/binary-amd64/Packages" in info.entries


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe garbage",
        b"Origin: x\n",
        b"Origin: x\nSHA256:\n nothex 12 main/binary-amd64/Packages\n",
        b"Origin: x\nSHA256:\n " + b"a" * 64 + b" 12 ../../etc/passwd\n",
        b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n",
    ],
)
def test_bad_release_is_a_clear_error(data):
    with pytest.raises(BadIndexError):
        parse_release("debian/dists/bookworm/InRelease", data)


@pytest.mark.parametrize(
    ("suffix", "pack"), [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)]
)
def test_truncated_or_oversized_index_is_refused(suffix, pack):
    packed = pack(PACKAGES)
    with pytest.raises(BadIndexError, match="truncated"):
        decompress(packed[:-10], suffix)
    with pytest.raises(BadIndexError, match="more than"):
        decompress(packed, suffix, limit=len(PACKAGES) - 1)
    assert decompress(packed, suffix, limit=len(PACKAGES)) == PACKAGES


def test_multi_member_gzip_is_read_whole():
    assert decompress(gzip.compress(PACKAGES[:100]) + gzip.compress(PACKAGES[100:]), ".gz") == (
        PACKAGES
    )


def test_fields_in_another_order_are_read_stanza_by_stanza():
    reordered = b"\n".join(
        b"\n".join(sorted(stanza.split(b"\n"), reverse=True)) + b"\n"
        for stanza in PACKAGES.split(b"\n\n")
        if stanza.strip()
    )
    # continuation lines moved out of place are harmless here: only the three fields count
    fast, slow = scan_packages(PACKAGES), scan_packages(reordered)
    assert [(e.filename, e.size, e.sha256) for e in slow] == [
        (e.filename, e.size, e.sha256) for e in fast
    ]
    assert len(fast) == 50


@pytest.mark.parametrize("span", [1, 37, 200, 1000, 1 << 20])
def test_scanning_in_spans_finds_what_one_pass_finds(monkeypatch, span):
    """The scan runs in spans (the GIL is released between them); wherever they end,
    every stanza is found once, none split."""
    whole = scan_packages(PACKAGES)
    monkeypatch.setattr(packages, "SCAN_CHUNK", span)
    spans = list(packages._stanza_runs(PACKAGES))
    assert spans[0][0] == 0 and spans[-1][1] == len(PACKAGES)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    ends = [end for _start, end in spans[:-1]]
    assert all(PACKAGES[end - 1 : end + 1] == b"\n\n" for end in ends)  # between stanzas
    again = scan_packages(PACKAGES)
    assert list(again) == list(whole) and len(again) == 50
