"""Access control: who may use the proxy, which mirrors it fetches from, where it follows
upstream redirects.

``test_proxy_hostile.py`` checks 403 for two outside clients on an apt path and
/status.json, and for a handful of mirror spellings. Here: every kind of path (each
file class in both URL forms, ``/``, ``/status.json``, ``/metrics``, malformed targets,
other methods) from clients just outside the allowed networks, with the edges of the
networks; mirror names that try to smuggle another host past ``--allowed-mirrors``; and
redirects from the mirror (the fixture's ``redirect`` fault) to allowed places, other
hosts, other ports, other schemes, loops, and ``Location`` values carrying CR/LF or
NUL. Nothing a refused request names may reach another host (the other mirrors' logs
stay empty) or reach apt as a redirect or as an upstream header.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import raw_exchange
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.repo import Repo

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

ALLOWED_CLIENTS = "127.0.0.5/32 127.0.0.128/26"  # .5 and .128-.191
ALLOWED = ("127.0.0.5", "127.0.0.128", "127.0.0.150", "127.0.0.191")
DENIED = ("127.0.0.1", "127.0.0.4", "127.0.0.6", "127.0.0.127", "127.0.0.192", "127.0.0.254")
CLIENT = "127.0.0.5"


def exchange(daemon: Daemon, data: bytes, source: str, timeout: float = 10.0) -> bytes:
    return raw_exchange(daemon.bind, daemon.port, data, timeout=timeout, source=source)


def parse(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 "), raw[:300]
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(
    daemon: Daemon, target: str | bytes, source: str = CLIENT, method: bytes = b"GET", extra=b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    if isinstance(target, str):
        target = target.encode()
    raw = exchange(
        daemon,
        method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"Connection: close\r\n\r\n",
        source,
    )
    return parse(raw)


def tree(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(("daemon.log", "output"))
    }


def start(daemon_factory, tmp_path: Path, *args: str) -> Daemon:
    return daemon_factory("--state-dir", str(tmp_path / "state"), *args)


# ---- clients ----------------------------------------------------------------------------------
def _paths(repo: Repo, mirror: MirrorServer) -> list[bytes]:
    m = mirror.address
    deb = repo.package("dt-base")
    rels = [
        repo.index_rel(repo.inrelease_path),
        repo.index_rel(repo.release_path),
        repo.index_rel(repo.packages_index(".xz")),
        repo.index_rel(repo.by_hash_path(".xz")),
        deb.url_path,
        "pool/main/d/dt-base/dt-base_1.0-1.dsc",
        "dists/bookworm/main/binary-amd64/Packages.diff/Index",
        "dists/bookworm/main/i18n/Translation-en.bz2",
    ]
    out = [b"/", b"/status.json", b"/metrics", b"/metrics?x=1", b"/status.json#x", b"*"]
    for rel in rels:
        out += [f"/{m}/debian/{rel}".encode(), f"http://{m}/debian/{rel}".encode()]
    out += [
        b"/deb.example.org/debian/dists/bookworm/InRelease",  # a mirror that is not allowed
        b"http://deb.example.org/debian/pool/main/x.deb",
        b"/../../etc/passwd",
        b"/%00",
        b"/" + b"a" * 3000,
        b"relative",
        b"https://deb.example.org/x",
        f"/{m}/debian/pool/x%0d%0aSet-Cookie:%20a=1".encode(),
    ]
    return out


def test_clients_outside_the_allowed_networks_get_403_on_every_path(
    repo: Repo, mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    mirror = mirror_factory()
    daemon = start(daemon_factory, tmp_path, "--allowed-clients", ALLOWED_CLIENTS)
    before = tree(daemon.cache_dir)
    paths = _paths(repo, mirror)
    for source in DENIED:
        for target in paths:
            for method in (b"GET", b"HEAD"):
                status, headers, body = get(daemon, target, source, method)
                assert status == 403, (source, method, target, status, body[:200])
                assert b"location" not in headers and b"set-cookie" not in headers
                assert b"peer_id" not in body and b"debtorrent_" not in body, body[:200]
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"):
            status, _, _ = get(daemon, b"/status.json", source, method)
            assert status == 403, (source, method, status)
        # headers naming an allowed address change nothing: only the socket's peer counts
        for header in (b"X-Forwarded-For", b"X-Real-IP", b"Forwarded", b"Client-IP"):
            value = b"for=" + CLIENT.encode() if header == b"Forwarded" else CLIENT.encode()
            status, _, _ = get(
                daemon, b"/status.json", source, extra=header + b": " + value + b"\r\n"
            )
            assert status == 403, (source, header)
    # nothing reached the mirror or the cache
    assert mirror.records() == [], [r.path for r in mirror.records()]
    assert tree(daemon.cache_dir) == before
    # the edges of the allowed networks: inside, the same paths are served
    for source in ALLOWED:
        for target in (b"/", b"/status.json", b"/metrics"):
            status, _, body = get(daemon, target, source)
            assert status == 200, (source, target, status, body[:200])
    rel = repo.index_rel(repo.inrelease_path)
    status, _, body = get(daemon, f"/{mirror.address}/debian/{rel}", "127.0.0.191")
    assert (status, body) == (200, repo.inrelease_path.read_bytes())
    assert daemon.running


def test_keep_alive_does_not_carry_an_allowed_decision_to_another_client(
    repo: Repo, mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    """Each connection is judged by its own address: a denied client is refused at once
    (one 403, then the connection closes, before its requests are read), an allowed
    client's pipelined requests are each served."""
    mirror_factory()
    daemon = start(daemon_factory, tmp_path, "--allowed-clients", ALLOWED_CLIENTS)
    one = b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for source, want in (("127.0.0.127", b"403"), ("127.0.0.128", b"200")):
        raw = exchange(daemon, one * 4 + last, source)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)
        assert statuses == [want] * (1 if want == b"403" else 5), (source, statuses)


# ---- mirrors ------------------------------------------------------------------------------------
def test_mirrors_outside_allowed_mirrors_get_403_and_are_never_contacted(
    repo: Repo, mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    allowed = mirror_factory()  # 127.0.0.1:A
    other_host = mirror_factory(host="127.0.0.2")  # 127.0.0.2:B
    other_port = mirror_factory()  # 127.0.0.1:C
    daemon = start(daemon_factory, tmp_path, "--allowed-mirrors", allowed.address)
    a, b, c = allowed.address, other_host.address, other_port.address
    rel = repo.index_rel(repo.inrelease_path)
    refused = [
        f"/{b}/debian/{rel}",
        f"/{c}/debian/{rel}",
        f"http://{b}/debian/{rel}",
        f"http://{c}/debian/{rel}",
        f"/localhost:{allowed.port}/debian/{rel}",  # the same place, another name
        f"/127.1:{allowed.port}/debian/{rel}",
        f"/2130706433:{allowed.port}/debian/{rel}",
        f"/0x7f000001:{allowed.port}/debian/{rel}",
        f"/127.0.0.1/debian/{rel}",  # port 80
    ]
    smuggled = [  # another host hidden in an allowed-looking target: a bad request...
        f"/{a}@{b}/debian/{rel}",
        f"http://{a}@{b}/debian/{rel}",
        f"http://{b}#@{a}/debian/{rel}",
        f"/{a}:{other_host.port}/debian/{rel}",
        f"/{a}%2f..%2f{b}/debian/{rel}",
        f"/{b}%23{a}/debian/{rel}",
        f"/{b}\\@{a}/debian/{rel}",
        f"http://{b}%40{a}/debian/{rel}",
        f"http://{b}:{allowed.port}/debian/{rel}",
    ]
    # ... except where the target reads as a mirror that is simply not allowed: 403
    refused.append(f"/{b}%2f{a}/debian/{rel}")
    for target in refused:
        status, _, body = get(daemon, target, "127.0.0.1")
        assert status == 403, (target, status, body[:200])
    for target in smuggled:
        status, _, body = get(daemon, target, "127.0.0.1")
        assert status == 400, (target, status, body[:200])
    assert other_host.records() == [] and other_port.records() == []
    assert allowed.records() == []
    status, _, body = get(daemon, f"/{a}/debian/{rel}", "127.0.0.1")
    assert (status, body) == (200, repo.inrelease_path.read_bytes())


# ---- redirects from the mirror ------------------------------------------------------------------
@pytest.fixture
def redirecting(repo: Repo, mirror_factory, daemon_factory, tmp_path: Path) -> Iterator:
    """(daemon, allowed mirror A, other host B, other port C): only A is allowed; A
    also serves the archive under /moved, the place its redirects point to."""
    a = mirror_factory()
    a.add_mount("/moved", repo.root)
    b = mirror_factory(host="127.0.0.2")
    c = mirror_factory()
    daemon = start(daemon_factory, tmp_path, "--allowed-mirrors", a.address)
    yield daemon, a, b, c


def assert_clean_answer(status: int, headers: dict[bytes, bytes], body: bytes, what) -> None:
    """Not a redirect, no upstream header passed on, nothing injected."""
    assert not 300 <= status < 400, (what, status)
    assert b"location" not in headers, (what, headers)
    for name in headers:
        assert name not in (b"set-cookie", b"x-injected", b"refresh"), (what, headers)
    assert b"injected" not in b"\r\n".join(k + v for k, v in headers.items()).lower(), what


def test_redirects_within_the_allowed_mirror_are_followed(repo: Repo, redirecting) -> None:
    daemon, a, b, c = redirecting
    rel = repo.index_rel(repo.inrelease_path)
    for status_code, location in (
        (301, f"http://{a.address}/moved/{rel}"),
        (302, f"/moved/{rel}"),  # relative
        (307, f"http://{a.address.upper()}/moved/{rel}"),
        (308, f"HTTP://{a.address}/moved/{rel}"),
    ):
        a.clear()
        a.fault(f"/debian/{rel}", "redirect", times=1, status=status_code, location=location)
        status, headers, body = get(daemon, f"/{a.address}/debian/{rel}")
        assert_clean_answer(status, headers, body, location)
        assert (status, body) == (200, repo.inrelease_path.read_bytes()), (location, status, body)
        assert [r.path for r in a.records()] == [f"/debian/{rel}", f"/moved/{rel}"], location
    # a .deb redirected within the mirror is still checked against its index
    for index_rel in (rel, repo.index_rel(repo.by_hash_path(".xz"))):
        assert get(daemon, f"/{a.address}/debian/{index_rel}")[0] == 200
    deb = repo.package("dt-tool")
    a.fault(deb.filename, "redirect", times=1, location=f"/moved/{deb.filename}")
    status, headers, body = get(daemon, f"/{a.address}/debian/{deb.url_path}")
    assert_clean_answer(status, headers, body, deb.filename)
    assert status == 200 and hashlib.sha256(body).hexdigest() == deb.sha256
    # ... and wrong bytes behind an allowed redirect are not served as the file
    bad = repo.package("dt-docs")
    a.fault(bad.filename, "redirect", times=1, location=f"/moved/{deb.filename}")
    status, headers, body = get(daemon, f"/{a.address}/debian/{bad.url_path}")
    assert status == 502, ("wrong bytes behind a redirect", status, body[:200])
    assert b.records() == [] and c.records() == []


def test_scheme_relative_redirect_within_the_allowed_mirror_is_followed(
    repo: Repo, redirecting
) -> None:
    """``Location: //host:port/path`` (a network-path reference, allowed by RFC 7231
    section 7.1.2) naming the allowed mirror is followed like an absolute one.

    Regression (fixed): ``Mirror._redirect_target`` resolves a
    Location against the request URL only when it has no host; ``//a:port/path`` has a
    host but no scheme, so the check ``target.scheme not in ("http", "https")`` refuses
    it ("redirect to '127.0.0.1:PORT' not allowed", a 502, or the offline copy of an
    index). Resolving every Location with ``urljoin(url, location)`` first would fix it.
    """
    daemon, a, _b, _c = redirecting
    rel = repo.index_rel(repo.release_path)
    a.fault(f"/debian/{rel}", "redirect", times=1, location=f"//{a.address}/moved/{rel}")
    status, headers, body = get(daemon, f"/{a.address}/debian/{rel}")
    assert_clean_answer(status, headers, body, "scheme-relative")
    assert [r.path for r in a.records()] == [f"/debian/{rel}", f"/moved/{rel}"]
    assert (status, body) == (200, repo.release_path.read_bytes())


def test_redirects_elsewhere_are_refused_and_never_reach_apt(repo: Repo, redirecting) -> None:
    """Each case uses a file the cache does not hold (a refused fetch of a cached index
    would be answered from the offline copy instead of with an error)."""
    daemon, a, b, c = redirecting
    rel = repo.index_rel(repo.inrelease_path)
    cases = {
        "another host": f"http://{b.address}/debian/{rel}",
        "another port": f"http://{c.address}/debian/{rel}",
        "the daemon itself": f"{daemon.url}/{a.address}/debian/{rel}",
        "userinfo hiding another host": f"http://{a.address}@{b.address}/debian/{rel}",
        "backslash trick": f"http://{b.address}\\@{a.address}/debian/{rel}",
        "file scheme": "file:///etc/passwd",
        "ftp scheme": f"ftp://{a.address}/debian/{rel}",
        "javascript": "javascript:alert(1)",
        "NUL in Location": f"http://{a.address}/moved/{rel}\0.evil",
        "empty Location": "",
        "a loop": "/debian/dists/bookworm/loop/Contents-all",
    }
    for i, (what, location) in enumerate(cases.items()):
        path = (
            "dists/bookworm/loop/Contents-all"
            if what == "a loop"
            else f"dists/bookworm/x{i}/Contents-all"
        )
        a.fault(f"/debian/{path}", "redirect", location=location)
        status, headers, body = get(daemon, f"/{a.address}/debian/{path}")
        assert_clean_answer(status, headers, body, what)
        assert status == 502, (what, status, body[:300])
        assert b"passwd" not in body or b"not allowed" in body, (what, body[:300])
    loops = a.count("/debian/dists/bookworm/loop/Contents-all")
    assert 1 < loops <= 6, f"redirect loop followed {loops} times"
    assert b.records() == [] and c.records() == [], "a refused redirect reached another mirror"
    log = daemon.log_text()
    assert "\0" not in log
    assert daemon.running


def test_cr_lf_in_a_redirect_never_reaches_apt(repo: Repo, redirecting) -> None:
    """The mirror's Location carries CR/LF (raw and percent-encoded) meant to add
    headers: apt gets the followed answer or an error, never the Location and never a
    header the mirror injected."""
    daemon, a, b, c = redirecting
    rel = repo.index_rel(repo.inrelease_path)
    # (Location, the answer): the header lines after a bare CR or LF are cut off, and
    # what is left is followed if it is an allowed place (200 there; 404 for a path that
    # does not exist once decoded), refused if not (502)
    cases = [
        (f"http://{a.address}/moved/{rel}\r\nSet-Cookie: injected=1", 200),
        (f"http://{a.address}/moved/{rel}\r\nX-Injected: 1\r\n", 200),
        (f"http://{b.address}/debian/{rel}\r\nX-Injected: 1", 502),
        (f"/moved/{rel}%0d%0aSet-Cookie:%20injected=1", 404),
        (f"/moved/{rel}%0aX-Injected:%201", 404),
        (f"http://{a.address}/moved/{rel}\rRefresh: 0; url=http://{b.address}/", 200),
    ]
    for i, (location, want) in enumerate(cases):
        path = f"dists/bookworm/crlf{i}/Contents-all"
        a.fault(f"/debian/{path}", "redirect", location=location)
        status, headers, body = get(daemon, f"/{a.address}/debian/{path}")
        assert_clean_answer(status, headers, body, location)
        assert status == want, (location, status, body[:300])
        assert b"\r" not in body, (location, body[:300])
    assert b.records() == [] and c.records() == []
    lines = daemon.log_text().splitlines()
    assert not [x for x in lines if x.lower().startswith(("set-cookie", "x-injected", "refresh"))]
    assert daemon.running


def test_the_daemon_log_escapes_what_a_refused_client_sent(
    repo: Repo, mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    mirror_factory()
    daemon = start(daemon_factory, tmp_path, "--allowed-clients", ALLOWED_CLIENTS)
    marker = os.urandom(4).hex()
    status, _, _ = get(daemon, f"/x%0d%0a{marker}%0aFORGED".encode(), "127.0.0.1")
    assert status == 403
    assert not [
        line for line in daemon.log_text().splitlines() if line.startswith((marker, "FORGED"))
    ]
