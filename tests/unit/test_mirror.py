"""Talking to mirrors (``mirror.py``): statuses, ranges, redirects, broken bodies, timeouts.

Against the mirror fixture on loopback; every failure must be a :class:`MirrorError`
of the right kind (so apt gets 404, 502 or 504), never a urllib3 exception.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from debtorrent.errors import MirrorError, MirrorNotFoundError, MirrorTimeoutError
from debtorrent.mirror import Mirror
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import free_port


@pytest.fixture
def data(tmp_path: Path) -> bytes:
    blob = random.Random(3).randbytes(300_000)
    (tmp_path / "f.bin").write_bytes(blob)
    return blob


@pytest.fixture
def server(tmp_path: Path, data: bytes):
    with MirrorServer(tmp_path, prefix="/debian") as s:
        yield s


@pytest.fixture
def mirror():
    m = Mirror(1.0, lambda host: host.startswith("127.0.0.1"))
    yield m
    m.close()


def body(response) -> bytes:
    return b"".join(response.chunks())


def test_a_whole_file(server: MirrorServer, mirror: Mirror, data: bytes) -> None:
    response = mirror.get(f"{server.url}/f.bin")
    assert (response.status, response.length, response.start) == (200, len(data), 0)
    assert response.last_modified
    assert body(response) == data


def test_a_range(server: MirrorServer, mirror: Mirror, data: bytes) -> None:
    response = mirror.get(f"{server.url}/f.bin", {"Range": "bytes=1000-1999"})
    assert (response.status, response.length, response.start) == (206, 1000, 1000)
    assert body(response) == data[1000:2000]


def test_not_found_is_a_404(server: MirrorServer, mirror: Mirror) -> None:
    with pytest.raises(MirrorNotFoundError) as info:
        mirror.get(f"{server.url}/missing.bin")
    assert info.value.status == 404


def test_a_server_error_is_a_502(server: MirrorServer, mirror: Mirror) -> None:
    server.fault("/f.bin", "500")
    with pytest.raises(MirrorError) as info:
        mirror.get(f"{server.url}/f.bin")
    assert info.value.status == 502 and "500" in str(info.value)
    # the connection is reused: the short error body was drained
    server.clear_faults()
    assert body(mirror.get(f"{server.url}/f.bin"))


def test_refused_is_a_502_not_a_timeout(mirror: Mirror) -> None:
    with pytest.raises(MirrorError) as info:
        mirror.get(f"http://127.0.0.1:{free_port()}/f.bin")
    assert info.value.status == 502 and "refused" in str(info.value)


def test_no_answer_is_a_504(server: MirrorServer, mirror: Mirror) -> None:
    server.fault("/f.bin", "hang")
    with pytest.raises(MirrorTimeoutError) as info:
        mirror.get(f"{server.url}/f.bin")
    assert info.value.status == 504


def test_a_cut_body_is_an_error_not_a_short_file(server: MirrorServer, mirror: Mirror) -> None:
    server.fault("/f.bin", "truncate")
    response = mirror.get(f"{server.url}/f.bin")
    with pytest.raises(MirrorError, match="body"):
        body(response)


def test_redirects_only_to_allowed_mirrors(server: MirrorServer, mirror: Mirror, data) -> None:
    server.fault("/f.bin", "redirect", location="/debian/f.bin?x", times=1)
    assert body(mirror.get(f"{server.url}/f.bin")) == data  # same host: followed
    server.fault("/f.bin", "redirect", location="http://evil.invalid/f.bin")
    with pytest.raises(MirrorError, match="not allowed"):
        mirror.get(f"{server.url}/f.bin")
