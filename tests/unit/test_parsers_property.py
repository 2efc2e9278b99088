"""Property tests for the parsers fed from outside that the other unit tests do not fuzz.

``test_urls.py``, ``test_bencode.py``, ``test_wire.py`` and ``test_tracker_parse.py``
already throw hypothesis at request targets, bencode, the wire codec and tracker
replies. Here: Release/InRelease (from the mirror, before apt has checked the
signature), Packages indexes and their decompression (from the mirror), the apt
headers the daemon parses itself (Range, If-Modified-Since, If-Range), the payloads of
BEP 10 and debtorrent's own extension messages (from peers), and the last step of every
failure: the HTTP status apt sees for each error type.

The rule for every parser: on any input it returns something well-formed or raises the
project's own error type for that input (BadIndexError, RangeNotSatisfiable,
ProtocolError); nothing else escapes.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import string
from typing import Any

import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import debtorrent.archive.packages as packages_module
from debtorrent import errors
from debtorrent.apt.app import AptApp
from debtorrent.apt.serve import RangeNotSatisfiable, parse_http_date, parse_range
from debtorrent.archive.packages import COMPRESSIONS, decompress, scan_packages
from debtorrent.archive.release import parse_release, strip_signature
from debtorrent.config import load_config
from debtorrent.errors import BadIndexError, ProtocolError
from debtorrent.torrent import filewire, wire

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- mutations of a valid input ------------------------------------------------------------
@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` after a few random edits: bytes and lines inserted, deleted,
    replaced, duplicated or swapped, or the whole cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup-line", "swap", "cut"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b"\n", b"\n\n", b" ", b":", b"\r", b"\0", b"-", b"..", b"/"])
            )
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if op == "dup-line":
                lines.insert(j, lines[i])
            elif op == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines = lines[:i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


# ---- Release and InRelease -----------------------------------------------------------------
PLAIN = b"Package: x\nFilename: pool/main/x/x_1_amd64.deb\nSize: 3\nSHA256: " + b"a" * 64 + b"\n"
LISTED = {
    f"main/binary-amd64/Packages{ext}": (PLAIN if not ext else PLAIN + ext.encode())
    for ext in COMPRESSIONS
}
LISTED["main/binary-amd64/Release"] = b"Archive: bookworm\nComponent: main\n"


def release_text() -> bytes:
    lines = [
        "Origin: Debian",
        "Label: Debian",
        "Suite: stable",
        "Codename: bookworm",
        "Date: Sat, 10 Jun 2023 09:00:00 UTC",
        "Acquire-By-Hash: yes",
        "Architectures: amd64",
        "Components: main",
    ]
    for field, fn in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{field}:")
        for name, data in LISTED.items():
            lines.append(f" {fn(data).hexdigest()} {len(data):>8} {name}")
    return ("\n".join(lines) + "\n").encode()


RELEASE = release_text()
INRELEASE = (
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
    + RELEASE
    + b"-----BEGIN PGP SIGNATURE-----\n\niHUEARYIAB0WIQ\n=abcd\n-----END PGP SIGNATURE-----\n"
)
RELEASE_PATHS = ("debian/dists/bookworm/InRelease", "dists/sid/Release", "a/b/dists/x/y/Release")


def check_release(path: str, data: bytes) -> None:
    """Only BadIndexError may escape; what parses is usable."""
    try:
        info = parse_release(path, data)
    except BadIndexError:
        return
    assert info.entries, "a Release without entries was accepted"
    assert info.dist == path.rsplit("/", 1)[0]
    for name, entry in info.entries.items():
        assert not name.startswith("/") and ".." not in name.split("/"), name
        assert isinstance(entry.size, int) and isinstance(entry.sha256, str)
        by_hash = f"{info.dist}/{name.rpartition('/')[0]}/by-hash/SHA256/{entry.sha256}"
        info.resolve_by_hash(by_hash)  # must not raise
        info.entry(f"{info.dist}/{name}")


def test_the_seed_release_texts_parse() -> None:
    for data in (RELEASE, INRELEASE):
        info = parse_release(RELEASE_PATHS[0], data)
        assert set(info.entries) == set(LISTED)


@FUZZ
@given(st.sampled_from(RELEASE_PATHS), st.binary(max_size=400))
@example("debian/dists/bookworm/Release", b"SHA256:\n")
@example("debian/dists/bookworm/Release", b"SHA256:\n a\n")
@example("debian/dists/bookworm/Release", b"-----BEGIN PGP SIGNED MESSAGE-----\n\n")
@example("debian/dists/bookworm/Release", b"SHA256: x\n y")
@example("debian/dists/bookworm/Release", b"\xef\xbb\xbfSHA256:\n a b c\n")
def test_release_on_arbitrary_bytes(path: str, data: bytes) -> None:
    check_release(path, data)


@FUZZ
@given(st.text(alphabet=string.printable + "\u00e9\u2028\x85", max_size=300))
def test_release_on_arbitrary_text(text: str) -> None:
    check_release("debian/dists/bookworm/Release", text.encode())


@FUZZ
@given(st.sampled_from([RELEASE, INRELEASE]).flatmap(mutated))
def test_release_on_mutated_real_texts(data: bytes) -> None:
    check_release("debian/dists/bookworm/InRelease", data)


@FUZZ
@given(st.text(max_size=300))
def test_strip_signature_returns_text_or_bad_index(text: str) -> None:
    for candidate in (text, "-----BEGIN PGP SIGNED MESSAGE-----\n" + text):
        try:
            assert isinstance(strip_signature(candidate), str)
        except BadIndexError:
            pass


_BAD_RELEASE_LINES = [
    b" " + b"z" * 64 + b" 10 main/binary-amd64/Packages",  # not hex
    b" " + b"a" * 64 + b" -5 main/binary-amd64/Packages",  # negative size
    b" " + b"A" * 63 + b"g 10 main/binary-amd64/Packages",
]


@pytest.mark.parametrize("line", _BAD_RELEASE_LINES, ids=["not-hex", "negative-size", "g-digit"])
def test_release_refuses_malformed_sha256_lines(line: bytes) -> None:
    """A SHA256 line whose digest is not 64 hex digits or whose size is negative is a
    bad line, like one with a digest of the wrong length.

    Regression (fixed): ``parse_release`` checks only
    ``len(digest) != 64`` and ``int(size)``, so ``zzzz...`` and ``-5`` are accepted as
    an entry; every index checked against it then fails verification (a 502) instead of
    the Release being reported as malformed.
    """
    with pytest.raises(BadIndexError):
        parse_release("debian/dists/bookworm/Release", b"Origin: x\nSHA256:\n" + line + b"\n")


# ---- Packages ------------------------------------------------------------------------------
NAME_CHARS = string.ascii_letters + string.digits + "+-._~"
safe_names = st.lists(
    st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda p: p not in (".", "..")),
    min_size=1,
    max_size=4,
).map(lambda parts: "pool/" + "/".join(parts) + ".deb")


@st.composite
def stanza(draw: st.DrawFn) -> tuple[str, int, bytes, bytes]:
    """A well-formed stanza in a random field order, with distractions: other fields,
    a Description whose continuation lines mention Filename and SHA256."""
    name = draw(safe_names)
    size = draw(st.integers(0, 2**40))
    digest = draw(st.binary(min_size=32, max_size=32))
    fields = [
        f"Filename: {name}",
        f"Size: {size}",
        f"SHA256: {digest.hex()}",
        f"MD5sum: {draw(st.binary(min_size=16, max_size=16)).hex()}",
        f"Package: {draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))}",
        "Description: a package\n Filename: not/this.deb\n SHA256: " + "0" * 64 + "\n .",
    ]
    if draw(st.booleans()):
        fields.append(f"SHA1: {draw(st.binary(min_size=20, max_size=20)).hex()}")
    order = draw(st.permutations(fields))
    return name, size, digest, ("\n".join(order) + "\n").encode()


@FUZZ
@given(st.lists(stanza(), min_size=1, max_size=8), st.booleans())
def test_scan_packages_reads_every_well_formed_stanza(stanzas, crlf: bool) -> None:
    """Whatever the field order, the first entry of each file name, exactly."""
    data = b"\n".join(s[3] for s in stanzas)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    want: dict[str, tuple[int, bytes]] = {}
    for name, size, digest, _ in stanzas:
        want.setdefault(name, (size, digest))
    index = scan_packages(data)
    assert [(e.filename, e.size, e.sha256) for e in index] == [
        (n, s, d) for n, (s, d) in want.items()
    ]
    assert index.sha256 == hashlib.sha256(data).hexdigest()


def check_index(data: bytes) -> None:
    """Never raises; every entry it returns is one the input names, safe and complete."""
    index = scan_packages(data)
    assert len(index.filenames) == len(index.sizes) == len(index.digests) // 32
    assert len(set(index.filenames)) == len(index.filenames)
    for pos, entry in enumerate(index):
        assert index.positions[entry.filename] == pos
        assert entry.size >= 0 and len(entry.sha256) == 32
        name = entry.filename
        assert name and not name.startswith("/") and "\\" not in name, name
        assert all(part not in ("", ".", "..") for part in name.split("/")), name
        assert name.encode() in data


PACKAGES = b"\n".join(
    (
        f"Package: p{i}\nVersion: 1.{i}\nFilename: pool/main/p/p{i}/p{i}_1.{i}_amd64.deb\n"
        f"Size: {100 + i}\nMD5sum: {'0' * 32}\nSHA256: {hashlib.sha256(bytes([i])).hexdigest()}\n"
    ).encode()
    for i in range(6)
)
_HUGE = b"Filename: pool/a.deb\nSize: " + b"9" * 30 + b"\nSHA256: " + b"a" * 64 + b"\n"


@FUZZ
@given(st.binary(max_size=600))
@example(b"Filename: /etc/passwd\nSize: 1\nSHA256: " + b"a" * 64)
@example(b"Filename: pool/../../x\nSize: 1\nSHA256: " + b"a" * 64)
@example(b"Filename: pool\\..\\x\nSize: 1\nSHA256: " + b"a" * 64)
@example(b"Filename: \nSize: 1\nSHA256: " + b"a" * 64)
@example(b"Filename: pool/a.deb\nSize: -1\nSHA256: " + b"a" * 64)
@example(b"Filename: pool/a.deb\nSize: 1\nSHA256: " + "\u0663".encode() * 64)
def test_scan_packages_on_arbitrary_bytes(data: bytes) -> None:
    check_index(data)


@FUZZ
@given(st.just(PACKAGES).flatmap(mutated))
def test_scan_packages_on_mutated_real_indexes(data: bytes) -> None:
    check_index(data)


def test_scan_packages_survives_a_size_too_large_for_the_index() -> None:
    """``Size: 999...9`` (30 digits) is a malformed stanza: skipped, like ``Size: x``.

    Regression (fixed): ``scan_packages`` parses it with ``int()`` (no upper
    bound) and appends it to ``PackageIndex.sizes``, an ``array("q")``: OverflowError
    ("int too big to convert") escapes, so one such stanza makes the whole index
    unusable (``Proxy._load_index`` -> ``Archive.add_packages``) instead of one skipped
    stanza. Any size >= 2**63 does it.
    """
    index = scan_packages(_HUGE + b"\n" + PACKAGES)
    assert "pool/a.deb" not in index.positions
    assert len(index) == 6


def test_scan_packages_refuses_control_characters_in_file_names() -> None:
    """No archive has a control character in a Filename, and apt can never ask for one
    (``parse_target`` refuses them): such a stanza should be skipped.

    Regression (fixed): ``_safe_filename`` refuses absolute names,
    ``.``/``..``/empty segments and backslashes only, so ``pool/a<NUL>b.deb`` (or with
    CR, TAB, ESC, DEL) is indexed; any ``os`` call on its cache path raises ValueError
    ("embedded null byte"), which the callers' ``except OSError`` handlers do not expect.
    """
    kept = []
    for char in ("\0", "\r", "\t", "\x1b", "\x7f"):
        data = f"Filename: pool/a{char}b.deb\nSize: 1\nSHA256: {'a' * 64}\n".encode()
        kept += scan_packages(data).filenames
    assert kept == [], f"indexed: {kept!r}"


# ---- decompression ---------------------------------------------------------------------------
COMPRESSORS = {
    ".gz": lambda d: gzip.compress(d, mtime=0),
    ".xz": lzma.compress,
    ".bz2": bz2.compress,
    # as the lz4 and zstd tools write them: with a checksum of the content (a frame
    # without one cannot tell a flipped literal byte, and the Release hash then does)
    ".lz4": lambda d: lz4.frame.compress(d, content_checksum=True),
    ".zst": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
}


@FUZZ
@given(st.sampled_from((*COMPRESSIONS, ".Z", ".zip")), st.binary(max_size=300))
def test_decompress_garbage_raises_only_bad_index(suffix: str, data: bytes) -> None:
    try:
        out = decompress(data, suffix)
    except BadIndexError:
        return
    assert isinstance(out, (bytes, bytearray))
    assert suffix != "" or out == data


@FUZZ
@given(st.sampled_from(sorted(COMPRESSORS)), st.data())
def test_decompress_truncated_or_corrupted_index_is_bad_index_not_partial(
    suffix: str, data: st.DataObject
) -> None:
    """A compressed index cut short or with a flipped byte never comes back as a
    shorter (or different) index: it is refused.

    (Regression: a small .lz4 frame cut inside its header used to come back as ``b""``.)
    """
    packed = COMPRESSORS[suffix](PACKAGES)
    cut = data.draw(st.integers(1, len(packed) - 1))  # (an empty .gz or .bz2 is b"")
    damaged = [packed[:cut]]
    pos = data.draw(st.integers(0, len(packed) - 1))
    flipped = bytearray(packed)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    damaged.append(bytes(flipped))
    for blob in damaged:
        try:
            out = decompress(blob, suffix)
        except BadIndexError:
            continue
        assert out == PACKAGES, f"{suffix}: damaged input decompressed to other bytes"


def test_decompress_stops_at_the_uncompressed_size_limit(monkeypatch) -> None:
    """``_MAX_UNCOMPRESSED`` ("stops a decompression bomb") holds for every format.

    (Regression: no format used to honour it; a ``Packages.xz`` of a few MB could
    expand to tens of GB in memory, checked only against a Release from the same mirror.)
    """
    monkeypatch.setattr(packages_module, "_MAX_UNCOMPRESSED", 1 << 20)
    bomb = b"\0" * (4 << 20)
    unlimited = []
    for suffix, pack in COMPRESSORS.items():
        try:
            out = decompress(pack(bomb), suffix)
        except BadIndexError:
            continue
        unlimited.append(f"{suffix} ({len(out) >> 20} MiB)")
    assert not unlimited, f"no limit on: {', '.join(unlimited)}"


# ---- headers apt sends: Range, If-Modified-Since, If-Range ---------------------------------------
range_bound = st.one_of(
    st.just(""), st.integers(-5, 2**70).map(str), st.text("0123456789 +-_", max_size=6)
)
range_headers = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda unit, a, b: f"{unit}={a}-{b}",
        st.sampled_from(["bytes", "BYTES", " bytes ", "items", ""]),
        st.one_of(
            st.just(""), st.integers(-5, 2**70).map(str), st.text("0123456789 +-_", max_size=6)
        ),
        st.one_of(
            st.just(""), st.integers(-5, 2**70).map(str), st.text("0123456789 +-_,", max_size=6)
        ),
    ),
)


@FUZZ
@given(range_headers, st.integers(0, 2**40))
@example("bytes=0-0", 0)
@example("bytes=-0", 0)
@example("bytes=1_0-2_0", 100)
@example("bytes=\u0663-", 100)  # a non-ASCII digit
@example("bytes=-1", 0)
def test_parse_range_gives_a_span_inside_the_file_or_none(header: str, size: int) -> None:
    """None (send it all), a non-empty span inside the file, or RangeNotSatisfiable.

    Regression (fixed): a suffix range on an empty file,
    ``parse_range("bytes=-1", 0)``, returns the empty span ``(0, 0)``;
    ``AptApp._send_cached`` then answers 206 with ``Content-Range: bytes 0--1/0`` (not
    a valid header) instead of 416. Empty files are real in an archive (Debian's
    ``debian-installer/binary-all/Packages`` is one), though apt itself only sends
    ``bytes=N-`` ranges.
    """
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size, (header, size, span)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
            st.sampled_from(["Mon", "Tue", "xyz"]),
            st.integers(0, 99),
            st.sampled_from(["Jan", "Feb", "Dec", "Foo"]),
            st.integers(-1, 10**12),
            st.integers(0, 99),
            st.integers(0, 99),
            st.integers(0, 99),
            st.sampled_from(["GMT", "UTC", "+2359", "-2359", "+9999", "-0000", "EST", "Z"]),
        ),
    )
)
@example("Mon, 01 Jan 0001 00:00:00 +2359")
@example("Fri, 31 Dec 9999 23:59:59 -2359")
@example("0 JAN 2147483648 0:0 GMT")
def test_parse_http_date_never_raises(value: str) -> None:
    """If-Modified-Since and If-Range come from any allowed client.

    Regression (fixed): a year past 2**31 (``0 JAN 2147483648 0:0 GMT``)
    makes ``email.utils.parsedate_to_datetime`` raise OverflowError, which
    ``parse_http_date`` (``debtorrent/apt/serve.py``) does not catch (it catches
    TypeError, ValueError, IndexError): the request for a cached file then ends in
    pywsgi's generic 500 with a traceback in the log, instead of the header being
    ignored (see ``test_hostile_apt.py::test_a_bogus_if_modified_since_is_ignored``).
    """
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)


# ---- extension payloads from peers ---------------------------------------------------------------
bencoded = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from([b"m", b"v", b"p", b"reqq", b"msg_type", b"file", b"hashes", b"t"])
            | st.binary(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
payloads = st.dictionaries(
    st.sampled_from([b"m", b"v", b"p", b"reqq", b"msg_type", b"file", b"hashes", b"t"]),
    st.integers(-3, 300) | st.binary(max_size=70) | bencoded,
    max_size=6,
)


@FUZZ
@given(payloads | st.dictionaries(st.binary(max_size=4), bencoded, max_size=4))
def test_extension_handshake_parses_or_is_a_protocol_error(payload: dict) -> None:
    try:
        hs = wire.ExtensionHandshake.parse(payload)
    except ProtocolError:
        return
    assert all(isinstance(k, str) and 0 < v <= 255 for k, v in hs.m.items())
    assert hs.p is None or 0 < hs.p < 65536
    assert hs.reqq is None or hs.reqq > 0
    assert hs.v is None or isinstance(hs.v, str)


@FUZZ
@given(st.sampled_from(filewire.NAMES), payloads | bencoded, st.binary(max_size=40))
def test_file_plane_messages_decode_or_are_a_protocol_error(
    name: str, payload: Any, trailing: bytes
) -> None:
    try:
        msg = filewire.decode(name, payload, trailing)
    except ProtocolError:
        return
    digest = getattr(msg, "sha256", None)
    assert digest is None or len(digest) == 32
    if isinstance(msg, filewire.HashesReply):
        assert msg.hashes and len(msg.hashes) % 32 == 0
    if isinstance(msg, filewire.FetchStarted):
        assert 0 <= msg.started_ms < 1 << 63
    if isinstance(msg, (filewire.Request, filewire.Piece)):
        assert msg.offset % 16384 == 0 and 0 <= msg.piece < filewire.MAX_PIECE


# ---- each error type reaches apt as a clear HTTP status ------------------------------------------
EXPECTED_STATUS = {
    errors.BadRequestError: 400,
    errors.ForbiddenError: 403,
    errors.NotFoundError: 404,
    errors.MirrorError: 502,
    errors.MirrorNotFoundError: 404,
    errors.MirrorTimeoutError: 504,
    errors.MirrorForbiddenError: 403,
    errors.BusyError: 503,
    errors.DiskFullError: 507,
    errors.CacheError: 503,
}


def _make(cls: type, reason: str) -> errors.DebtorrentError:
    if issubclass(cls, errors.MirrorError):
        return cls("http://deb.example.org/debian/x", reason)
    if issubclass(cls, errors.VerificationError):
        return cls("debian/x", reason)
    if issubclass(cls, errors.ConfigError):
        return cls("option", reason)
    return cls(reason)


def _all_errors() -> list[type]:
    out, todo = [], [errors.DebtorrentError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return sorted(set(out), key=lambda c: c.__name__)


class _RaisingProxy:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def resolve(self, target, conditional=False):
        raise self.exc


class _FailingDownload:
    """A download whose headers came but whose body fails before its first byte."""

    mirror, path, length, last_modified = "deb.example.org", "debian/x.deb", 10, None

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def read(self, offset, size, timeout):
        raise self.exc


class _StreamingProxy(_RaisingProxy):
    def resolve(self, target, conditional=False):
        return _FailingDownload(self.exc)


def _call(app: AptApp) -> tuple[int, dict[str, str], bytes]:
    got: dict[str, Any] = {}

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = status, dict(headers)
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "REMOTE_ADDR": "127.0.0.1",
        "PATH_INFO": "/deb.example.org/debian/pool/main/h/hello/hello_1_amd64.deb",
        "debtorrent.raw_target": "/deb.example.org/debian/pool/main/h/hello/hello_1_amd64.deb",
    }
    body = b"".join(app(environ, start_response))
    code = int(got["status"].split()[0])
    # the reason phrase carries the cause (apt prints it): printable ASCII, one line, e.g.
    # "403 Forbidden (not a file of ...)" or "502 Mirror refused connection (host:80)"
    assert re.fullmatch(r"\d{3} [A-Za-z][ -~]{0,149}", got["status"]), got["status"]
    return code, got["headers"], body


CONFIG = load_config({})


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("proxy", [_RaisingProxy, _StreamingProxy], ids=["resolve", "body"])
def test_every_error_type_becomes_its_http_status(cls: type, proxy: type) -> None:
    """Raised while resolving a request or before a streamed body's first byte, each
    project error becomes its ``status`` with a one-line plain-text body naming the
    reason; never a traceback. Types without a status are a 500 while resolving and a
    502 once the mirror's answer has started (``AptApp._body``)."""
    exc = _make(cls, "the reason")
    code, headers, body = _call(AptApp(CONFIG, proxy(exc)))
    default = 500 if proxy is _RaisingProxy else 502
    want = EXPECTED_STATUS.get(cls, getattr(cls, "status", default))
    assert code == want, (cls.__name__, code)
    assert int(headers["Content-Length"]) == len(body)
    assert body.startswith(str(code).encode()) and b"the reason" in body
    assert body.count(b"\n") == 1 and body.endswith(b"\n")


def test_the_statuses_apt_is_promised() -> None:
    for cls, code in EXPECTED_STATUS.items():
        assert cls.status == code, cls.__name__


@FUZZ
@given(st.sampled_from(sorted(EXPECTED_STATUS, key=lambda c: c.__name__)), st.text(max_size=80))
def test_an_error_reason_cannot_forge_lines_or_headers(cls: type, reason: str) -> None:
    code, headers, body = _call(AptApp(CONFIG, _RaisingProxy(_make(cls, reason))))
    assert code == EXPECTED_STATUS[cls]
    assert body.count(b"\n") == 1 and b"\r" not in body
    assert set(headers) == {"Content-Type", "Content-Length"}
