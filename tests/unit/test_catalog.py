"""A suite swarm's files: several indexes, deduplicated by SHA256, numbered for good."""

from __future__ import annotations

import hashlib

import pytest

from debtorrent.torrent.catalog import PREFIX, FileCatalog, Place
from debtorrent.torrent.layout import LAYOUT1_PIECE_LENGTH

PL = LAYOUT1_PIECE_LENGTH


def sha(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def entry(name: str, size: int = 1000, content: str | None = None) -> tuple[str, int, bytes]:
    return (f"pool/main/{name}", size, sha(content or name))


def test_two_architectures_share_their_all_packages() -> None:
    cat = FileCatalog()
    amd64 = [entry("a_amd64.deb"), entry("doc_all.deb", 3 * PL + 5), entry("b_amd64.deb")]
    arm64 = [entry("a_arm64.deb"), entry("doc_all.deb", 3 * PL + 5)]
    assert cat.add_index("amd64", "m", "debian", amd64) == [0, 1, 2]
    assert cat.add_index("arm64", "m", "debian", arm64) == [3]  # doc_all is known
    assert len(cat) == 4 and cat.layout.num_files == 4
    doc = cat.find(sha("doc_all.deb"))
    assert doc == 1 and cat.layout.file_pieces(doc) == range(1, 5)
    assert cat.layout.file_pieces(3) == range(6, 7)  # appended after the first index
    assert cat.place(doc) == Place("m", "debian", "pool/main/doc_all.deb")
    assert cat.place(doc).path == "debian/pool/main/doc_all.deb"


def test_a_new_index_version_adds_only_what_changed_and_old_files_stay_numbered() -> None:
    cat = FileCatalog()
    v1 = [entry("a_1.deb"), entry("b_1.deb"), entry("c_1.deb")]
    v2 = [entry("a_1.deb"), entry("b_2.deb"), entry("c_1.deb")]
    cat.add_index("v1", "m", "", v1)
    assert cat.add_index("v2", "m", "", v2) == [3]
    assert cat.remove_index("v1") == [1]  # only b_1 is listed by no index now
    assert not cat.listed(1) and cat.listed(0) and cat.listed(3)
    assert cat.find(sha("b_1.deb")) == 1  # still numbered: pieces stay where they were
    assert cat.remove_index("v1") == []
    assert cat.add_index("v2", "m", "", v2) == []  # the same key twice counts once
    assert list(cat.files_of("v2")) == [0, 3, 2]


def test_a_file_listed_at_another_place_keeps_its_first_place_for_the_cache() -> None:
    cat = FileCatalog()
    cat.add_index("one", "mirror-a", "debian", [entry("x.deb")])
    cat.add_index("two", "mirror-b", "ubuntu", [("pool/x-renamed.deb", 1000, sha("x.deb"))])
    assert cat.places(0) == [
        Place("mirror-a", "debian", "pool/main/x.deb"),
        Place("mirror-b", "ubuntu", "pool/x-renamed.deb"),
    ]
    assert cat.place(0).mirror == "mirror-a"


def test_lookup_by_digest_and_prefix() -> None:
    cat = FileCatalog()
    cat.add_index("i", "m", "", [entry("x.deb"), entry("y.deb")])
    assert cat.find(sha("y.deb")) == 1
    assert cat.find(sha("nothing")) is None
    assert cat.find(b"short") is None
    assert cat.by_prefix(sha("x.deb")[:PREFIX]) == 0
    assert cat.by_prefix(sha("x.deb")[:7]) is None
    assert cat.prefix(1) == sha("y.deb")[:PREFIX] and cat.sha256(1) == sha("y.deb")


def test_two_digests_sharing_a_prefix_are_never_confused() -> None:
    cat = FileCatalog()
    first = b"\x01" * 8 + b"\x02" * 24
    second = b"\x01" * 8 + b"\x03" * 24
    cat.add_index("i", "m", "", [("f1", 10, first), ("f2", 20, second)])
    assert cat.find(first) == 0 and cat.find(second) == 1
    assert cat.by_prefix(b"\x01" * 8) is None  # ambiguous: a peer's prefix names neither
    assert cat.find(b"\x01" * 8 + b"\x04" * 24) is None


def test_same_digest_with_another_size_is_not_merged() -> None:
    cat = FileCatalog()
    cat.add_index("i", "m", "", [entry("x.deb", 1000)])
    cat.add_index("j", "m", "", [("pool/main/x.deb", 999, sha("x.deb"))])
    assert cat.layout.file_size(0) == 1000 and len(cat) == 1
    assert list(cat.files_of("j")) == []


@pytest.mark.parametrize("count", [0, 1, 5000])
def test_layout_grows_with_the_catalog(count: int) -> None:
    cat = FileCatalog()
    cat.add_index("i", "m", "", [entry(f"f{i}.deb", 1 + i * 1000) for i in range(count)])
    assert cat.layout.num_files == count
    assert cat.layout.num_pieces == sum(-(-(1 + i * 1000) // PL) for i in range(count))
