"""Request targets and file classes: the first thing every apt request meets."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from debtorrent.apt.urls import FileClass, classify, parse_authority, parse_target
from debtorrent.errors import BadRequestError, ForbiddenError

MIRROR = "deb.example.org"


@pytest.mark.parametrize(
    "raw",
    [
        f"/{MIRROR}/debian/dists/bookworm/InRelease",
        f"http://{MIRROR}/debian/dists/bookworm/InRelease",
        f"HTTP://{MIRROR.upper()}/debian/dists/bookworm/InRelease",
        f"/{MIRROR}:80/debian//dists/./bookworm/InRelease",
    ],
)
def test_both_forms_give_the_same_target(raw):
    target = parse_target(raw)
    assert (target.mirror, target.path) == (MIRROR, "debian/dists/bookworm/InRelease")


def test_percent_encoding_is_decoded_exactly_once():
    target = parse_target(
        f"/{MIRROR}/debian/pool/main/g/gcc-12/gcc-12-base_12.2.0-14%2bdeb12u1_amd64.deb"
    )
    assert target.path.endswith("gcc-12-base_12.2.0-14+deb12u1_amd64.deb")
    double = parse_target(f"/{MIRROR}/debian/pool/a%252bb.deb")
    assert double.path == "debian/pool/a%2bb.deb"


def test_port_is_kept_and_url_reencodes():
    target = parse_target("/127.0.0.1:8080/debian/pool/a+b%20c.deb")
    assert target.mirror == "127.0.0.1:8080"
    assert target.url == "http://127.0.0.1:8080/debian/pool/a+b%20c.deb"


@pytest.mark.parametrize(
    "raw",
    [
        f"/{MIRROR}/debian/../../etc/passwd",
        f"/{MIRROR}/debian/%2e%2e/%2E%2E/etc/passwd",
        f"/{MIRROR}/debian/pool/a%00b.deb",
        f"/{MIRROR}/debian\\..\\x",
        f"/{MIRROR}/debian/a%5c..%5cb",
        f"/{MIRROR}/debian/a%0d%0aSet-Cookie:%20x",
        "/../etc/passwd",
        "/",
        f"/{MIRROR}",
        "relative/path",
        "/user@host/x",
        "/bad_host!/x",
        "/host:99999/x",
        f"https://{MIRROR}/x",
        "/" + "a" * 5000,
    ],
)
def test_escapes_and_garbage_are_refused(raw):
    with pytest.raises(BadRequestError):
        parse_target(raw)


@given(st.text(max_size=200))
def test_any_target_parses_safely_or_is_refused(raw):
    try:
        target = parse_target(raw)
    except (BadRequestError, ForbiddenError):
        return
    parts = target.path.split("/")
    assert ".." not in parts and "" not in parts and "." not in parts
    assert "\\" not in target.path and "\0" not in target.path
    assert not any(ord(c) < 32 for c in target.path + target.mirror)


@pytest.mark.parametrize(
    ("path", "cls"),
    [
        ("debian/dists/bookworm/InRelease", FileClass.INDEX),
        ("debian/dists/bookworm/Release", FileClass.INDEX),
        ("debian/dists/bookworm/Release.gpg", FileClass.INDEX),
        ("debian/dists/bookworm/main/binary-amd64/Packages", FileClass.PACKAGES),
        ("debian/dists/bookworm/main/binary-amd64/Packages.xz", FileClass.PACKAGES),
        ("debian/dists/bookworm/main/binary-all/Packages.zst", FileClass.PACKAGES),
        (
            "debian/dists/bookworm/main/debian-installer/binary-amd64/Packages.gz",
            FileClass.PACKAGES,
        ),
        ("debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/" + "ab" * 32, FileClass.BY_HASH),
        ("debian/dists/bookworm/main/binary-amd64/Packages.diff/Index", FileClass.PDIFF),
        ("debian/dists/bookworm/main/i18n/Translation-en.diff/T-2024", FileClass.PDIFF),
        ("debian/pool/main/h/hello/hello_2.10-3_amd64.deb", FileClass.PACKAGE),
        ("debian/pool/main/d/d-i/foo_1_amd64.udeb", FileClass.PACKAGE),
        ("debian/pool/main/h/hello/hello_2.10-3.dsc", FileClass.IMMUTABLE),
        ("debian/pool/main/h/hello/hello_2.10.orig.tar.gz", FileClass.IMMUTABLE),
        ("debian/pool/main/h/hello/hello_2.10-3.diff.gz", FileClass.IMMUTABLE),
        ("debian/dists/bookworm/main/source/Sources.xz", FileClass.VOLATILE),
        ("debian/dists/bookworm/main/i18n/Translation-en.bz2", FileClass.VOLATILE),
        ("debian/dists/bookworm/main/Contents-amd64.gz", FileClass.VOLATILE),
        ("debian/dists/bookworm/main/dep11/Components-amd64.yml.gz", FileClass.VOLATILE),
        ("debian/ls-lR.gz", FileClass.UNKNOWN),
    ],
)
def test_file_classes_follow_the_design_table(path, cls):
    assert classify(path) is cls


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "127.0.0.01", "1.2.3.0x4", "017700000001"],
)
def test_numeric_hosts_other_than_dotted_quads_are_refused(host):
    with pytest.raises(ForbiddenError):
        parse_target(f"/{host}:8080/debian/dists/x/InRelease")
    with pytest.raises(ForbiddenError):
        parse_target(f"http://{host}/debian/dists/x/InRelease")


@pytest.mark.parametrize(
    ("raw", "mirror"),
    [
        ("/[::ffff:127.0.0.1]:8080/x.deb", "[::ffff:7f00:1]:8080"),
        ("/[0:0:0:0:0:0:0:1]/x.deb", "[::1]"),
        ("/[2001:DB8::1]:80/x.deb", "[2001:db8::1]"),
        ("/192.0.2.1/x.deb", "192.0.2.1"),
    ],
)
def test_ip_literals_are_canonical(raw, mirror):
    assert parse_target(raw).mirror == mirror


def test_connect_targets():
    assert parse_authority("Deb.Example.org:443") == ("deb.example.org", 443)
    assert parse_authority("[::1]:443") == ("[::1]", 443)
    for bad in ("deb.example.org", "a/b:443", "user@host:443", "host:0", "host:99999", "[zz]:443"):
        with pytest.raises(BadRequestError):
            parse_authority(bad)
    with pytest.raises(ForbiddenError):
        parse_authority("2130706433:443")
