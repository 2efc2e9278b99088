"""The WSGI application apt talks to: access control, routing, and HTTP semantics.

Everything below this module speaks in targets, files and downloads; this is the one
place that knows HTTP statuses. Expected failures arrive as
:class:`~debtorrent.errors.DebtorrentError` subclasses carrying a ``status``; they
become short plain-text answers, never a traceback. Nothing taken from the request is
ever written into a response header. An error's ``phrase`` (a fixed text chosen by the
code, such as ``Forbidden (not a file of a Debian archive)``) becomes the HTTP reason
phrase, because that is what apt prints beside the status.

``CONNECT`` (an https source through ``Acquire::http::Proxy``) goes to
:mod:`debtorrent.apt.tunnel`; everything else but GET and HEAD is a 405.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from debtorrent.apt.proxy import Cached, Proxy
from debtorrent.apt.serve import (
    FileBody,
    RangeNotSatisfiable,
    http_date,
    parse_http_date,
    parse_range,
)
from debtorrent.apt.tunnel import Tunnels
from debtorrent.apt.urls import FileClass, classify, parse_target
from debtorrent.config import Config
from debtorrent.errors import DebtorrentError, ForbiddenError
from debtorrent.fetch import Transfer

__all__ = ["AptApp"]

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Route = Callable[[dict, StartResponse], Iterable[bytes]]

_REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}
READ_CHUNK = 262144
ATIME_STEP = 1.0  # a served file's access time is kept this fresh (relatime is not)


def _status(code: int, phrase: str | None = None) -> str:
    return f"{code} {_phrase(phrase) or _REASONS.get(code, 'Error')}"


def _phrase(text: str | None) -> str:
    """A reason phrase safe on a status line: printable ASCII, bounded."""
    if not text:
        return ""
    return "".join(c if c.isascii() and c.isprintable() else " " for c in text)[:150].strip()


def _content_type(path: str) -> str:
    if path.endswith((".deb", ".udeb")):
        return "application/vnd.debian.binary-package"
    return "application/octet-stream"


class AptApp:
    """``app(environ, start_response)`` for gevent.pywsgi.

    ``routes`` maps exact local paths (``/``, ``/status.json``) to other WSGI apps, so
    the status pages live beside the proxy without it knowing them.
    """

    def __init__(self, config: Config, proxy: Proxy, routes: dict[str, Route] | None = None):
        self.config = config
        self.proxy = proxy
        self.routes: dict[str, Route] = dict(routes or {})
        self.read_timeout = max(config.http_timeout * 2, 10.0)
        self.tunnels = Tunnels(config)
        # Told of each proxied answer as it starts: (file class, status, body bytes);
        # the status page counts requests and bytes sent to apt with it.
        self.on_request: Callable[[str, int, int], None] | None = None

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if self.on_request is not None:
            start_response = _counting(self.on_request, environ, start_response)
        try:
            return self._handle(environ, start_response)
        except DebtorrentError as exc:
            code = getattr(exc, "status", 500)
            log.log(
                logging.INFO if code < 500 else logging.WARNING,
                "%s %s -> %d: %s",
                environ.get("REMOTE_ADDR", "-"),
                _loggable(environ.get("debtorrent.raw_target", "")),
                code,
                exc,
            )
            return self._error(start_response, code, str(exc), getattr(exc, "phrase", None))

    def prefetch(self, client: str, raw: str) -> None:
        """Start the download of a pipelined request that will be answered later.

        Only what the request itself would be allowed to fetch; anything odd is left
        for the request, which will answer it properly.
        """
        if not self.config.client_allowed(client) or raw.split("?", 1)[0] in self.routes:
            return
        try:
            target = parse_target(raw)
        except DebtorrentError:
            return
        if self.config.mirror_allowed(target.mirror):
            self.proxy.prefetch(target)

    def _handle(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if not self.config.client_allowed(environ.get("REMOTE_ADDR", "")):
            raise ForbiddenError("client address not allowed")
        method = environ.get("REQUEST_METHOD", "")
        raw = environ.get("debtorrent.raw_target") or environ.get("PATH_INFO", "/")
        if method == "CONNECT":
            return self.tunnels.open(raw, environ.get("REMOTE_ADDR", "-"))
        if method not in ("GET", "HEAD"):
            start_response(_status(405), [("Allow", "GET, HEAD, CONNECT"), ("Content-Length", "0")])
            return []
        route = self.routes.get(raw.split("?", 1)[0])
        if route is not None:
            return route(environ, start_response)
        target = parse_target(raw)
        cls = classify(target.path)
        environ["debtorrent.class"] = cls.value
        if not self.config.mirror_allowed(target.mirror):
            raise ForbiddenError(
                f"mirror {target.mirror} not allowed", "Forbidden (mirror not in allowed-mirrors)"
            )
        if cls is FileClass.UNKNOWN:
            raise ForbiddenError(
                f"{target.path!r} is not a file of a Debian archive",
                "Forbidden (not a file of a Debian archive)",
            )
        self.config.reach.check_literal(target.mirror, target.url)
        result = self.proxy.resolve(target, "HTTP_IF_MODIFIED_SINCE" in environ)
        if isinstance(result, Cached):
            return self._send_cached(environ, start_response, result)
        return self._stream(environ, start_response, result)

    # --- answers ------------------------------------------------------------------

    def _error(
        self, start_response: StartResponse, code: int, reason: str, phrase: str | None = None
    ) -> list[bytes]:
        body = f"{code} {_REASONS.get(code, 'Error')}: {_loggable(reason)}\n".encode()
        start_response(
            _status(code, phrase),
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _send_cached(
        self, environ: dict, start_response: StartResponse, cached: Cached
    ) -> Iterable[bytes]:
        fd = os.open(cached.path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            size, mtime = stat.st_size, int(stat.st_mtime)
            if time.time() - stat.st_atime > ATIME_STEP:  # expiry's "least recently used"
                os.utime(fd, (time.time(), stat.st_mtime))
            headers = [
                ("Content-Type", _content_type(str(cached.path))),
                ("Last-Modified", http_date(mtime)),
                ("Accept-Ranges", "bytes"),
            ]
            since = parse_http_date(environ.get("HTTP_IF_MODIFIED_SINCE"))
            if since is not None and mtime <= since and "HTTP_RANGE" not in environ:
                os.close(fd)
                start_response(_status(304), headers)
                return []
            span = None
            if_range = environ.get("HTTP_IF_RANGE")
            if if_range is None or if_range.strip() == http_date(mtime):
                try:
                    span = parse_range(environ.get("HTTP_RANGE"), size)
                except RangeNotSatisfiable:
                    os.close(fd)
                    headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
                    start_response(_status(416), headers)
                    return []
            if span is None:
                start, end, code = 0, size, 200
            else:
                start, end, code = span[0], span[1], 206
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
            headers.append(("Content-Length", str(end - start)))
            start_response(_status(code), headers)
        except BaseException:
            os.close(fd)
            raise
        if environ.get("REQUEST_METHOD") == "HEAD":
            os.close(fd)
            return []
        return FileBody(fd, start, end)

    def _stream(
        self, environ: dict, start_response: StartResponse, download: Transfer
    ) -> Iterable[bytes]:
        headers = [("Content-Type", _content_type(download.path))]
        if download.length is not None:
            headers.append(("Content-Length", str(download.length)))
        if download.last_modified is not None:
            headers.append(("Last-Modified", http_date(download.last_modified)))
        start_response(_status(200), headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []
        return self._body(download, start_response)

    def _body(self, download: Transfer, start_response: StartResponse) -> Iterator[bytes]:
        """The download's bytes as they become readable; an error cuts the transfer.

        Before the first byte the status can still change (WSGI's ``exc_info``), so an
        early failure is a plain 502/504; later, closing the connection short of the
        announced length is the only honest signal left.
        """
        offset = 0
        try:
            while True:
                data = download.read(offset, READ_CHUNK, self.read_timeout)
                if not data:
                    return
                offset += len(data)
                yield data
        except DebtorrentError as exc:
            log.warning("cutting transfer of %s/%s: %s", download.mirror, download.path, exc)
            if offset == 0:
                code = getattr(exc, "status", 502)
                body = f"{code} {_REASONS.get(code, 'Error')}: {_loggable(str(exc))}\n".encode()
                start_response(
                    _status(code, getattr(exc, "phrase", None)),
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                    sys.exc_info(),
                )
                yield body
                return
            raise ConnectionAbortedError(errno.ECONNABORTED, "transfer cut") from None


def _counting(
    hook: Callable[[str, int, int], None], environ: dict, start_response: StartResponse
) -> StartResponse:
    """``start_response`` that first tells ``hook`` of an answer to a parsed target.

    Routes and requests refused before their target is parsed carry no class and are
    not counted; the body size is the announced Content-Length (none for HEAD).
    """

    def counted(status: str, headers: list[tuple[str, str]], exc_info=None):
        cls = environ.get("debtorrent.class")
        if cls is not None and exc_info is None:
            size = 0
            if environ.get("REQUEST_METHOD") != "HEAD":
                size = next((int(v) for k, v in headers if k == "Content-Length"), 0)
            hook(cls, int(status[:3]), size)
        return start_response(status, headers, exc_info)

    return counted


def _loggable(text: str) -> str:
    """``text`` with control characters escaped, so it cannot forge log or body lines."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:300]
