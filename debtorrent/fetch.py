"""Single-flight mirror downloads into the cache, watched by any number of requests.

Two apt clients asking for the same file at the same time cause one download: the
first request starts a :class:`Download`, later ones join it. The download writes a
temporary cache file and hashes on the fly; watchers read the bytes already written
(``os.pread``) and may stream them to apt, but the last byte is held back until the
whole file is complete and, where a size and SHA256 are known, verified. A failure
therefore always reaches apt as a cut transfer, never as a complete bad file, and
nothing partial is ever renamed into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import gevent
from gevent.event import Event

from debtorrent import offload
from debtorrent.cache import Cache, TempFile
from debtorrent.errors import DebtorrentError, MirrorError, MirrorTimeoutError, VerificationError
from debtorrent.mirror import Mirror

__all__ = ["Download", "Expected", "Fetcher", "Transfer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expected:
    """What the signed index chain says a file must be."""

    size: int
    sha256: str  # lower-case hex


class Transfer(Protocol):
    """What the apt side streams from: a mirror :class:`Download` or a swarm's file.

    ``read`` returns the next bytes at an offset, ``b""`` at the verified end, and
    raises if the transfer failed; the last byte is never readable before the whole
    file is verified.
    """

    mirror: str
    path: str
    length: int | None
    last_modified: float | None

    def wait_headers(self, timeout: float) -> None: ...

    def read(self, offset: int, size: int, timeout: float) -> bytes: ...


# Called with the download and its complete, verified temporary file before it is
# committed; may raise DebtorrentError to fail the download (e.g. an index whose
# uncompressed content does not match its Release).
Finisher = Callable[["Download", TempFile], None]


class Download:
    """One file on its way from the mirror to the cache.

    Watchers call :meth:`wait_headers` (status known or failed), then :meth:`read`
    from increasing offsets; ``read`` blocks until more bytes are readable, returns
    ``b""`` at the verified end, and raises the download's error if it failed.
    """

    def __init__(self, mirror: str, path: str, url: str, expected: Expected | None, keep: bool):
        self.mirror = mirror
        self.path = path
        self.url = url
        self.expected = expected
        self.keep = keep
        self.length: int | None = expected.size if expected else None
        # Last-Modified sent to apt while streaming. For a verified file it is this
        # attempt's own date (cache.AttemptDates), given to the cached file only if the
        # attempt succeeds: apt can resume a cut stream of it (Range + If-Range: 206),
        # and a stream cut for bad bytes never shares a date with the good file.
        self.last_modified: float | None = None
        self.mtime: float | None = None  # the mirror's date, given to the cached file
        self.received = 0
        self.started = False  # upstream answered, length known
        self.done = False
        self.error: DebtorrentError | None = None
        self.final: Path | None = None
        # the mirror sent what the cache already held: the old file (and its date) stays
        self.unchanged = False
        self.source = "mirror"
        self._tmp: TempFile | None = None
        self._changed = Event()

    # --- for watchers -----------------------------------------------------------

    def wait_headers(self, timeout: float) -> None:
        """Block until the mirror answered; raise the error if the download failed."""
        with gevent.Timeout(timeout, False):
            while not (self.started or self.done or self.error):
                self._changed.wait()
        if self.error:
            raise self.error
        if not (self.started or self.done):
            raise MirrorError(self.url, "sent no answer in time")

    def wait_done(self, timeout: float | None) -> Path:
        """Block until the file is complete and in the cache; raise its error, or a
        timeout as a :class:`MirrorTimeoutError`. ``None`` waits as long as the
        download runs (each read from the mirror has its own timeout)."""
        with gevent.Timeout(timeout, False):
            while not (self.done or self.error):
                self._changed.wait()
        if self.error:
            raise self.error
        if not self.done or self.final is None:
            raise MirrorTimeoutError(self.url, "not complete in time")
        return self.final

    def readable(self) -> int:
        """Bytes a watcher may have now: all once done, else all but the last byte."""
        if self.done:
            return self.received
        if self.length is None:
            return self.received
        return min(self.received, self.length - 1)

    def read(self, offset: int, size: int, timeout: float) -> bytes:
        """Up to ``size`` bytes at ``offset``, waiting at most ``timeout`` for them."""
        with gevent.Timeout(timeout, False):
            while self.readable() <= offset and not self.done and not self.error:
                self._changed.wait()
        if self.error:
            raise self.error
        end = min(self.readable(), offset + size)
        if end <= offset:
            if self.done:
                return b""
            raise MirrorError(self.url, "stalled: no data in time")
        assert self._tmp is not None and self._tmp.read_fd >= 0
        return os.pread(self._tmp.read_fd, end - offset, offset)

    # --- for the fetching greenlet ----------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, Event()
        changed.set()

    def __del__(self) -> None:
        # The read descriptor lives as long as anyone holds the download: a request
        # that joins just as it completes can still read a file that is not kept.
        if self._tmp is not None:
            self._tmp.close_reader()


class Fetcher:
    """Starts downloads and lets concurrent requests for one file share them."""

    def __init__(self, cache: Cache, mirror: Mirror) -> None:
        self.cache = cache
        self.mirror = mirror
        self.active: dict[tuple[str, str], Download] = {}

    def fetch(
        self,
        mirror: str,
        path: str,
        url: str,
        *,
        expected: Expected | None = None,
        keep: bool = True,
        finisher: Finisher | None = None,
        cache_path: str | None = None,
    ) -> Download:
        """The download of ``mirror/path``: the one in flight, or a new one.

        ``keep`` commits the result to the cache (as ``cache_path``, default ``path``);
        otherwise it is read by its watchers and then dropped.
        """
        key = (mirror, path)
        download = self.active.get(key)
        if download is not None:
            return download
        download = Download(mirror, path, url, expected, keep)
        self.active[key] = download
        gevent.spawn(self._run, download, finisher, cache_path or path)
        return download

    def _run(self, download: Download, finisher: Finisher | None, cache_path: str) -> None:
        try:
            self._transfer(download, finisher, cache_path)
        except DebtorrentError as exc:
            download.error = exc
            log.warning(
                "fetch %s/%s failed: %s",
                download.mirror,
                download.path,
                exc,
                extra={"failure": exc},  # the status page lists it once
            )
            if download._tmp is not None:
                download._tmp.discard()
        except Exception as exc:  # a bug: never leave watchers hanging
            log.exception("fetch %s/%s crashed", download.mirror, download.path)
            download.error = MirrorError(download.url, f"internal error: {exc}")
            if download._tmp is not None:
                download._tmp.discard()
        finally:
            self.active.pop((download.mirror, download.path), None)
            download._notify()

    def _transfer(self, download: Download, finisher: Finisher | None, cache_path: str) -> None:
        response = self.mirror.get(download.url)
        expected = download.expected
        if response.status == 206:  # never asked for a range: treat as broken
            response.release()
            raise MirrorError(download.url, "sent an unexpected partial answer")
        if expected and response.length is not None and response.length != expected.size:
            response.release()
            raise VerificationError(
                download.url, f"mirror sends {response.length} bytes, index says {expected.size}"
            )
        download.length = expected.size if expected else response.length
        download.mtime = _parse_http_date(response.last_modified)
        if expected:
            key = str(self.cache.path(download.mirror, cache_path))
            download.mtime = download.last_modified = self.cache.dates.issue(key)
        else:
            download.last_modified = download.mtime
        download._tmp = tmp = self.cache.create(download.mirror, cache_path)
        download.started = True
        download._notify()
        digest = hashlib.sha256()
        for chunk in response.chunks():
            if expected and download.received + len(chunk) > expected.size:
                raise VerificationError(download.url, "longer than the index says")
            tmp.write(chunk)
            digest.update(chunk)
            download.received += len(chunk)
            download._notify()
        if expected:
            if download.received != expected.size:
                raise VerificationError(
                    download.url, f"{download.received} bytes, index says {expected.size}"
                )
            if digest.hexdigest() != expected.sha256:
                raise VerificationError(download.url, "SHA256 does not match the index")
        if download.length is None:
            download.length = download.received
        if finisher is not None:
            finisher(download, tmp)
        if download.keep and self._same_as_cached(download, cache_path, digest.digest()):
            tmp.discard()
            download.final = self.cache.get(download.mirror, cache_path)
            download.unchanged = True
        elif download.keep:
            download.final = tmp.commit(download.mtime)
        else:
            tmp.discard()
        download.done = True
        log.info(
            "fetched %s/%s (%d bytes%s)",
            download.mirror,
            download.path,
            download.received,
            ", verified" if expected else "",
        )

    def _same_as_cached(self, download: Download, cache_path: str, digest: bytes) -> bool:
        """Whether the cache already holds these very bytes (an index fetched again
        unchanged): then the old copy, and the date apt already knows, are kept."""
        cached = self.cache.get(download.mirror, cache_path)
        if cached is None or download.expected is not None:  # verified files never differ
            return False
        try:
            if cached.stat().st_size != download.received:
                return False
            return offload.sha256_file(cached) == digest
        except OSError:
            return False


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
