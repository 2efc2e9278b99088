"""The mirror as HTTP seed (``torrent/webseed.py``): per-mirror back-off, fetches, URLs.

:class:`MirrorFetch` runs against the mirror fixture (a real HTTP server on loopback,
with Range and injectable faults) and feeds a small fake sink; :class:`MirrorHealth`
is stepped with a hand clock.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from debtorrent.errors import (
    DebtorrentError,
    MirrorError,
    MirrorNotFoundError,
    MirrorTimeoutError,
    VerificationError,
)
from debtorrent.mirror import Mirror
from debtorrent.policy import Backoff
from debtorrent.torrent.layout import Layout
from debtorrent.torrent.picker import PieceSet
from debtorrent.torrent.webseed import MirrorFetch, MirrorHealth, mirror_url, web_seed_url
from tests.fixtures.mirror import MirrorServer

PIECE = 16 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- MirrorHealth -------------------------------------------------------------------------------


def test_a_failing_mirror_backs_off_exponentially_and_recovers() -> None:
    clock = Clock()
    health = MirrorHealth(Backoff(2.0, 30.0), 60.0, clock)
    error = MirrorError("http://m/x", "connection refused or unreachable")
    waits = []
    for _ in range(6):
        assert health.ready("m")
        health.failed("m", error)
        assert not health.ready("m")
        waits.append(health.retry_in("m"))
        clock.now += waits[-1]
    assert waits == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert health.ready("other")  # per mirror
    health.succeeded("m")
    assert health.ready("m") and health.failures("m") == 0


def test_failures_are_logged_once_per_period_with_a_count(caplog) -> None:
    clock = Clock()
    health = MirrorHealth(Backoff(0.25, 0.25), 60.0, clock)
    error = MirrorError("http://m/x", "connection refused or unreachable")
    with caplog.at_level(logging.WARNING, logger="debtorrent.torrent.webseed"):
        for _ in range(240):  # one a quarter second for a minute
            health.failed("m", error)
            clock.now += 0.25
        health.failed("m", error)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "1 failure in" in lines[0] and "240 failures in the last 60 s" in lines[1]


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (MirrorError("u", "mirror answered 503"), True),
        (MirrorTimeoutError("u", "timed out"), True),
        (MirrorNotFoundError("u", "not found (404)"), False),
        (VerificationError("u", "SHA256 does not match the index"), False),
    ],
)
def test_only_the_mirrors_own_failures_count(error: DebtorrentError, counts: bool) -> None:
    assert MirrorHealth.counts(error) is counts


# --- URLs -------------------------------------------------------------------------------------


def test_urls() -> None:
    assert mirror_url("m:8080", "debian", "pool/main/g/gcc+x_1.deb") == (
        "http://m:8080/debian/pool/main/g/gcc+x_1.deb"
    )
    assert mirror_url("m", "", "pool/a b.deb") == "http://m/pool/a%20b.deb"
    assert web_seed_url("http://s/seed", ("pack", "sub", "a b"), True) == (
        "http://s/seed/pack/sub/a%20b"
    )
    assert web_seed_url("http://s/seed/", ("file.iso",), False) == "http://s/seed/file.iso"
    assert web_seed_url("http://s/f.iso", ("file.iso",), False) == "http://s/f.iso"


# --- MirrorFetch against a real HTTP server ------------------------------------------------------


class Sink:
    """A swarm of one file, seen by the fetch: the layout, what is had, the results."""

    def __init__(self, size: int, had: set[int] = frozenset()) -> None:
        self.layout = Layout.file_aligned([size], PIECE)
        self.have = PieceSet(self.layout.num_pieces)
        for piece in had:
            self.have.add(piece)
        self.pieces: dict[int, bytes] = {}
        self.done: list[DebtorrentError | None] = []

    def mirror_piece(self, fetch: MirrorFetch, piece: int, data: bytes) -> None:
        self.pieces[piece] = data
        self.have.add(piece)

    def mirror_done(self, fetch: MirrorFetch, error: DebtorrentError | None) -> None:
        self.done.append(error)


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(5).randbytes(5 * PIECE + 123)
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "f.deb").write_bytes(data)
    return tmp_path, data


def run_fetch(sink: Sink, server: MirrorServer, health: MirrorHealth | None = None) -> MirrorFetch:
    mirror = Mirror(2.0, lambda host: True)
    fetch = MirrorFetch(sink, 0, f"{server.url}/pool/f.deb", mirror, health)
    fetch.start()
    assert fetch.greenlet is not None
    fetch.greenlet.join(timeout=10)
    mirror.close()
    return fetch


def pieces_of(data: bytes) -> dict[int, bytes]:
    return {i: data[i * PIECE : (i + 1) * PIECE] for i in range(-(-len(data) // PIECE))}


def test_only_missing_runs_are_asked_for_with_range(served) -> None:
    root, data = served
    with MirrorServer(root, prefix="/debian") as server:
        sink = Sink(len(data), had={0, 3})
        run_fetch(sink, server)
        ranges = [r.range for r in server.find("/pool/f.deb", method="GET")]
    assert sink.done == [None]
    assert sink.pieces == {p: b for p, b in pieces_of(data).items() if p not in (0, 3)}
    assert ranges == [f"bytes={PIECE}-{3 * PIECE - 1}", f"bytes={4 * PIECE}-{len(data) - 1}"]


def test_a_mirror_ignoring_range_is_read_as_one_stream(served) -> None:
    root, data = served
    with MirrorServer(root, prefix="/debian", honor_range=False) as server:
        sink = Sink(len(data), had={1})
        run_fetch(sink, server)
        gets = server.count("/pool/f.deb", method="GET")
    assert sink.done == [None] and gets == 1
    assert set(sink.pieces) == {0, 2, 3, 4, 5}
    assert all(sink.pieces[p] == pieces_of(data)[p] for p in sink.pieces)


def test_an_error_status_is_a_failure_of_the_mirror(served) -> None:
    root, data = served
    health = MirrorHealth(Backoff(2.0, 60.0), 60.0)
    with MirrorServer(root, prefix="/debian") as server:
        server.fault("/pool/f.deb", "500", times=1)
        sink = Sink(len(data))
        run_fetch(sink, server, health)
    (error,) = sink.done
    assert isinstance(error, MirrorError)
    assert health.failures(server.address) == 1 and not health.ready(server.address)


def test_a_cut_body_is_no_outage(served) -> None:
    """The mirror answered: it is up. The fetch fails, apt's retry may go at once."""
    root, data = served
    health = MirrorHealth(Backoff(2.0, 60.0), 60.0)
    with MirrorServer(root, prefix="/debian") as server:
        server.fault("/pool/f.deb", "truncate", times=1)
        sink = Sink(len(data))
        run_fetch(sink, server, health)
    (error,) = sink.done
    assert isinstance(error, MirrorError) and "body" in str(error)
    assert health.ready(server.address)


def test_a_wrong_length_is_no_failure_of_the_mirror(served, tmp_path: Path) -> None:
    root, data = served
    health = MirrorHealth(Backoff(2.0, 60.0), 60.0)
    with MirrorServer(root, prefix="/debian") as server:
        sink = Sink(len(data) + 1)  # the index says one byte more
        run_fetch(sink, server, health)
    (error,) = sink.done
    assert isinstance(error, VerificationError)
    assert health.ready(server.address)


def test_a_fetch_that_yields_stops_and_keeps_its_pieces(served) -> None:
    """Another daemon wins the tie-break while the body streams (here: as the first
    piece is handed over): the fetch stops, what it handed over stays."""
    root, data = served

    class Yielding(Sink):
        def mirror_piece(self, fetch: MirrorFetch, piece: int, data: bytes) -> None:
            super().mirror_piece(fetch, piece, data)
            fetch.yield_to(object())

    with MirrorServer(root, prefix="/debian") as server:
        sink = Yielding(len(data))
        run_fetch(sink, server)
    (error,) = sink.done
    assert isinstance(error, MirrorError) and "another daemon" in str(error)
    assert 1 <= len(sink.pieces) < 6
    assert all(sink.pieces[p] == pieces_of(data)[p] for p in sink.pieces)
