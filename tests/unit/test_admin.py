"""Pure parts of issue 14: token buckets, log limiting, attempt dates, reason phrases,
the DNS failure, recent errors kept once, the command line and the man page's commands."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
import urllib3.util.connection

from debtorrent.apt.app import _etag_matches, _if_range_matches, _phrase, reason_phrase
from debtorrent.cache import AttemptDates
from debtorrent.cachetool import _is_saved_index, looks_like_cache
from debtorrent.cli import COMMANDS, _repeated_option, parse_command, usage
from debtorrent.errors import (
    BadRequestError,
    CacheError,
    ConfigError,
    DiskFullError,
    ForbiddenError,
    MirrorError,
    MirrorNotFoundError,
    MirrorTimeoutError,
    NotFoundError,
    VerificationError,
)
from debtorrent.mirror import Mirror
from debtorrent.ratelimit import LogLimiter, RateLimits, RateMeter, TokenBucket
from debtorrent.status import RecentErrors

ROOT = Path(__file__).resolve().parents[2]


# --- token buckets -----------------------------------------------------------------------


def test_no_limit_never_waits_but_still_measures() -> None:
    bucket = TokenBucket()
    assert not bucket.limited
    assert [bucket.take(1 << 20, t) for t in (0.0, 0.0, 0.1)] == [0.0, 0.0, 0.0]
    assert bucket.current(0.1) > 0 and bucket.meter.total == 3 << 20


def test_a_bucket_lends_its_burst_then_makes_callers_wait_their_turn() -> None:
    bucket = TokenBucket(rate=1000, burst=500)
    assert bucket.take(500, 0.0) == 0.0  # the saved credit
    assert bucket.take(500, 0.0) == pytest.approx(0.5)  # debt: wait for it
    assert bucket.take(100, 0.0) == pytest.approx(0.6)  # a second caller queues behind
    assert bucket.take(100, 0.7) == pytest.approx(0.0)  # 700 refilled: 600 debt paid, +0
    assert bucket.take(1000, 10.0) == pytest.approx(0.5)  # credit never beyond the burst


def test_moving_n_bytes_takes_n_over_rate_seconds() -> None:
    """Whatever the chunk sizes, sleeping what take() says moves ``rate`` bytes a second."""
    bucket = TokenBucket(rate=200_000, burst=81920)
    now, moved = 0.0, 0
    for size in [65536, 16384, 1000, 65536] * 50:
        now += bucket.take(size, now)
        moved += size
    assert now == pytest.approx((moved - 81920) / 200_000, rel=1e-6)


def test_default_burst_and_snapshot() -> None:
    assert TokenBucket(rate=1e6).burst == 250_000  # a quarter second
    assert TokenBucket(rate=1000).burst == 81920  # at least a block plus a read
    limits = RateLimits.of(upload=1000)
    limits.download.take(500, 1.0)
    snap = limits.snapshot(1.0)
    assert snap["upload"] == {"rate": 0, "limit": 1000}
    assert snap["download"]["limit"] is None and snap["download"]["rate"] == 100
    with pytest.raises(ValueError):
        TokenBucket(rate=-1)


def test_rate_meter_decays_to_nothing() -> None:
    meter = RateMeter()
    meter.add(5000, 10.0)
    assert meter.rate(10.0) == 1000
    assert meter.rate(12.5) == pytest.approx(500)
    assert meter.rate(20.0) == 0


def test_log_limiter_says_how_many_it_held_back() -> None:
    limiter = LogLimiter(interval=60, max_keys=2)
    assert limiter.allow("192.0.2.7", 0) == 0
    assert [limiter.allow("192.0.2.7", t) for t in (1, 2, 59)] == [None, None, None]
    assert limiter.allow("192.0.2.7", 61) == 3
    assert limiter.allow("192.0.2.8", 62) == 0
    assert limiter.allow("192.0.2.9", 63) == 0  # bounded: the oldest address forgotten
    assert limiter.allow("192.0.2.7", 64) == 0


# --- attempt dates -------------------------------------------------------------------------


def test_attempt_dates_never_repeat_for_a_path_and_follow_the_start() -> None:
    dates = AttemptDates()
    first = [dates.issue("/c/a.deb") for _ in range(5)]
    assert first == sorted(set(first)) and all(d == int(d) for d in first)
    assert first[0] >= dates._floor
    assert dates.issue("/c/b.deb") <= first[1]  # another path is independent
    small = AttemptDates(max_paths=2)
    small.issue("x")
    small.issue("y")
    small.issue("z")
    assert list(small._last) == ["y", "z"]


# --- reason phrases -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "phrase"),
    [
        (
            MirrorError("http://deb.example.org:80/debian/x", "refused connection"),
            502,
            "Mirror refused connection (deb.example.org:80)",
        ),
        (
            MirrorTimeoutError("http://deb.example.org/debian/x", "timed out after 30 s"),
            504,
            "Mirror timed out after 30 s (deb.example.org)",
        ),
        (
            MirrorNotFoundError("http://deb.example.org/d/x", "has no such file (404)"),
            404,
            "Not Found on the mirror (deb.example.org)",
        ),
        (
            MirrorTimeoutError("pool/x.deb", "no progress from peers or mirror in time"),
            504,
            "No progress from peers or mirror in time",
        ),
        (ForbiddenError("client 192.0.2.7 not allowed"), 403, "Client 192.0.2.7 not allowed"),
        (ForbiddenError("mirror evil.example not allowed"), 403, "Mirror evil.example not allowed"),
        (VerificationError("x", "SHA256 does not match the index"), 502, None),
        (DiskFullError("x.deb: cache filesystem full"), 507, "Cache disk full"),
        (CacheError("x.deb: Permission denied"), 503, "Cache error: x.deb: Permission denied"),
        (NotFoundError("pdiffs are not served"), 404, "Pdiffs are not served"),
        (BadRequestError("path escapes"), 400, "Bad Request: path escapes"),
        (ConfigError("x", "y"), 500, "Internal Server Error"),
    ],
)
def test_reason_phrases_carry_the_cause(exc, code: int, phrase: str | None) -> None:
    if phrase is None:
        phrase = "Verification failed: SHA256 does not match the index"
    assert reason_phrase(exc, code) == phrase


def test_a_phrase_is_one_short_printable_line() -> None:
    nasty = "a\r\nSet-Cookie: x=1\x00\u00e9" + "b" * 300
    out = _phrase(nasty)
    assert re.fullmatch(r"[ -~]{1,120}", out) and out.endswith("...")
    assert "\r" not in out and "\n" not in out


def test_validators() -> None:
    tag = '"' + "ab" * 32 + '"'
    assert _if_range_matches(tag, tag, "Mon, 01 Jan 2024 00:00:00 GMT")
    assert not _if_range_matches("W/" + tag, tag, "x")  # weak tags never match If-Range
    assert _if_range_matches("Mon, 01 Jan 2024 00:00:00 GMT", None, "Mon, 01 Jan 2024 00:00:00 GMT")
    assert not _if_range_matches(
        "Mon, 01 Jan 2024 00:00:01 GMT", tag, "Mon, 01 Jan 2024 00:00:00 GMT"
    )
    assert _etag_matches(f'"x", W/{tag}', tag) and _etag_matches("*", tag)
    assert not _etag_matches(tag, None)


# --- the mirror's failures, as apt will read them --------------------------------------------


def test_a_name_that_does_not_resolve_is_said_to_be_dns(monkeypatch) -> None:
    """A DNS failure cannot be made here without asking a real resolver (nothing may
    leave this machine), so getaddrinfo is made to fail as glibc does."""

    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(urllib3.util.connection.socket, "getaddrinfo", no_such_name)
    mirror = Mirror(2.0, lambda host: True)
    with pytest.raises(MirrorError) as caught:
        mirror.get("http://deb.example.org/debian/dists/bookworm/InRelease")
    assert caught.value.reason == "host name not found in DNS"
    assert reason_phrase(caught.value, 502) == "Mirror host name not found in DNS (deb.example.org)"
    assert mirror.failures["deb.example.org"][1] == "host name not found in DNS"


def test_a_closed_port_is_a_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once closed
    mirror = Mirror(2.0, lambda host: True)
    with pytest.raises(MirrorError) as caught:
        mirror.get(f"http://127.0.0.1:{port}/x")
    assert type(caught.value) is MirrorError and caught.value.reason == "refused connection"


# --- recent errors -------------------------------------------------------------------------


def test_one_failure_logged_by_two_layers_is_listed_once() -> None:
    handler = RecentErrors()
    logger = logging.getLogger("debtorrent.test_admin")
    logger.addHandler(handler)
    try:
        failure = MirrorError("http://deb.example.org/x", "refused connection")
        logger.warning("fetch failed: %s", failure, extra={"failure": failure})
        logger.warning("127.0.0.1 /x -> 502: %s", failure, extra={"failure": failure})
        logger.warning("the same words")
        logger.warning("the same words")
    finally:
        logger.removeHandler(handler)
    assert [text for _, text in handler.entries] == [
        "fetch failed: http://deb.example.org/x: refused connection",
        "the same words",
    ]
    assert handler.counts["the same words"] == 2


# --- the command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["status"], "status"),
        (["status", "--json"], "status"),
        (["cache", "verify"], "cache verify"),
        (["cache", "clear", "--all"], "cache clear"),
        (["import", "/var/cache/apt/archives", "x.deb"], "import"),
        (["--port", "7000"], None),
        (["--tracker", "http://t.example/a", "--tracker", "udp://t.example:1"], None),
        (["status", "--tracker", "http://t.example/a", "--tracker", "udp://t.example:1"], "status"),
        (
            [
                "import",
                "x.deb",
                "--tracker",
                "http://t.example/a",
                "--tracker",
                "udp://t.example:1",
            ],
            "import",
        ),
    ],
)
def test_commands_parse(argv: list[str], words: str | None) -> None:
    command, args, config = parse_command([*argv, "-c", "/dev/null"])
    assert (command.words if command else None) == words
    if argv[:2] == ["import", "/var/cache/apt/archives"]:
        assert args["PATH"] == ["/var/cache/apt/archives", "x.deb"]
    if "--tracker" in argv:  # each value once (docopt 0.6 repeats one across usage lines)
        assert config.tracker == ["http://t.example/a", "udp://t.example:1"]


@pytest.mark.parametrize(
    ("argv", "twice"),
    [
        (["--port", "1", "--port", "2"], "--port"),
        (["--port=1", "--port", "2"], "--port"),
        (["-c", "a", "--config=b"], "--config"),
        (["--tracker", "a", "--tracker", "b"], None),
        (["--log-file", "--port", "--port", "1"], None),  # a value that looks like an option
        (["status", "--json", "--json"], None),  # docopt's to refuse
    ],
)
def test_a_single_value_option_given_twice_is_named(argv: list[str], twice: str | None) -> None:
    assert _repeated_option(argv) == twice


def test_the_help_lists_every_command_and_no_flag_starts_a_line() -> None:
    text = usage()
    pattern = text.split("Usage:", 1)[1].split("\n\n", 1)[0]
    listed = text.split("Commands", 1)[1]
    for command in COMMANDS:
        assert f"{command.words} {command.arguments}".strip() in pattern
        assert f"\n  {command.words} " in listed
    body = text.split("Commands", 1)[1].split("Options:", 1)[0]
    assert not [line for line in body.splitlines() if line.strip().startswith("-")]


def test_every_command_is_in_the_man_page() -> None:
    page = (ROOT / "man" / "debtorrent.1").read_text()
    section = page.split("\n.SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0]
    plain = section.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
    plain = plain.replace("\\fI", "")
    for command in COMMANDS:
        assert f"debtorrent {command.words}" in plain, command.words
        for flag in command.flags:
            assert flag in plain, flag


# --- the cache tool ------------------------------------------------------------------------


def test_what_looks_like_a_cache(tmp_path: Path) -> None:
    assert looks_like_cache(tmp_path) is None  # empty
    (tmp_path / "deb.example.org").mkdir()
    (tmp_path / "127.0.0.1:8080").mkdir()
    (tmp_path / ".dt-tmp-abc").write_text("")
    assert looks_like_cache(tmp_path) is None
    (tmp_path / "lock").write_text("")
    assert "file 'lock'" in (looks_like_cache(tmp_path) or "")
    (tmp_path / "lock").unlink()
    (tmp_path / "My Documents").mkdir()
    assert "not a mirror's host name" in (looks_like_cache(tmp_path) or "")


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("debian/dists/bookworm/InRelease", True),
        ("debian/dists/bookworm/Release", True),
        ("debian/dists/bookworm/main/binary-amd64/Packages", True),
        ("debian/dists/bookworm/main/binary-amd64/Packages.xz", False),
        ("debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/" + "0" * 64, False),
        ("debian/dists/bookworm/main/i18n/Translation-en", False),
        ("debian/pool/main/h/hello/hello_2.10_amd64.deb", False),
    ],
)
def test_clear_keeps_what_the_daemon_loads(path: str, kept: bool) -> None:
    assert _is_saved_index(path) is kept
