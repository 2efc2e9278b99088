"""The WSGI application apt talks to: access control, routing, and HTTP semantics.

Everything below this module speaks in targets, files and downloads; this is the one
place that knows HTTP statuses. Expected failures arrive as
:class:`~debtorrent.errors.DebtorrentError` subclasses carrying a ``status``; they
become short plain-text answers, never a traceback.

apt shows only the status line of a failed answer (``Err:3 http://… 502 …``), never
the body, so the reason phrase carries the cause (see :func:`reason_phrase`): an
error's own ``phrase`` when the code that raised it chose one (``Forbidden (not a file
of a Debian archive)``), else one made from the error: ``502 Mirror refused connection
(deb.example.org:80)``, ``504 Mirror timed out after 30 s (deb.example.org)``, ``403
Client 192.0.2.7 not allowed``. The phrase is printable ASCII and short; the only part
of it that comes from the request is the mirror host, which
:func:`~debtorrent.apt.urls.parse_target` has already checked to be a host name.
Nothing else taken from the request is written into a response header.

``CONNECT`` (an https source through ``Acquire::http::Proxy``) goes to
:mod:`debtorrent.apt.tunnel`; everything else but GET and HEAD is a 405.

Resuming: a verified file is answered with a strong ``ETag`` (its index SHA256) when
it comes whole from the cache, and always with the ``Last-Modified`` date of the
attempt that fetched it (see :class:`~debtorrent.cache.AttemptDates`), so apt's
``Range`` + ``If-Range`` after a cut transfer gets a 206 from the cached file, and a
date or tag that does not match gets the whole file (200).
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
from debtorrent.errors import (
    BadRequestError,
    CacheError,
    DebtorrentError,
    DiskFullError,
    ForbiddenError,
    MirrorError,
    MirrorNotFoundError,
    NotFoundError,
    VerificationError,
)
from debtorrent.fetch import Transfer
from debtorrent.ratelimit import LogLimiter

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
MAX_PHRASE = 120  # characters of a reason phrase


def _status(code: int, phrase: str | None = None) -> str:
    return f"{code} {_phrase(phrase or '') or _REASONS.get(code, 'Error')}"


#: Phrases that only repeat the status: a more precise one is made from the error.
_GENERIC = frozenset({"Forbidden", "Service Unavailable", "Bad Gateway", "Not Found"})


def reason_phrase(exc: DebtorrentError, code: int) -> str:
    """The status line's reason phrase for a failure: the cause, as apt will print it."""
    chosen = getattr(exc, "phrase", None)
    if chosen and chosen not in _GENERIC:
        return _phrase(chosen)
    if isinstance(exc, MirrorError) and not isinstance(exc, MirrorNotFoundError):
        host = _host_of(exc.url)
        text = f"Mirror {exc.reason} ({host})" if host else _capital(exc.reason)
    elif isinstance(exc, MirrorNotFoundError):
        host = _host_of(exc.url)
        text = f"Not Found on the mirror ({host})" if host else "Not Found"
    elif isinstance(exc, VerificationError):
        text = f"Verification failed: {exc.reason}"
    elif isinstance(exc, DiskFullError):
        text = "Cache disk full"
    elif isinstance(exc, CacheError):
        text = "Cache error: " + str(exc)
    elif isinstance(exc, ForbiddenError | NotFoundError):
        text = _capital(str(exc))
    elif isinstance(exc, BadRequestError):
        text = "Bad Request: " + str(exc)
    else:
        text = chosen or _REASONS.get(code, "Error")
    if not (
        text[:1].isascii() and text[:1].isalpha()
    ):  # a phrase reads as words: "Forbidden: 0", not "0"
        text = f"{_REASONS.get(code, 'Error')}: {text}"
    return _phrase(text)


def _host_of(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return rest.split("/", 1)[0] if sep and scheme in ("http", "https") else ""


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _phrase(text: str) -> str:
    """Printable ASCII on one line, at most :data:`MAX_PHRASE` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return clean if len(clean) <= MAX_PHRASE else clean[: MAX_PHRASE - 3] + "..."


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
        # Told of each proxied answer as it starts: (file class, status, body bytes,
        # source: cache, offline, peer, mirror); the status page counts with it.
        self.on_request: Callable[[str, int, int, str], None] | None = None
        # POST paths (``/rescan``): like ``routes``, for the commands' requests
        self.post_routes: dict[str, Route] = {}
        self._refusals = LogLimiter()

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
                extra={"failure": exc},
            )
            return self._error(start_response, code, reason_phrase(exc, code), str(exc))

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
        client = environ.get("REMOTE_ADDR", "")
        if not self.config.client_allowed(client):
            raise ForbiddenError(f"client {client} not allowed")
        method = environ.get("REQUEST_METHOD", "")
        raw = environ.get("debtorrent.raw_target") or environ.get("PATH_INFO", "/")
        if method == "POST" and raw in self.post_routes:
            return self.post_routes[raw](environ, start_response)
        if method == "CONNECT":
            return self.tunnels.open(raw, client or "-")
        if method not in ("GET", "HEAD"):
            self._log_refusal(client, f"method {_loggable(method)[:20]} refused (405)")
            start_response(
                _status(405, f"Method {_phrase(method)[:20]} not allowed: GET, HEAD or CONNECT"),
                [("Allow", "GET, HEAD, CONNECT"), ("Content-Length", "0")],
            )
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
        conditional = "HTTP_IF_MODIFIED_SINCE" in environ
        result = self.proxy.resolve(target, conditional)
        if isinstance(result, Cached):
            try:
                return self._send_cached(environ, start_response, result)
            except FileNotFoundError:  # removed between the lookup and the open
                log.info("%s: cached file vanished; resolving again", target)
                result = self.proxy.resolve(target, conditional)
                if isinstance(result, Cached):
                    return self._send_cached(environ, start_response, result)
        return self._stream(environ, start_response, result)

    def _log_refusal(self, client: str, what: str) -> None:
        """A refused request, logged at most once a minute per client."""
        held = self._refusals.allow(client, time.monotonic())
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            log.warning("%s: %s%s", client, what, more)

    # --- answers ------------------------------------------------------------------

    def _error(
        self, start_response: StartResponse, code: int, phrase: str, detail: str
    ) -> list[bytes]:
        body = f"{code} {phrase}: {_loggable(detail)}\n".encode()
        start_response(
            _status(code, phrase),
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _send_cached(
        self, environ: dict, start_response: StartResponse, cached: Cached
    ) -> Iterable[bytes]:
        fd = os.open(cached.path, os.O_RDONLY)
        environ["debtorrent.answer"] = cached
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
            etag = f'"{cached.sha256}"' if cached.sha256 else None
            if etag is not None:
                headers.append(("ETag", etag))
            since = parse_http_date(environ.get("HTTP_IF_MODIFIED_SINCE"))
            none_match = environ.get("HTTP_IF_NONE_MATCH")
            fresh = (
                _etag_matches(none_match, etag)
                if none_match is not None
                else since is not None and mtime <= since
            )
            if fresh and "HTTP_RANGE" not in environ:
                os.close(fd)
                start_response(_status(304), headers)
                return []
            span = None
            if_range = environ.get("HTTP_IF_RANGE")
            if if_range is None or _if_range_matches(if_range, etag, http_date(mtime)):
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
        environ["debtorrent.answer"] = download
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
            log.warning(
                "cutting transfer of %s/%s: %s",
                download.mirror,
                download.path,
                exc,
                extra={"failure": exc},
            )
            if offset == 0:
                code = getattr(exc, "status", 502)
                phrase = reason_phrase(exc, code)
                body = f"{code} {phrase}: {_loggable(str(exc))}\n".encode()
                start_response(
                    _status(code, phrase),
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                    sys.exc_info(),
                )
                yield body
                return
            raise ConnectionAbortedError(errno.ECONNABORTED, "transfer cut") from None


def answer_source(environ: dict) -> str:
    """Where the answer to a request came from: ``cache`` (or ``offline``: the saved
    copy, the mirror failing), ``peer`` (through a swarm), ``mirror``, or ``-`` (no file:
    a refusal, an error, a status path). A swarm download the mirror joined is
    ``mirror``."""
    answer = environ.get("debtorrent.answer")
    if answer is None:
        return "-"
    source = getattr(answer, "source", "mirror")
    return "cache" if source == "swarm" else source


def _counting(
    hook: Callable[[str, int, int, str], None], environ: dict, start_response: StartResponse
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
            hook(cls, int(status[:3]), size, answer_source(environ))
        return start_response(status, headers, exc_info)

    return counted


def _etag_matches(header: str, etag: str | None) -> bool:
    """If-None-Match: ``*`` or a list holding our tag (weak comparison, RFC 9110)."""
    if etag is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _if_range_matches(header: str, etag: str | None, date: str) -> bool:
    """If-Range: a strong tag equal to ours, or exactly our Last-Modified date."""
    value = header.strip()
    if value.startswith(('"', "W/")):
        return etag is not None and value == etag  # weak tags never match (RFC 9110)
    return value == date


def _loggable(text: str) -> str:
    """``text`` with control characters escaped, so it cannot forge log or body lines."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:300]
