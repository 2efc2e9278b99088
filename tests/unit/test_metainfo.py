"""v1 .torrent parsing and creation (checked against libtorrent), swarm identity."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

from debtorrent.archive.indexes import Archive
from debtorrent.archive.packages import scan_packages
from debtorrent.cache import Cache
from debtorrent.errors import MetainfoError
from debtorrent.torrent import bencode
from debtorrent.torrent.layout import LAYOUT1_PIECE_LENGTH, Layout
from debtorrent.torrent.metainfo import (
    FileEntry,
    check_path,
    create_torrent,
    load_torrent,
    parse_torrent,
    suite_info,
    suite_info_hash,
    suite_name,
)
from debtorrent.torrent.suite import suite_identity

KIB = 1024
SHA = hashlib.sha256(b"Packages").digest()


def write_tree(root: Path, files: dict[str, int], seed: int = 0) -> None:
    rng = random.Random(seed)
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))


def lt_info(data: bytes) -> Any:
    return lt.torrent_info(lt.bdecode(data))


def v1_hash(ti: Any) -> bytes:
    return bytes.fromhex(str(ti.info_hashes().v1))


def minimal_info(**overrides: Any) -> dict[bytes, Any]:
    info: dict[bytes, Any] = {
        b"name": b"x",
        b"piece length": 16 * KIB,
        b"length": 20 * KIB,
        b"pieces": b"\x01" * 40,
    }
    for key, value in overrides.items():
        key_b = key.replace("_", " ").encode()
        if value is None:
            info.pop(key_b, None)
        else:
            info[key_b] = value
    return info


def torrent_bytes(info: dict[bytes, Any], **outer: Any) -> bytes:
    return bencode.encode({b"info": info, **{k.encode(): v for k, v in outer.items()}})


# --- creating and parsing, against libtorrent ---------------------------------------------

TREES = {
    "one-small": {"a": 1},
    "two": {"a.bin": 100_000, "sub/b.bin": 40_000},
    "empties": {"e0": 0, "d/x": 70_000, "d/y/e1": 0, "z": 16 * KIB},
    "exact": {"p1": 64 * KIB, "p2": 64 * KIB},
    "many": {f"dir{i % 3}/f{i:02}": (i * 7919) % 50_000 for i in range(25)},
}


@pytest.mark.parametrize("piece_length", [16 * KIB, 32 * KIB, 256 * KIB])
@pytest.mark.parametrize("tree", TREES)
def test_created_torrent_matches_libtorrent(tmp_path: Path, tree: str, piece_length: int) -> None:
    root = tmp_path / "payload"
    write_tree(root, TREES[tree])
    data = create_torrent(root, piece_length, trackers=[["http://127.0.0.1:6969/announce"]])
    meta = parse_torrent(data)
    ti = lt_info(data)
    assert meta.info_hash == v1_hash(ti)
    assert meta.num_pieces == ti.num_pieces()
    assert meta.piece_length == ti.piece_length()
    assert meta.total_size == ti.total_size() == sum(TREES[tree].values())
    assert meta.info_bytes == bytes(ti.info_section())
    fs = ti.layout()
    assert [("/".join(f.path), f.size) for f in meta.files] == [
        (fs.file_path(i), fs.file_size(i)) for i in range(fs.num_files())
    ]
    # Our v1 layout agrees with libtorrent's on where each file starts.
    for i in range(fs.num_files()):
        assert meta.layout.file_offset(i) == fs.file_offset(i)
        if fs.file_size(i):
            assert meta.layout.file_pieces(i)[0] == fs.piece_index_at_file(i)
    assert [meta.layout.piece_size(p) for p in range(meta.num_pieces)] == [
        ti.piece_size(p) for p in range(ti.num_pieces())
    ]
    assert all(meta.piece_hash(p) == bytes(ti.hash_for_piece(p)) for p in range(meta.num_pieces))
    # The piece hashes are of the actual data, in sorted path order.
    blob = b"".join((root / rel).read_bytes() for rel in sorted(TREES[tree]))
    assert meta.piece_hash(0) == hashlib.sha1(blob[:piece_length]).digest()


def test_single_file_torrent(tmp_path: Path) -> None:
    path = tmp_path / "hello.deb"
    path.write_bytes(b"x" * 50_000)
    data = create_torrent(path, 16 * KIB, web_seeds=["http://127.0.0.1:8080/pool/"])
    meta = parse_torrent(data)
    assert not meta.multi_file
    assert meta.files == (FileEntry(("hello.deb",), 50_000),)
    assert meta.web_seeds == ("http://127.0.0.1:8080/pool/",)
    ti = lt_info(data)
    assert meta.info_hash == v1_hash(ti)
    assert ti.name() == "hello.deb"
    assert lt.load_torrent_buffer(data).url_seeds == ["http://127.0.0.1:8080/pool/"]
    torrent_file = tmp_path / "hello.torrent"
    torrent_file.write_bytes(data)
    assert load_torrent(torrent_file).info_hash == v1_hash(lt.torrent_info(str(torrent_file)))


def test_explicit_file_order_and_options(tmp_path: Path) -> None:
    write_tree(tmp_path / "r", {"b": 10, "a": 20})
    data = create_torrent(
        tmp_path / "r",
        16 * KIB,
        files=["b", "a"],
        name="renamed",
        trackers=[["http://t1/announce", "http://t2/announce"], ["udp://t3:80"]],
        private=True,
        comment="test",
        created_by="debtorrent",
        creation_date=1_700_000_000,
    )
    meta = parse_torrent(data)
    assert [f.path for f in meta.files] == [("renamed", "b"), ("renamed", "a")]
    assert meta.private
    assert meta.trackers == (("http://t1/announce", "http://t2/announce"), ("udp://t3:80",))
    ti = lt_info(data)
    assert ti.priv()
    atp = lt.load_torrent_buffer(data)
    assert list(zip(atp.trackers, atp.tracker_tiers, strict=True)) == [
        ("http://t1/announce", 0),
        ("http://t2/announce", 0),
        ("udp://t3:80", 1),
    ]
    assert ti.comment() == "test"
    assert meta.info_hash == v1_hash(ti)


def test_create_is_deterministic(tmp_path: Path) -> None:
    write_tree(tmp_path / "r", TREES["many"])
    assert create_torrent(tmp_path / "r", 32 * KIB) == create_torrent(tmp_path / "r", 32 * KIB)


@pytest.mark.parametrize("hybrid", [False, True], ids=["v1-only", "hybrid"])
def test_parse_torrent_made_by_libtorrent(tmp_path: Path, hybrid: bool) -> None:
    root = tmp_path / "payload"
    write_tree(root, {"a": 40_000, "b/c": 70_000, "d": 1})
    entries = lt.list_files(str(root))
    assert len(entries) == 3
    flags = 0 if hybrid else lt.create_torrent.v1_only
    ct = lt.create_torrent(entries, 16 * KIB, flags)
    ct.add_tracker("http://127.0.0.1:6969/announce", 0)
    lt.set_piece_hashes(ct, str(tmp_path))
    data = lt.bencode(ct.generate())
    meta = parse_torrent(data)
    ti = lt_info(data)
    assert meta.info_hash == v1_hash(ti)
    assert meta.num_pieces == ti.num_pieces()
    assert meta.trackers == (("http://127.0.0.1:6969/announce",),)
    real = {"/".join(f.path[1:]): f.size for f in meta.files if f.path[1] != ".pad"}
    assert real == {"a": 40_000, "b/c": 70_000, "d": 1}


def test_info_hash_is_over_the_bytes_received() -> None:
    # Keys the parser does not know still count: re-encoding parsed fields would lose them.
    info = minimal_info(x_unknown=[b"kept", {b"k": 1}])
    data = torrent_bytes(info, announce=b"http://127.0.0.1/a", zzz=1)
    meta = parse_torrent(data)
    raw = bencode.encode(info)
    assert meta.info_bytes == raw
    assert meta.info_hash == hashlib.sha1(raw).digest()
    assert meta.info_hash == v1_hash(lt_info(data))


# --- validation ------------------------------------------------------------------------------


def files_info(*entries: tuple[list[bytes], int], pieces: int | None = None) -> dict[bytes, Any]:
    total = sum(size for _, size in entries)
    count = -(-total // (16 * KIB)) if pieces is None else pieces
    return {
        b"name": b"d",
        b"piece length": 16 * KIB,
        b"pieces": b"\x02" * (20 * count),
        b"files": [{b"length": size, b"path": path} for path, size in entries],
    }


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (minimal_info(piece_length=24 * KIB), "power of two"),
        (minimal_info(piece_length=8 * KIB, pieces=b"\x01" * 60), "power of two"),
        (minimal_info(piece_length=2**29), "power of two"),
        (minimal_info(piece_length=b"16384"), "not an integer"),
        (minimal_info(pieces=b"\x01" * 39), "20-byte"),
        (minimal_info(pieces=b"\x01" * 60), "hashes"),
        (minimal_info(pieces=b"\x01" * 20), "hashes"),
        (minimal_info(length=-1), "non-negative"),
        (minimal_info(length=0, pieces=b""), "no data"),
        (minimal_info(name=b".."), "not allowed"),
        (minimal_info(name=b"a/b"), "'/'"),
        (minimal_info(name=b""), "empty"),
        (minimal_info(name=b"\xff"), "UTF-8"),
        (minimal_info(name=None), "not a string"),
        (minimal_info(files=[{b"length": 1, b"path": [b"a"]}]), "both"),
        (minimal_info(length=None), "neither"),
        (files_info(([b"..", b"etc"], 5)), "not allowed"),
        (files_info(([b"/etc"], 5)), "'/'"),
        (files_info(([b"a", b""], 5)), "empty"),
        (files_info(([], 5)), "empty path"),
        (files_info(([b"a\\b"], 5)), "'\\\\'"),
        (files_info(([b"a\0"], 5)), "NUL"),
        (files_info(([b"."], 5)), "not allowed"),
        (files_info(([b"a"], 5), ([b"a"], 6)), "twice"),
        (files_info(([b"a"], 5), ([b"a", b"b"], 6)), "file and a directory"),
        (files_info(([b"a", b"b"], 5), ([b"a"], 6)), "twice"),
        (files_info(([b"a"], -5), pieces=0), "non-negative"),
        ({**files_info(([b"a"], 5)), b"files": [b"a"]}, "not a dict"),
    ],
)
def test_malformed_info_refused(info: dict[bytes, Any], reason: str) -> None:
    with pytest.raises(MetainfoError, match=reason):
        parse_torrent(torrent_bytes(info))


@pytest.mark.parametrize(
    "data",
    [b"", b"de", b"d4:infoi1ee", b"li1ee", b"d4:infod4:name1:xe", b"d1:b0:1:a0:e"],
)
def test_not_a_torrent(data: bytes) -> None:
    with pytest.raises(MetainfoError):
        parse_torrent(data)


def test_trackers_and_web_seeds() -> None:
    info = minimal_info()
    meta = parse_torrent(torrent_bytes(info, announce=b"http://a/ann"))
    assert meta.trackers == (("http://a/ann",),)
    meta = parse_torrent(
        torrent_bytes(
            info,
            announce=b"http://ignored/",
            **{"announce-list": [[b"http://a/", b"http://b/"], [], [b"http://a/", b"udp://c:1"]]},
        )
    )
    assert meta.trackers == (("http://a/", "http://b/"), ("udp://c:1",))
    assert parse_torrent(torrent_bytes(info, **{"url-list": b"http://m/"})).web_seeds == (
        "http://m/",
    )
    assert parse_torrent(
        torrent_bytes(info, **{"url-list": [b"http://m/", b"", b"http://m/", b"http://n/"]})
    ).web_seeds == ("http://m/", "http://n/")
    assert parse_torrent(torrent_bytes(info)).trackers == ()
    for bad in ({"announce-list": b"x"}, {"announce-list": [b"x"]}, {"url-list": 5}):
        with pytest.raises(MetainfoError):
            parse_torrent(torrent_bytes(info, **bad))


def test_check_path() -> None:
    assert check_path(["pool", "main", "a.deb"]) == ("pool", "main", "a.deb")
    for bad in ([], [""], [".."], ["a", "."], ["a/b"], ["a\\b"], ["\0"]):
        with pytest.raises(MetainfoError):
            check_path(bad)


def test_create_torrent_refuses(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetainfoError):
        create_torrent(tmp_path / "empty", 16 * KIB)
    (tmp_path / "zero").write_bytes(b"")
    with pytest.raises(MetainfoError):
        create_torrent(tmp_path / "zero", 16 * KIB)
    with pytest.raises(MetainfoError):
        create_torrent(tmp_path / "missing", 16 * KIB)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(MetainfoError):
        create_torrent(tmp_path / "f", 1000)
    with pytest.raises(MetainfoError):
        create_torrent(tmp_path, 16 * KIB, files=["../f"])


# --- suite swarms (layout 2) -----------------------------------------------------------------


def test_suite_info_exact_bytes() -> None:
    name = suite_name("Debian", "bookworm-security", "main")
    assert name == "Debian_bookworm-security_main"
    expected = b"d6:layouti2e4:name29:Debian_bookworm-security_maine"
    assert bencode.encode(suite_info(name)) == expected
    assert suite_info_hash(name) == hashlib.sha1(expected).digest()


def test_suite_name_keeps_its_three_parts_apart() -> None:
    assert suite_name("Debian", "bookworm", "updates/main") == "Debian_bookworm_updates-main"
    assert suite_name("My_Org", "stable", "main") == "My-Org_stable_main"
    with pytest.raises(MetainfoError):
        suite_name("", "bookworm", "main")
    with pytest.raises(MetainfoError):
        suite_name("Debian", "book\nworm", "main")


def _packages(entries: list[tuple[str, int, bytes]]) -> bytes:
    return "".join(
        f"Package: p{i}\nFilename: {name}\nSize: {size}\nSHA256: {digest.hex()}\n\n"
        for i, (name, size, digest) in enumerate(entries)
    ).encode()


def _loaded(tmp_path: Path, mirror: str, arch: str, files: list[tuple[str, int, bytes]]):
    packages = _packages(files)
    release = (
        "Origin: Debian\nCodename: bookworm\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-{arch}/Packages\n"
    ).encode()
    archive = Archive(Cache(tmp_path / mirror.replace(":", "_") / arch))
    archive.add_release(mirror, "debian/dists/bookworm/InRelease", release)
    return archive.add_packages(
        mirror, f"debian/dists/bookworm/main/binary-{arch}/Packages", packages
    )


def test_a_suite_is_one_swarm_whatever_the_mirror_architecture_or_index_version(
    tmp_path: Path,
) -> None:
    """Two mirrors, two architectures, two index versions: one info hash, in which no
    mirror, architecture or index digest appears."""
    v1 = [("pool/main/h/hello/hello_2.10-3_amd64.deb", 53_000, SHA)]
    v2 = [*v1, ("pool/main/t/tree/tree_2.1_amd64.deb", 40_000, hashlib.sha256(b"t").digest())]
    identities = {
        suite_identity(_loaded(tmp_path / f"{i}", mirror, arch, files))
        for i, (mirror, arch, files) in enumerate(
            (m, a, f)
            for m in ("deb.example.org", "mirror.example.net:8080")
            for a in ("amd64", "arm64")
            for f in (v1, v2)
        )
    }
    assert len(identities) == 1
    (identity,) = identities
    assert identity.name == "Debian_bookworm_main"
    assert identity.info_hash == suite_info_hash("Debian_bookworm_main")
    assert b"example" not in bencode.encode(suite_info(identity.name))


def test_suite_identity_depends_on_origin_codename_and_component() -> None:
    names = [
        suite_name(*parts)
        for parts in [
            ("Debian", "bookworm", "main"),
            ("Ubuntu", "bookworm", "main"),
            ("Debian", "trixie", "main"),
            ("Debian", "bookworm", "contrib"),
        ]
    ]
    assert len({suite_info_hash(n) for n in names}) == 4


def sha(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def test_index_files_dedupe_and_layout() -> None:
    """One file per distinct Filename (first stanza wins), file-aligned pieces in index
    order, zero-size files with no piece."""
    pl = LAYOUT1_PIECE_LENGTH
    index = scan_packages(
        _packages(
            [
                ("pool/main/a/a_1_amd64.deb", 1000, sha(0)),
                ("pool/main/b/b_1_amd64.deb", 3 * pl + 5, sha(1)),
                ("pool/main/a/a_1_amd64.deb", 2000, sha(9)),  # repeated: the first wins
                ("pool/main/e/empty_1_all.deb", 0, sha(2)),
                ("pool/main/c/c_1_all.deb", pl, sha(3)),
            ]
        )
    )
    assert index.filenames == [
        "pool/main/a/a_1_amd64.deb",
        "pool/main/b/b_1_amd64.deb",
        "pool/main/e/empty_1_all.deb",
        "pool/main/c/c_1_all.deb",
    ]
    assert index.lookup("pool/main/a/a_1_amd64.deb").size == 1000
    layout = Layout.file_aligned(index.sizes, pl)
    assert layout.num_pieces == 1 + 4 + 0 + 1
    assert [layout.file_pieces(i) for i in range(4)] == [
        range(0, 1),
        range(1, 5),
        range(5, 5),
        range(5, 6),
    ]


def test_index_swarm_at_bookworm_scale() -> None:
    rng = random.Random(3)
    entries = [
        (f"pool/main/p{i % 500}/pkg{i}_1.0_amd64.deb", int(rng.lognormvariate(11, 1.9)), sha(i))
        for i in range(63_440)
    ]
    index = scan_packages(_packages(entries))
    assert len(index) == 63_440
    assert index.positions["pool/main/p7/pkg4507_1.0_amd64.deb"] == 4507
    layout = Layout.file_aligned(index.sizes, LAYOUT1_PIECE_LENGTH)
    assert layout.num_pieces == sum(-(-s // LAYOUT1_PIECE_LENGTH) for _, s, _ in entries)
