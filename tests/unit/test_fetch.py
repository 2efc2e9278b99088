"""Single-flight mirror downloads (``fetch.py``) against the mirror fixture.

One download per file however many ask; verified against the index before anything
reaches the cache; the last byte held back until then; a failure leaves no file.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from debtorrent.cache import Cache
from debtorrent.errors import MirrorNotFoundError, VerificationError
from debtorrent.fetch import Download, Expected, Fetcher
from debtorrent.mirror import Mirror
from tests.fixtures.mirror import MirrorServer


@pytest.fixture
def data(tmp_path: Path) -> bytes:
    blob = random.Random(11).randbytes(200_000)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.deb").write_bytes(blob)
    return blob


@pytest.fixture
def server(tmp_path: Path, data: bytes):
    with MirrorServer(tmp_path / "srv", prefix="/debian") as s:
        yield s


@pytest.fixture
def fetcher(tmp_path: Path):
    mirror = Mirror(2.0, lambda host: True)
    yield Fetcher(Cache(tmp_path / "cache"), mirror)
    mirror.close()


def read_all(download: Download) -> bytes:
    out = b""
    while chunk := download.read(len(out), 65536, timeout=5):
        out += chunk
    return out


def test_two_requests_share_one_download(server, fetcher: Fetcher, data: bytes) -> None:
    url = f"{server.url}/f.deb"
    expected = Expected(len(data), hashlib.sha256(data).hexdigest())
    first = fetcher.fetch(server.address, "debian/f.deb", url, expected=expected)
    second = fetcher.fetch(server.address, "debian/f.deb", url, expected=expected)
    assert first is second
    assert read_all(first) == data and read_all(second) == data
    assert server.count("/f.deb", method="GET") == 1
    assert first.final is not None and first.final.read_bytes() == data
    assert fetcher.active == {}


def test_a_file_failing_the_index_never_reaches_the_cache(
    server, fetcher: Fetcher, data: bytes, tmp_path: Path
) -> None:
    server.fault("/f.deb", "wrong", offset=len(data) - 1)
    expected = Expected(len(data), hashlib.sha256(data).hexdigest())
    download = fetcher.fetch(
        server.address, "debian/f.deb", f"{server.url}/f.deb", expected=expected
    )
    with pytest.raises(VerificationError):
        read_all(download)
    assert download.final is None
    assert not list((tmp_path / "cache").rglob("f.deb"))


def test_a_missing_file_is_a_404_for_every_watcher(server, fetcher: Fetcher) -> None:
    download = fetcher.fetch(server.address, "debian/no.deb", f"{server.url}/no.deb")
    with pytest.raises(MirrorNotFoundError):
        download.wait_headers(5)
    with pytest.raises(MirrorNotFoundError):
        download.read(0, 10, 1)


def test_the_last_byte_waits_for_verification() -> None:
    download = Download("m", "p", "http://m/p", Expected(10, "0" * 64), keep=True)
    download.received = 10
    assert download.readable() == 9  # complete but not verified yet
    download.done = True
    assert download.readable() == 10
    unknown = Download("m", "p", "http://m/p", None, keep=False)
    unknown.received = 5
    assert unknown.readable() == 5  # no size known: nothing to hold back against
