"""The apt proxy end to end: the real apt-get, the fixture mirror, the daemon as a process.

Everything here is loopback. apt runs sandboxed (``tests.fixtures.apt``) in both URL forms
against a daemon started from the checkout; the fixture mirror logs every request, so
"served from the cache" is checked as "the mirror saw no request", and injects faults, so
"apt fails cleanly and nothing bad is cached" is checked against real broken transfers.
Hostile requests are sent as raw bytes where a client library would tidy them up.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from debian import deb822
from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import deb_target, wait_until
from tests.fixtures.helpers import raw_exchange as exchange_bytes
from tests.fixtures.mirror import MirrorServer, RequestRecord
from tests.fixtures.repo import COMPRESSIONS, PackageInfo, Repo

# `apt-get install --download-only` of these two pulls every package but dt-tiny
# (dt-meta depends on "dt-medium | dt-tiny"; apt takes the first alternative).
INSTALL = ("dt-meta", "libdt-dev")
TMP_PREFIX = ".dt-tmp-"


# ---- helpers --------------------------------------------------------------------------------
def start_daemon(daemon_factory, *args: str) -> Daemon:
    """``daemon_factory(*args)``, with the checkpoint kept in the daemon's own directory.

    (The fixture leaves --state-dir at its default, ~/.local/state/debtorrent, which every
    test daemon would share and which lies outside the test's directory.)
    """
    d = daemon_factory(*args, start=False)
    if not any(a.startswith("--state-dir") for a in d.extra_args):
        d.extra_args += ["--state-dir", str(d.workdir / "state")]
    return d.start()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes())


def expected_debs(repo: Repo) -> list[PackageInfo]:
    """What ``apt-get install --download-only *INSTALL`` downloads."""
    return [p for p in repo.packages if p.name != "dt-tiny"]


def cache_root(daemon: Daemon, mirror: MirrorServer) -> Path:
    """``<cache>/<mirror>``: the mirror's directory in the daemon's cache."""
    return daemon.cache_dir / mirror.address


def cached_deb(daemon: Daemon, mirror: MirrorServer, p: PackageInfo) -> Path:
    return cache_root(daemon, mirror) / "debian" / p.filename


def temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob(f"{TMP_PREFIX}*"))


def wait_mirror_quiet(mirror: MirrorServer, p: PackageInfo, quiet: float = 1.0) -> None:
    """Wait (bounded) until the daemon has stopped fetching ``p`` on its own: no new
    request for it reached the mirror for ``quiet`` seconds."""
    deadline = time.monotonic() + 20
    seen, since = -1, time.monotonic()
    while True:
        count = len(deb_requests(mirror, p))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        assert time.monotonic() < deadline, f"the daemon keeps fetching {p.filename}"
        time.sleep(0.05)


def wait_no_temporaries(daemon: Daemon, timeout: float = 10.0) -> None:
    wait_until(
        lambda: not temporaries(daemon.cache_dir),
        timeout,
        f"temporary files left in the cache: {temporaries(daemon.cache_dir)}",
    )


def request(
    daemon: Daemon,
    target: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    source: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request to the daemon with http.client: (status, lower-case headers, body)."""
    conn = http.client.HTTPConnection(
        daemon.bind,
        daemon.port,
        timeout=timeout,
        source_address=(source, 0) if source else None,
    )
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        try:
            body = r.read()
        except http.client.IncompleteRead as cut:  # a transfer cut short: what came
            body = cut.partial
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def raw_exchange(
    daemon: Daemon, data: bytes, timeout: float = 10.0, source: str | None = None
) -> bytes:
    """Send raw bytes, read until the daemon closes (or ``timeout`` of silence)."""
    return exchange_bytes(daemon.bind, daemon.port, data, timeout=timeout, source=source)


def read_response_head(sock_file) -> tuple[int, dict[str, str], bytes]:
    """Status and headers of one HTTP/1.1 response from a socket's buffered reader."""
    status_line = sock_file.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := sock_file.readline()) not in (b"\r\n", b"\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, b""


def read_response(sock_file) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (not to a HEAD)."""
    status, headers, _ = read_response_head(sock_file)
    body = sock_file.read(int(headers.get("content-length", "0")))
    assert len(body) == int(headers.get("content-length", "0")), "response cut short"
    return status, headers, body


def status_json(daemon: Daemon) -> dict:
    status, _, body = request(daemon, "/status.json")
    assert status == 200
    return json.loads(body)


def deb_requests(mirror: MirrorServer, p: PackageInfo) -> list[RequestRecord]:
    """Every request for ``p`` that reached the mirror (any method)."""
    return mirror.find(p.filename)


def assert_downloaded(apt: AptClient, debs: Iterable[PackageInfo]) -> None:
    """apt's archives dir holds exactly ``debs``, byte for byte as in the repository."""
    got = apt.downloaded_sha256()
    want = {f"{p.name}_{p.version.replace(':', '%3a')}_{p.arch}.deb": p.sha256 for p in debs}
    assert got == want


def load_index(daemon: Daemon, mirror: MirrorServer, repo: Repo) -> None:
    """What ``apt-get update`` does, by hand: InRelease, then Packages.xz by hash."""
    for rel in (repo.index_rel(repo.inrelease_path), repo.index_rel(repo.by_hash_path(".xz"))):
        status, _, body = request(daemon, f"/{mirror.address}/debian/{rel}")
        assert status == 200, body[:300]
    wait_until(
        lambda: (
            cache_root(daemon, mirror) / "debian" / repo.index_rel(repo.packages_index())
        ).is_file(),
        what="the Packages index saved",
    )


def packages_by_hash(repo: Repo) -> dict[str, str]:
    """by-hash path (relative to /debian/) -> which Packages compression it stands for."""
    return {repo.index_rel(repo.by_hash_path(ext)): f"Packages{ext}" for ext in COMPRESSIONS}


# ---- apt in both forms, the cache layout, a second client, a restart ----------------------
@pytest.mark.parametrize("form", ["path", "proxy"])
def test_apt_update_and_install_through_the_daemon(
    form: str, repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = start_daemon(daemon_factory)
    first = getattr(apt_factory, f"{form}_form")(daemon, mirror)
    first.update()
    first.install_download_only(*INSTALL)
    debs = expected_debs(repo)
    assert_downloaded(first, debs)

    # apt went through the daemon (the daemon's outgoing address, not apt's, reached the
    # mirror), and used by-hash: Packages asked for by hash, never by name.
    assert mirror.records() and {r.client for r in mirror.records()} == {daemon.bind}
    by_hash = packages_by_hash(repo)
    index_reqs = [r.path for r in mirror.records() if "/binary-" in r.path]
    assert [p for p in index_reqs if p.removeprefix("/debian/") in by_hash], index_reqs
    assert not [p for p in index_reqs if p.rsplit("/", 1)[-1].startswith("Packages")], index_reqs
    assert mirror.count("/dists/bookworm/InRelease") == 1
    assert mirror.count(".diff/Index") == 0

    # The cache reads like the mirror: uncompressed Packages, every .deb at its pool path.
    root = cache_root(daemon, mirror)
    saved = root / "debian" / repo.index_rel(repo.packages_index())
    assert saved.read_bytes() == repo.packages_index().read_bytes()
    for p in debs:
        assert file_sha256(cached_deb(daemon, mirror, p)) == p.sha256, p.filename
        assert len(deb_requests(mirror, p)) == 1, p.filename
    assert temporaries(daemon.cache_dir) == []
    totals = status_json(daemon)["totals"]
    assert totals["bytes_from_mirror"] == sum(p.size for p in debs)

    # A second client, in the other form (same mirror, so the same cache), gets every .deb
    # from the cache: no second request for any of them reaches the mirror.
    other = "proxy" if form == "path" else "path"
    second = getattr(apt_factory, f"{other}_form")(daemon, mirror)
    second.update()
    second.install_download_only(*INSTALL)
    assert_downloaded(second, debs)
    for p in debs:
        assert len(deb_requests(mirror, p)) == 1, p.filename
    assert status_json(daemon)["totals"]["bytes_from_mirror"] == sum(p.size for p in debs)

    # Restart on the same cache: the package table comes back from the saved Packages, so
    # a .deb is answered from the cache at once, with no index fetched first and nothing
    # asked of the mirror. (Without the table it would be passed through from the mirror.)
    daemon.restart()
    before = len(mirror.records())
    for p in (repo.package("dt-big"), repo.package("libdt1")):
        status, headers, body = request(daemon, deb_target(mirror, p))
        assert status == 200, body[:200]
        assert headers["content-length"] == str(p.size) and sha256(body) == p.sha256
    assert len(mirror.records()) == before
    assert "loaded 1 saved Packages indexes" in daemon.log_text()
    assert status_json(daemon)["totals"]["bytes_from_mirror"] == 0


def test_an_index_load_cut_short_by_a_stop_is_finished_at_start(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    """apt has its index once the bytes verify; the daemon loads it after. A daemon
    stopped in between kept the compressed copy apt was given, not the uncompressed
    one: the next start loads the index from that copy, so the packages are cached and
    shared without waiting for the Release to change (apt would only say Hit:)."""
    daemon = start_daemon(daemon_factory)
    apt_factory.path_form(daemon, mirror).update()
    saved = cache_root(daemon, mirror) / "debian" / repo.index_rel(repo.packages_index())
    wait_until(saved.is_file, what="the Packages index saved")
    daemon.stop()
    saved.unlink()  # what a stop before the end of the load leaves

    logged = len(daemon.log_text())
    daemon.start()
    log_now = daemon.log_text()[logged:]
    assert "from its compressed copy" in log_now and "loaded 1 saved Packages" in log_now
    assert saved.read_bytes() == repo.packages_index().read_bytes()  # kept for next time
    before = len(mirror.records())
    big = repo.package("dt-big")
    status, _, body = request(daemon, deb_target(mirror, big))
    assert status == 200 and sha256(body) == big.sha256
    assert len(mirror.records()) == before + 1  # the .deb only: no index fetched again
    assert "in no loaded index" not in daemon.log_text()
    wait_until(lambda: cached_deb(daemon, mirror, big).is_file(), what="dt-big cached")


# ---- mirror faults --------------------------------------------------------------------------
# What apt reports: a status before the first byte, or a cut transfer once streaming began.
CUT = r"Error reading from server|[Cc]onnection (closed|reset|failed)|closed connection"
# fault kind -> (package it is injected on, what apt must be told). dt-big and dt-medium
# span several 256 KiB pieces, the others one.
# The reason phrase carries the cause (apt prints it on its Err: line).
FAULTS = {
    "404": ("dt-docs", r"404  Not Found on the mirror \(127\.0\.0\.1:\d+\)"),
    "500": ("dt-data", r"502  Mirror answered 500 Internal Server Error \(127\.0\.0\.1:\d+\)"),
    "hang": ("dt-tiny", r"504  (Mirror timed out after 3 s \(127\.0\.0\.1:\d+\)|No progress)"),
    "truncate": ("dt-big", rf"502  Mirror cut the body at \d+ of \d+ bytes|{CUT}"),
    "wrong": ("dt-medium", rf"502  Verification failed: SHA256 does not match|{CUT}"),
}


# Regression (fixed): what these tests caught before it was mended.
BUG_ORPHAN_FETCH = (
    "FIXED debtorrent/torrent/packages.py PackageSwarm._supervise does not look at the request "
    "again after its gevent.sleep(0.25): once the request has failed it still calls "
    "_start_mirror (line ~276), a fetch no request waits for; when that one fails too, "
    "mirror_done finds no request, so nothing calls _fail/_reset_file and its .dt-tmp-* "
    "file (and its pieces in `have`) stay until the next start-up (truncate); or a new "
    "request joins meanwhile, and the orphan's failure fails it (hang: apt's next try "
    "gets 504 although the mirror is fine again)"
)
FAULT_PARAMS = [
    pytest.param(
        kind,
        name,
        told,
        id=kind,
    )
    for kind, (name, told) in FAULTS.items()
]
HTTP_TIMEOUT = "3"  # --http-timeout: a hanging mirror costs 3 s, not 30


def assert_clean_failure(res, why: str, told: str) -> None:
    """apt failed (non-zero exit or Err:/E:/W: lines) and its output matches ``told``."""
    assert res.returncode != 0 or res.problems, f"{why}: apt did not fail\n{res.output}"
    assert any(line.startswith(("E:", "Err:", "W:")) for line in res.problems), res.output
    assert re.search(told, res.output), f"{why}: apt was not told {told!r}\n{res.output}"


@pytest.mark.parametrize(("kind", "name", "told"), FAULT_PARAMS)
def test_deb_fault_fails_cleanly_and_recovers(
    kind: str, name: str, told: str, repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = start_daemon(daemon_factory, "--http-timeout", HTTP_TIMEOUT)
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    p = repo.package(name)
    fault = mirror.fault(p.filename, kind)
    res = apt.install_download_only(name, check=False)
    assert_clean_failure(res, f"{kind} on {name}", told)
    assert fault.hits >= 1, f"the mirror never saw the request for {name}"
    assert not [n for n in apt.downloaded_debs() if n.startswith(f"{name}_")]
    # The daemon may fetch the file again on its own (a retry after a failed SHA256, and
    # BUG_ORPHAN_FETCH): let that end, with the fault still on, before lifting the fault.
    # (A retry that succeeds just after apt's cut lets apt resume its partial bad bytes
    # against the good file: BUG_RESUME.)
    wait_mirror_quiet(mirror, p)
    assert not cached_deb(daemon, mirror, p).exists(), f"bad {name} cached"
    wait_no_temporaries(daemon)

    mirror.clear_faults()
    apt.install_download_only(name)  # the same command, now without the fault
    assert file_sha256(cached_deb(daemon, mirror, p)) == p.sha256
    assert apt.downloaded_sha256()[Path(p.filename).name] == p.sha256
    assert temporaries(daemon.cache_dir) == []


def packages_requests(path: str) -> bool:
    """The binary Packages index, by name or by hash (so apt has no way around a fault)."""
    return "/binary-" in path and ("/by-hash/" in path or "/Packages" in path)


ONLY_XZ = 'Acquire::IndexTargets::deb::Packages::CompressionTypes "xz";'


@pytest.mark.parametrize(
    ("kind", "name", "told"), [pytest.param(k, n, t, id=k) for k, (n, t) in FAULTS.items()]
)
def test_index_fault_fails_cleanly_and_recovers(
    kind: str, name: str, told: str, repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = start_daemon(daemon_factory, "--http-timeout", HTTP_TIMEOUT)
    # Only .xz: apt then asks for by-hash, then Packages.xz by name, and gives up (instead of
    # walking through six compressions, each costing a hang its timeout).
    apt = apt_factory.path_form(daemon, mirror, extra_conf=ONLY_XZ)
    fault = mirror.fault(packages_requests, kind)
    res = apt.update(check=False)
    assert_clean_failure(res, f"{kind} on Packages", told)
    assert fault.hits >= 1
    # Nothing bad kept: no by-hash copy, no saved uncompressed Packages, no temporaries.
    wait_no_temporaries(daemon)
    root = cache_root(daemon, mirror) / "debian"
    saved = root / repo.index_rel(repo.packages_index())
    assert not saved.exists()
    assert [p for p in root.rglob("*") if p.is_file() and packages_requests(f"/{p}")] == []

    mirror.clear_faults()
    apt.update()  # the same command, now without the fault
    assert saved.read_bytes() == repo.packages_index().read_bytes()
    apt.install_download_only(name)  # and the daemon's package table is loaded
    p = repo.package(name)
    assert file_sha256(cached_deb(daemon, mirror, p)) == p.sha256
    assert temporaries(daemon.cache_dir) == []


def test_mirror_down_after_an_update_serves_the_offline_copy(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = start_daemon(daemon_factory, "--http-timeout", HTTP_TIMEOUT)
    first = apt_factory.path_form(daemon, mirror)
    first.update()
    first.install_download_only("dt-base")
    mirror.stop()  # refused from now on

    res = first.update()  # InRelease from the offline copy: no Err:/W:/E: at all
    assert "Hit:" in res.output or "Get:" in res.output, res.output
    # A client the daemon never saw, in the other form, gets a full update from the cache
    # alone (InRelease offline copy, Packages by hash) and the cached .deb.
    second = apt_factory.proxy_form(daemon, mirror)
    second.update()
    [inrelease] = [p for p in second.lists() if p.name.endswith("_InRelease")]
    assert inrelease.read_bytes() == repo.inrelease_path.read_bytes()
    second.install_download_only("dt-base")
    assert_downloaded(second, [repo.package("dt-base")])
    assert "serving the offline copy" in daemon.log_text()
    # What the cache does not hold fails cleanly, and is not invented.
    res = second.install_download_only("dt-docs", check=False)
    assert_clean_failure(res, "mirror down, dt-docs not cached", r"50[24]  ")
    assert not cached_deb(daemon, mirror, repo.package("dt-docs")).exists()

    mirror.start()  # back: everything works again
    second.install_download_only("dt-docs")
    assert_downloaded(second, [repo.package("dt-base"), repo.package("dt-docs")])


# ---- HTTP semantics on cached files ---------------------------------------------------------
def test_range_head_and_conditional_requests_on_a_cached_file(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    big = repo.package("dt-big")
    data = big.path.read_bytes()
    size = len(data)
    target = deb_target(mirror, big)
    status, h, body = request(daemon, target)  # fetched once, cached
    assert (status, sha256(body)) == (200, big.sha256)
    fetches = len(deb_requests(mirror, big))

    status, h, body = request(daemon, target)
    assert status == 200 and body == data
    assert h["content-length"] == str(size) and h["accept-ranges"] == "bytes"
    last_modified = h["last-modified"]

    cases = [  # (Range, first byte, end exclusive); the second spans several sendfile chunks
        ("bytes=100-299", 100, 300),
        ("bytes=1000000-3500000", 1000000, 3500001),
        (f"bytes={size - 5}-", size - 5, size),
        ("bytes=-10", size - 10, size),
        (f"bytes=10-{size + 1000}", 10, size),
    ]
    for rng, start, end in cases:
        status, h, body = request(daemon, target, {"Range": rng})
        assert status == 206, rng
        assert h["content-range"] == f"bytes {start}-{end - 1}/{size}", rng
        assert h["content-length"] == str(end - start) and body == data[start:end], rng
    for rng in (f"bytes={size}-", f"bytes={size + 100}-{size + 200}"):
        status, h, body = request(daemon, target, {"Range": rng})
        assert status == 416 and h["content-range"] == f"bytes */{size}", rng
        assert body == b""

    # If-Range: the right date gives the range, any other validator the whole file.
    status, h, body = request(daemon, target, {"Range": "bytes=0-9", "If-Range": last_modified})
    assert (status, body) == (206, data[:10])
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    status, h, body = request(daemon, target, {"Range": "bytes=0-9", "If-Range": old})
    assert status == 200 and len(body) == size
    status, h, body = request(daemon, target, {"Range": "bytes=0-9", "If-Range": '"etag"'})
    assert status == 200 and len(body) == size

    # If-Modified-Since: 304 without a body when not newer; the file when it is.
    status, h, body = request(daemon, target, {"If-Modified-Since": last_modified})
    assert (status, body) == (304, b"")
    status, h, body = request(daemon, target, {"If-Modified-Since": old})
    assert status == 200 and len(body) == size

    # HEAD: the headers of a GET, and not one byte of body (checked on the raw stream).
    raw = raw_exchange(
        daemon,
        f"HEAD {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and sep and rest == b"", raw[:500]
    assert f"\r\ncontent-length: {size}\r\n".encode() in head.lower() + b"\r\n"
    assert b"last-modified: " in head.lower()
    assert len(deb_requests(mirror, big)) == fetches  # all of it from the cache


def test_pipelined_requests_are_answered_in_order(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    base, docs, tool = (repo.package(n) for n in ("dt-base", "dt-docs", "dt-tool"))
    assert request(daemon, deb_target(mirror, base))[0] == 200  # cached now
    # The first answer is slow (uncached, the mirror waits 0.5 s), the second and third
    # are ready at once: they must still come back in the order asked.
    mirror.fault(docs.filename, "delay", seconds=0.5)
    reqs = b"".join(
        f"{method} {deb_target(mirror, p)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for method, p in (("GET", docs), ("GET", base), ("HEAD", tool), ("GET", tool))
    )
    with socket.create_connection((daemon.bind, daemon.port), timeout=20) as s:
        s.sendall(reqs)  # all four in one write, before any answer
        f = s.makefile("rb")
        try:
            answers = [read_response(f) for _ in range(2)]
            status, h, _ = read_response_head(f)
            answers.append((status, h, b""))
            answers.append(read_response(f))
        finally:
            f.close()
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert sha256(answers[0][2]) == docs.sha256
    assert sha256(answers[1][2]) == base.sha256
    assert answers[2][1]["content-length"] == str(tool.size)
    assert sha256(answers[3][2]) == tool.sha256


# ---- concurrency ----------------------------------------------------------------------------
def test_fifty_concurrent_requests_for_one_uncached_file(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    big = repo.package("dt-big")
    target = deb_target(mirror, big)
    n = 50
    barrier = threading.Barrier(n, timeout=30)

    def fetch(_: int) -> tuple[int, int, str]:
        conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=60)
        try:
            conn.connect()
            barrier.wait()  # all connected, then all ask at once
            conn.request("GET", target)
            r = conn.getresponse()
            digest, length = hashlib.sha256(), 0
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                length += len(chunk)
            return r.status, length, digest.hexdigest()
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(fetch, range(n), timeout=120))
    assert results == [(200, big.size, big.sha256)] * n
    assert len(deb_requests(mirror, big)) == 1
    assert status_json(daemon)["totals"]["bytes_from_mirror"] == big.size


def test_two_apt_clients_at_once_fetch_each_deb_once(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = start_daemon(daemon_factory)
    clients = [apt_factory.path_form(daemon, mirror), apt_factory.proxy_form(daemon, mirror)]
    for apt in clients:
        apt.update()
    # Every .deb answer from the mirror waits 0.3 s, so both clients' requests overlap.
    mirror.fault("*.deb", "delay", seconds=0.3)
    start = threading.Barrier(2, timeout=30)

    def install(apt: AptClient):
        start.wait()
        return apt.install_download_only(*INSTALL, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(install, clients, timeout=180))
    for res in results:
        res.check()
    debs = expected_debs(repo)
    for apt in clients:
        assert_downloaded(apt, debs)
    assert {p.filename: len(deb_requests(mirror, p)) for p in debs} == {p.filename: 1 for p in debs}
    assert status_json(daemon)["totals"]["bytes_from_mirror"] == sum(p.size for p in debs)


# ---- bugs found while writing these tests: one test pins each down ------------------------
# (The first four were fixed in 4088b13; these stay as their regression tests.)
def test_a_mirror_error_does_not_break_the_next_request(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    """An error answer's body is never left in a pooled connection (it used to be read as
    the next request's status line: 502 for the next file from that mirror)."""
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    status, _, _ = request(daemon, f"/{mirror.address}/debian/pool/main/n/nope/nope_1_all.deb")
    assert status == 404  # passed through (no index lists it); the mirror said 404
    p = repo.package("dt-docs")
    status, _, body = request(daemon, deb_target(mirror, p))
    assert (status, sha256(body)) == (200, p.sha256), body[:300]


def test_wrong_bytes_from_the_mirror_are_a_502(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    """Bad data from the mirror is a bad gateway (502), never a 500 Internal Server Error:
    neither for a .deb (swarm path) nor for an index whose size is already wrong in the
    headers (the failure then comes before the first byte, in Proxy._packages)."""
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    p = repo.package("dt-docs")
    mirror.fault(p.filename, "wrong")
    status, _, body = request(daemon, deb_target(mirror, p))
    assert status == 502, body
    mirror.fault(lambda path: "/by-hash/" in path, "status", status=200)  # 7 bytes: "200 OK"
    by_hash = repo.index_rel(repo.by_hash_path(".gz"))  # not cached yet
    status, _, body = request(daemon, f"/{mirror.address}/debian/{by_hash}")
    assert status == 502, body


def test_a_failed_mirror_fetch_is_retried_from_the_start(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    """A truncated fetch leaves no pieces behind: the retry fetches the file from byte 0
    (it used to resume into a fresh, zero-filled temporary file and fail its SHA256)."""
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    p = repo.package("dt-big")
    mirror.fault(p.filename, "truncate", times=1)
    status, _, body = request(daemon, deb_target(mirror, p))
    # failed, never complete: a 502 before the first byte, or (under load) a cut 200
    assert status == 502 or (status == 200 and len(body) < p.size), (status, len(body))
    status, _, body = request(daemon, deb_target(mirror, p))
    assert (status, sha256(body)) == (200, p.sha256)
    assert [r.range for r in deb_requests(mirror, p)] == [None, None]
    assert "failed its index SHA256" not in daemon.log_text()


def test_a_failed_request_leaves_no_fetch_and_no_temporary_file(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    p = repo.package("dt-big")
    mirror.fault(p.filename, "truncate")
    status, _, body = request(daemon, deb_target(mirror, p))
    # failed, never complete: a 502 before the first byte, or (under load) a cut 200
    assert status == 502 or (status == 200 and len(body) < p.size), (status, len(body))
    wait_mirror_quiet(mirror, p)
    assert len(deb_requests(mirror, p)) == 1  # nobody asked again
    assert temporaries(daemon.cache_dir) == []


# Regression (fixed): what this test caught before it was mended.
BUG_RESUME = (
    "FIXED the swarm path stores a .deb with mtime = the moment it was committed "
    "(debtorrent/torrent/packages.py FileRequest.last_modified is never set, storage commit() "
    "gets no mtime), and _send_cached honours If-Range against that date. A transfer cut for "
    "bad bytes leaves apt a partial file whose date is that of the cut; the daemon's retry "
    "commits the good file within the same second, so apt's resume (Range + If-Range) gets a "
    "206 and joins bad bytes to good ones: 'Hash Sum mismatch' (seen intermittently with "
    "the 'wrong' fault on dt-medium). The mirror's own Last-Modified would not collide"
)


def test_a_cached_deb_carries_the_date_its_cold_answer_had(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    """The cold answer of a verified package carries the date of its download attempt,
    and the cached file gets that date: apt's resume of a cut cold stream (If-Range:
    that date) gets a 206 from the cache; any other date gets the whole file. (Before,
    a cold answer had no date and the cached one the mirror's: apt never resumed.)"""
    daemon = start_daemon(daemon_factory)
    load_index(daemon, mirror, repo)
    p = repo.package("dt-docs")
    data = p.path.read_bytes()
    status, cold, body = request(daemon, deb_target(mirror, p))
    assert (status, sha256(body)) == (200, p.sha256)
    assert "etag" not in cold  # streamed before its SHA256 was checked: no strong tag
    status, warm, _ = request(daemon, deb_target(mirror, p), method="HEAD")  # from the cache
    assert status == 200 and warm["last-modified"] == cold["last-modified"]
    assert warm["etag"] == f'"{p.sha256}"'
    resume = {"Range": "bytes=5-", "If-Range": cold["last-modified"]}
    status, h, body = request(daemon, deb_target(mirror, p), resume)
    assert (status, body, h["content-range"]) == (206, data[5:], f"bytes 5-{p.size - 1}/{p.size}")
    by_tag = {"Range": "bytes=5-", "If-Range": f'"{p.sha256}"'}
    assert request(daemon, deb_target(mirror, p), by_tag)[0] == 206
    other = email.utils.formatdate(time.time() - 86400, usegmt=True)
    status, _, body = request(
        daemon, deb_target(mirror, p), {"Range": "bytes=5-", "If-Range": other}
    )
    assert (status, len(body)) == (200, p.size)
    assert len(deb_requests(mirror, p)) == 1


def test_a_refused_mirror_connection_is_a_502(
    repo: Repo, mirror: MirrorServer, daemon_factory
) -> None:
    """Refused is 502, not an instant 504 'timed out' (urllib3 2's NewConnectionError is a
    ConnectTimeoutError)."""
    daemon = start_daemon(daemon_factory)
    mirror.stop()  # nothing listens on its port now
    rel = repo.index_rel(repo.inrelease_path)
    status, _, body = request(daemon, f"/{mirror.address}/debian/{rel}")
    assert (status, b"refused" in body) == (502, True), body


# ---- opt-in: the real mirror ----------------------------------------------------------------
SYSTEM_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LIVE_PACKAGES = ("hello", "tree", "bc")  # small, and each pulls libc6 and its dependencies


def machine_source() -> tuple[str, str, str, str] | None:
    """(host, archive path, suite, component) of the first plain-HTTP Debian source in this
    machine's apt configuration, read now (the host is never written down anywhere)."""
    entries: list[tuple[str, list[str], list[str]]] = []  # (uri, suites, components)
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for para in deb822.Deb822.iter_paragraphs(f.read_text(errors="replace")):
            if "deb" in para.get("Types", "").split() and para.get("Enabled", "yes") != "no":
                for uri in para.get("URIs", "").split():
                    entries.append(
                        (uri, para.get("Suites", "").split(), para.get("Components", "").split())
                    )
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb":
                entries.append((words[1], [words[2]], words[3:]))
    for uri, suites, components in entries:
        parts = urlsplit(uri)
        if parts.scheme != "http" or not parts.hostname or not suites or not components:
            continue
        suite = next((s for s in suites if "-" not in s and "/" not in s), suites[0])
        component = "main" if "main" in components else components[0]
        return parts.netloc, parts.path.strip("/"), suite, component
    return None


@pytest.mark.live
def test_live_mirror_in_both_forms(daemon_factory, tmp_path: Path) -> None:
    source = machine_source()
    if source is None:
        pytest.skip("no plain-http deb source in /etc/apt/sources.list{,.d}")
    if not SYSTEM_KEYRING.is_file():
        pytest.skip(f"{SYSTEM_KEYRING} missing (Debian package debian-archive-keyring)")
    host, path, suite, component = source
    # The daemon's mirror connections leave from --peer-bind, which the fixture sets to the
    # daemon's 127.0.0.x: no route to a real mirror from there. Use the address this machine
    # reaches the mirror from (a UDP "connect" sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((urlsplit(f"http://{host}").hostname, 80))
        local = probe.getsockname()[0]
    daemon = start_daemon(daemon_factory, "--http-timeout", "60", "--peer-bind", local)
    try:
        signed = f"[signed-by={SYSTEM_KEYRING}]"
        path_form = AptClient(
            tmp_path / "apt-path",
            f"deb {signed} {daemon.url}/{host}/{path} {suite} {component}",
            http_timeout=120,
            timeout=900,
        )
        path_form.update()
        path_form.install_download_only(*LIVE_PACKAGES)
        got = path_form.downloaded_sha256()
        assert {n.split("_")[0] for n in got} >= set(LIVE_PACKAGES)
        archive = daemon.cache_dir / host.lower() / path
        saved = archive / "dists" / suite / component / f"binary-{path_form.arch}" / "Packages"
        index = saved.read_bytes()  # saved uncompressed
        assert index.startswith(b"Package: ") and len(index) > 1_000_000
        cached = {p.name: p for p in (archive / "pool").rglob("*.deb")}
        for name, digest in got.items():
            pool_name = re.sub(r"_[0-9]+%3a", "_", name)
            assert file_sha256(cached[pool_name]) == digest, name
            assert f"\nSHA256: {digest}\n".encode() in index, name
        assert "/by-hash/SHA256/" in daemon.log_text()
        from_mirror = status_json(daemon)["totals"]["bytes_from_mirror"]
        assert from_mirror >= sum(p.stat().st_size for p in path_form.downloaded_debs().values())

        proxy_form = AptClient(
            tmp_path / "apt-proxy",
            f"deb {signed} http://{host}/{path} {suite} {component}",
            proxy=daemon.url + "/",
            http_timeout=120,
            timeout=900,
        )
        proxy_form.update()
        proxy_form.install_download_only(*LIVE_PACKAGES)
        assert proxy_form.downloaded_sha256() == got
        assert status_json(daemon)["totals"]["bytes_from_mirror"] == from_mirror  # cache only
    finally:
        daemon.stop()
        for p in tmp_path.iterdir():  # the cache, logs and apt state name the mirror
            shutil.rmtree(p) if p.is_dir() else p.unlink()
