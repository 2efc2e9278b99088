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
    swarm_info,
    swarm_info_hash,
    swarm_name,
)
from debtorrent.torrent.packages import swarm_identity

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


# --- Packages swarms ----------------------------------------------------------------------------


def test_swarm_info_exact_bytes() -> None:
    info = swarm_info("Debian", "bookworm", "main", "amd64", SHA)
    assert info == {
        b"name": b"Debian_bookworm_main_binary-amd64",
        b"packages-sha256": SHA,
        b"piece length": 262144,
        b"layout": 1,
    }
    expected = (
        b"d6:layouti1e4:name33:Debian_bookworm_main_binary-amd64"
        b"15:packages-sha25632:" + SHA + b"12:piece lengthi262144ee"
    )
    assert bencode.encode(info) == expected
    assert swarm_info_hash("Debian", "bookworm", "main", "amd64", SHA) == (
        hashlib.sha1(expected).digest()
    )


def test_swarm_identity_depends_on_every_input_and_nothing_else() -> None:
    base = ("Debian", "bookworm", "main", "amd64", SHA)
    h = swarm_info_hash(*base)
    assert swarm_info_hash(*base) == h  # deterministic
    variants = [
        ("Ubuntu", *base[1:]),
        (base[0], "trixie", *base[2:]),
        (*base[:2], "contrib", *base[3:]),
        (*base[:3], "arm64", base[4]),
        (*base[:4], hashlib.sha256(b"other").digest()),
    ]
    assert len({swarm_info_hash(*v) for v in variants} | {h}) == len(variants) + 1


def _packages(entries: list[tuple[str, int, bytes]]) -> bytes:
    return "".join(
        f"Package: p{i}\nFilename: {name}\nSize: {size}\nSHA256: {digest.hex()}\n\n"
        for i, (name, size, digest) in enumerate(entries)
    ).encode()


def test_swarm_from_an_index_is_deterministic_and_mirror_independent(tmp_path: Path) -> None:
    """The same Packages seen through two mirrors is one swarm: same info hash, same
    layout; the mirror's name appears nowhere in what is hashed."""
    packages = _packages([("pool/main/h/hello/hello_2.10-3_amd64.deb", 53_000, SHA)])
    release = (
        "Origin: Debian\nCodename: bookworm\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
    ).encode()
    identities = []
    for mirror in ("deb.example.org", "mirror.example.net:8080"):
        archive = Archive(Cache(tmp_path / mirror.replace(":", "_")))
        archive.add_release(mirror, "debian/dists/bookworm/InRelease", release)
        loaded = archive.add_packages(
            mirror, "debian/dists/bookworm/main/binary-amd64/Packages", packages
        )
        info_hash, layout = swarm_identity(loaded)
        identities.append((info_hash, layout.num_pieces, loaded.name))
    expected = swarm_info_hash(
        "Debian", "bookworm", "main", "amd64", hashlib.sha256(packages).digest()
    )
    assert identities[0] == identities[1] == (expected, 1, "Debian_bookworm_main_binary-amd64")
    info = swarm_info("Debian", "bookworm", "main", "amd64", hashlib.sha256(packages).digest())
    assert b"example" not in bencode.encode(info)


@pytest.mark.parametrize(
    "args",
    [
        ("", "bookworm", "main", "amd64", SHA),
        ("Debian", "book\nworm", "main", "amd64", SHA),
        ("Debian", "bookworm", "main", "amd64", SHA[:31]),
        ("Debian", "bookworm", "main", "amd64", SHA.hex()),
    ],
)
def test_swarm_info_refuses(args: tuple[Any, ...]) -> None:
    with pytest.raises(MetainfoError):
        swarm_info(*args)


def test_swarm_name() -> None:
    assert swarm_name("Debian", "bookworm-security", "updates/main", "i386") == (
        "Debian_bookworm-security_updates/main_binary-i386"
    )


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
