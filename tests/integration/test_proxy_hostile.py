"""Hostile requests against the daemon: sent as raw bytes, checked on the raw answer.

Path escapes, CR/LF injection, clients and mirrors that are not allowed, other methods and
oversized headers each get their status, reach neither the mirror nor the disk outside the
cache, and leave the daemon serving.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from tests.fixtures.daemon import Daemon
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.repo import Repo
from tests.integration.test_proxy import raw_exchange, request, start_daemon

CLIENT = "127.0.0.5"  # the one client address the daemons below allow


def split_response(raw: bytes) -> tuple[int, list[bytes], bytes]:
    """(status, header lines, body) of one raw HTTP response."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {raw[:300]!r}"
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1."), lines[0]
    return int(lines[0].split()[1]), lines[1:], body


def send(daemon: Daemon, request_line: bytes, *headers: bytes, source: str = CLIENT) -> bytes:
    """A raw request (``Connection: close``), exactly the bytes given."""
    data = request_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    data += b"Host: x\r\nConnection: close\r\n\r\n"
    return raw_exchange(daemon, data, source=source)


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` (but ``skip``) -> (size, mtime_ns)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            if p not in skip:
                st = p.lstat()
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def guarded(repo: Repo, mirror: MirrorServer, daemon_factory, tmp_path: Path):
    """A daemon that allows only CLIENT and only ``mirror``; yields (daemon, check).

    ``check()`` asserts that nothing changed on disk (cache included) since the fixture
    handed the daemon out, that the mirror saw no request, and that the daemon still works.
    """
    if not loopback_aliases_usable():
        pytest.skip("needs 127.0.0.2-9 (client addresses other than 127.0.0.1)")
    daemon = start_daemon(
        daemon_factory, "--allowed-clients", f"{CLIENT}/32", "--allowed-mirrors", mirror.address
    )
    skip = {daemon.log_file, daemon.output_file}
    before = snapshot(tmp_path, skip)
    marker = f"dt-hostile-{uuid.uuid4().hex}"

    def check() -> None:
        assert snapshot(tmp_path, skip) == before
        assert [p for p in Path("/tmp").iterdir() if marker in p.name] == []
        assert mirror.records() == []
        assert daemon.running
        rel = repo.index_rel(repo.release_path)
        status, _, body = request(daemon, f"/{mirror.address}/debian/{rel}", source=CLIENT)
        assert (status, body) == (200, repo.release_path.read_bytes())

    yield daemon, check, marker


def test_path_escapes_are_400(guarded, mirror: MirrorServer) -> None:
    daemon, check, marker = guarded
    m = mirror.address
    up = "../" * 12
    targets = [
        f"/{m}/debian/../../../etc/passwd",
        f"/{m}/debian/pool/{up}tmp/{marker}.deb",
        f"/{m}/debian/%2e%2e/%2e%2e/etc/passwd",
        f"/{m}/debian/%2E%2E/%2E%2E/tmp/{marker}",
        f"/{m}/debian/pool/..%2f..%2f..%2f..%2ftmp%2f{marker}.deb",
        f"/{m}/debian/pool/.%2e/.%2e/x.deb",
        f"/{m}/debian/pool/x%00.deb",
        f"/{m}/debian/pool/main/d/dt-base/dt-base_1.0-1_amd64.deb%00.txt",
        f"/{m}/debian/pool\\..\\..\\{marker}.deb",
        f"/{m}/debian/pool%5c..%5c..%5c{marker}.deb",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"http://{m}/debian/../../../etc/passwd",
        f"http://{m}/debian/%2e%2e/%2e%2e/tmp/{marker}",
        f"http://{m}/debian/pool/x%00.deb",
        f"http://{m}/debian/pool\\..\\..\\{marker}",
        "http://../etc/passwd",
    ]
    for target in targets:
        raw = send(daemon, f"GET {target} HTTP/1.1".encode())
        status, _, _ = split_response(raw)
        assert status == 400, (target, raw[:300])
    check()


def test_cr_lf_from_a_request_never_reaches_a_response_header(guarded, mirror) -> None:
    daemon, check, _ = guarded
    m = mirror.address.encode()
    attempts = [
        (b"GET /" + m + b"/debian/pool/x%0d%0aSet-Cookie:%20injected=1.deb HTTP/1.1",),
        (b"GET /" + m + b"/debian/pool/x%0aX-Injected:%201.deb HTTP/1.1",),
        (b"GET /" + m + b"/debian/pool/x%0d%0a%0d%0ainjected-body HTTP/1.1",),
        (b"GET http://exa%0d%0aSet-Cookie:%20injected=1/debian/x.deb HTTP/1.1",),
        (b"GET /" + m + b"/debian/pool/x\rSet-Cookie: injected=1.deb HTTP/1.1",),
        (b"GET / HTTP/1.1", b"X-Folded: a\r\n Set-Cookie: injected=1"),
        (b"GET /status.json HTTP/1.1", b"Referer: x\r\n\tX-Injected: 1"),
        (b"GET /" + m + b"/debian/dists/%0d%0aX-Injected:%201/Release HTTP/1.1",),
        (b"POST /" + m + b"/x%0d%0aSet-Cookie:%20injected=1 HTTP/1.1",),
    ]
    for request_line, *headers in attempts:
        raw = send(daemon, request_line, *headers)
        status, lines, body = split_response(raw)
        assert 200 <= status < 500, (request_line, raw[:300])
        for line in lines:
            name = line.split(b":", 1)[0].strip().lower()
            assert name not in (b"set-cookie", b"x-injected"), (request_line, raw[:500])
            assert b"injected" not in line.lower(), (request_line, raw[:500])
        # A body is a body: no CR at all, so nothing in it can pass for a header either.
        assert b"\r" not in body, (request_line, body)
    log = daemon.log_text().splitlines()
    assert not [line for line in log if line.lower().startswith(("set-cookie", "x-injected"))]
    check()


def test_clients_and_mirrors_not_allowed_are_403(guarded, repo: Repo, mirror) -> None:
    daemon, check, _ = guarded
    rel = repo.index_rel(repo.release_path)
    # A client address outside --allowed-clients: 403 for everything, status page included.
    for target in (f"/{mirror.address}/debian/{rel}", f"http://{mirror.address}/debian/{rel}"):
        for source in ("127.0.0.1", "127.0.0.6"):
            status, _, body = request(daemon, target, source=source)
            assert status == 403, (target, source, body)
    assert request(daemon, "/status.json", source="127.0.0.1")[0] == 403
    # An allowed client asking for a mirror outside --allowed-mirrors: 403, nothing fetched.
    other_port = f"127.0.0.1:{mirror.port + 1 if mirror.port < 65535 else 1}"
    for target in (
        f"/{other_port}/debian/{rel}",
        f"/127.0.0.2:{mirror.port}/debian/{rel}",
        f"/deb.example.org/debian/{rel}",
        f"/{mirror.host}/debian/{rel}",  # the mirror's host on port 80: another mirror
        f"http://deb.example.org/debian/{rel}",
        f"http://127.0.0.2:{mirror.port}/debian/{rel}",
    ):
        status, _, body = request(daemon, target, source=CLIENT)
        assert status == 403, (target, body)
    check()


def test_methods_other_than_get_and_head_are_405(guarded, repo: Repo, mirror) -> None:
    daemon, check, _ = guarded
    target = f"/{mirror.address}/debian/{repo.index_rel(repo.release_path)}"
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        raw = raw_exchange(
            daemon,
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            "Connection: close\r\n\r\nhello".encode(),
            source=CLIENT,
        )
        status, lines, _ = split_response(raw)
        assert status == 405, (method, raw[:300])
        assert b"allow: get, head, connect" in [line.lower() for line in lines], (method, lines)
    # CONNECT is tunnelled only to an allowed mirror on port 443 (test_upstream.py)
    raw = send(daemon, f"CONNECT {mirror.address} HTTP/1.1".encode())
    assert split_response(raw)[0] == 403, raw[:300]
    check()


def test_huge_headers_are_refused(guarded) -> None:
    daemon, check, _ = guarded
    cases = {
        "one 20 KB header": [b"X-Big: " + b"a" * 20_000],
        "200 headers": [f"X-H{i}: {i}".encode() for i in range(200)],
        "one 70 KB header": [b"X-Big: " + b"a" * 70_000],
    }
    for what, headers in cases.items():
        raw = send(daemon, b"GET /status.json HTTP/1.1", *headers)
        status, _, _ = split_response(raw)
        assert status in (400, 431), (what, raw[:300])
    # A request line longer than any path a mirror serves.
    raw = send(daemon, b"GET /" + b"a" * 10_000 + b" HTTP/1.1")
    assert split_response(raw)[0] in (400, 414), raw[:300]
    check()


def test_a_client_that_sends_garbage_or_stalls_does_not_stop_others(guarded) -> None:
    daemon, check, _ = guarded
    stalled = socket.create_connection(
        (daemon.bind, daemon.port), timeout=5, source_address=(CLIENT, 0)
    )
    try:
        stalled.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\n")  # never finished
        raw = raw_exchange(daemon, b"\x16\x03\x01\x02\x00garbage\r\n\r\n", source=CLIENT)
        assert raw == b"" or split_response(raw)[0] == 400, raw[:300]
        check()  # the daemon serves others meanwhile
    finally:
        stalled.close()
