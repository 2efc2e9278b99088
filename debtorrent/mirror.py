"""Talking to mirrors: every upstream HTTP request goes through here (urllib3).

One shared ``PoolManager`` keeps connections alive per mirror. Failures become
:class:`~debtorrent.errors.MirrorError` subclasses that carry the URL and a short
reason, so apt gets a 404/502/504 and the log names the mirror and path. Redirects
are followed by hand, and only to mirrors the configuration allows.

Every connection is made to an address :class:`~debtorrent.reach.Reach` allows (no
loopback, link-local or own address unless ``--allowed-mirrors`` names it), checked
after the name is resolved and used as checked, for first requests and redirects
alike.

TLS: callers always name a mirror with an ``http://`` URL, as apt's sources do; a
mirror written ``host:443`` or matching ``--tls-mirrors`` is fetched over https
instead, its certificate verified against the system store plus ``--ca-file``. A
redirect from https back to plain http is refused. A TLS failure is a 502 whose reason
phrase says what failed (``Bad Gateway (TLS: certificate verify failed)``), so apt
prints it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from socket import gaierror
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util import connection as urllib3_connection

from debtorrent import __version__
from debtorrent.errors import ConfigError, MirrorError, MirrorNotFoundError, MirrorTimeoutError
from debtorrent.ratelimit import TokenBucket
from debtorrent.reach import Reach

__all__ = ["Mirror", "Response", "tls_context"]

# urllib3 2 tells a name that does not resolve apart; Debian bookworm's 1.26 does not.
NameResolutionError = getattr(urllib3.exceptions, "NameResolutionError", None)

log = logging.getLogger(__name__)

USER_AGENT = f"debtorrent/{__version__}"
CHUNK = 262144  # per read from the mirror: fewer, larger reads cost less CPU per byte
MAX_REDIRECTS = 5
# Connections kept alive, and requests in flight at once, per mirror. More requests
# wait for a free connection (bounded by the timeout) rather than open more: a cold
# apt run starts up to ten downloads at once (pipelined requests read ahead).
CONNECTIONS_PER_MIRROR = 10  # apt keeps up to 10 requests in flight on its connection


@dataclass
class Response:
    """An upstream response whose body is read with :meth:`chunks`.

    ``length`` is the Content-Length if the mirror sent one; ``start`` is the offset
    of the first byte (non-zero only for a 206 answer to a Range request).
    """

    url: str
    status: int
    length: int | None
    start: int
    last_modified: str | None
    _raw: urllib3.BaseHTTPResponse
    bucket: TokenBucket | None = None  # --mirror-rate, shared by every download

    def chunks(self) -> Iterator[bytes]:
        """The body, chunk by chunk; a short or broken body raises :class:`MirrorError`."""
        received = 0
        complete = False
        try:
            for chunk in self._raw.stream(CHUNK, decode_content=False):
                received += len(chunk)
                if self.bucket is not None:  # paced before it is handed on, last one too
                    pause = self.bucket.take(len(chunk), time.monotonic())
                    if pause:
                        time.sleep(pause)  # cooperative: the daemon patched time
                yield chunk
            complete = self.length is None or received == self.length
        except ReadTimeoutError:
            raise MirrorTimeoutError(self.url, "timed out while sending the body") from None
        except (ProtocolError, Urllib3Error, OSError) as exc:
            if self.length is not None and "IncompleteRead" in str(exc):
                cut = f"cut the body at {received} of {self.length} bytes"
                raise MirrorError(self.url, cut) from None
            detail = getattr(exc, "strerror", None) or type(exc).__name__
            raise MirrorError(
                self.url, f"broke the connection after {received} bytes ({detail})"
            ) from None
        finally:
            self.release(reuse=complete)
        if not complete:
            raise MirrorError(self.url, f"cut the body at {received} of {self.length} bytes")

    def release(self, reuse: bool = False) -> None:
        """Give the connection back, or close it when the body was not read to the end.

        Draining an unread body could mean reading a whole large file for nothing.
        """
        if not reuse:
            self._raw.close()
        self._raw.release_conn()


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificate checking for https mirrors: the system store, plus ``ca_file``."""
    context = urllib3.util.ssl_.create_urllib3_context()
    context.load_default_certs()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("ca-file", f"{ca_file}: {exc}") from None
    return context


class Mirror:
    """The upstream side: GETs with timeouts, allowed-host redirects and error mapping.

    ``reach`` decides which addresses may be connected to (None: any, for tools and
    tests that build a Mirror by hand); ``tls_mirror`` says which mirrors are fetched
    over https although named with http:// URLs.
    """

    def __init__(
        self,
        timeout: float,
        host_allowed: Callable[[str], bool],
        source_address: str | None = None,
        bucket: TokenBucket | None = None,
        *,
        reach: Reach | None = None,
        tls_mirror: Callable[[str], bool] | None = None,
        ca_file: str = "",
    ) -> None:
        self.timeout = timeout
        self.host_allowed = host_allowed
        self.bucket = bucket
        # per mirror host: (time.time(), reason) of the last failure to connect or
        # answer, and the time of the last answer; /health and the status page read them
        self.failures: dict[str, tuple[float, str]] = {}
        self.answered: dict[str, float] = {}
        self.reach = reach
        self.tls_mirror = tls_mirror or (lambda netloc: netloc.endswith(":443"))
        kwargs = {"source_address": (source_address, 0)} if source_address else {}
        self.pool = urllib3.PoolManager(
            num_pools=32,
            maxsize=CONNECTIONS_PER_MIRROR,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            headers={"User-Agent": USER_AGENT},
            ssl_context=tls_context(ca_file),
            **kwargs,
        )
        if reach is not None:
            self.pool.pool_classes_by_scheme = _guarded_pools(reach)

    def upstream_url(self, url: str) -> str:
        """The URL actually fetched: ``http://`` becomes ``https://`` for TLS mirrors."""
        if not url.startswith("http://"):
            return url
        netloc, slash, rest = url[len("http://") :].partition("/")
        if not self.tls_mirror(netloc):
            return url
        if netloc.endswith(":443"):
            netloc = netloc[: -len(":443")]
        return f"https://{netloc}{slash}{rest}"

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        """Start a GET; the status is checked, the body is left to stream.

        404/410 raise :class:`MirrorNotFoundError`; 5xx and other unexpected statuses,
        refused connections and timeouts raise :class:`MirrorError` subclasses; an
        internal address the configuration does not name raises
        :class:`MirrorForbiddenError` (403).
        """
        url = self.upstream_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            raw = self._request(url, headers or {})
            if raw.status in (301, 302, 303, 307, 308):
                location = raw.headers.get("Location", "")
                _discard(raw)
                url = self._redirect_target(url, location)
                continue
            return self._response(url, raw)
        raise MirrorError(url, f"more than {MAX_REDIRECTS} redirects")

    def _request(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        host = urllib3.util.parse_url(url).netloc or url
        try:
            raw = self.pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                redirect=False,
                pool_timeout=self.timeout,
            )
        except EmptyPoolError:
            # ours, not the mirror's: not recorded as a failure of the mirror
            raise MirrorTimeoutError(
                url, f"had no free connection for {self.timeout:g} s"
            ) from None
        except MaxRetryError as exc:
            error = _mirror_error(url, exc.reason, self.timeout)
        except (Urllib3Error, OSError) as exc:
            error = _mirror_error(url, exc, self.timeout)
        else:
            self.answered[host] = time.time()
            return raw
        self.failures[host] = (time.time(), error.reason)
        raise error

    def _redirect_target(self, url: str, location: str) -> str:
        if not location or any(c in location for c in "\r\n\0"):
            raise MirrorError(url, "redirect without a usable Location")
        location = urljoin(url, location)  # relative and scheme-relative alike
        target = urllib3.util.parse_url(location)
        host = target.host.lower() if target.host else ""
        netloc = f"{host}:{target.port}" if target.port else host
        if target.scheme not in ("http", "https") or not self.host_allowed(netloc):
            raise MirrorError(url, f"redirect to {netloc or location!r} not allowed")
        if url.startswith("https://") and target.scheme != "https":
            raise MirrorError(url, f"redirect from https to plain {location!r} refused")
        if target.scheme == "http":
            location = self.upstream_url(location)
        log.info("%s redirected to %s", url, location)
        return location

    def _response(self, url: str, raw: urllib3.BaseHTTPResponse) -> Response:
        status = raw.status
        if status in (404, 410):
            _discard(raw)
            raise MirrorNotFoundError(url, f"has no such file ({status})")
        if status not in (200, 206):
            _discard(raw)
            raise MirrorError(url, f"answered {status} {raw.reason or ''}".strip())
        start = 0
        length_header = raw.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if status == 206:
            content_range = raw.headers.get("Content-Range", "")
            try:
                start = int(content_range.split()[1].split("-")[0])
            except (IndexError, ValueError):
                _discard(raw)
                raise MirrorError(url, f"bad Content-Range {content_range!r}") from None
        return Response(
            url, status, length, start, raw.headers.get("Last-Modified"), raw, self.bucket
        )

    def close(self) -> None:
        """Drop every pooled connection."""
        self.pool.clear()


def _discard(raw: urllib3.BaseHTTPResponse) -> None:
    """Drop a response we will not read: a short body (an error page) is drained so
    the connection can be reused; anything longer or unknown closes the connection, so
    its unread bytes never reach the next request on it."""
    length = raw.headers.get("Content-Length", "")
    try:
        if length.isdigit() and int(length) <= 65536:
            raw.drain_conn()
        else:
            raw.close()
    except Exception:  # a broken connection is simply not reused
        raw.close()
    raw.release_conn()


def _mirror_error(url: str, reason: object, timeout: float) -> MirrorError:
    """The error apt should see for a failed request: refused 502, timed out 504.

    Each reason reads after the word "Mirror" (apt shows it in the status line: see
    :mod:`debtorrent.apt.app`). urllib3 2 makes NewConnectionError a subclass of
    ConnectTimeoutError, so a refused connection must be recognised before any timeout
    check; a name that does not resolve is a NameResolutionError in urllib3 2 and a
    NewConnectionError caused by ``socket.gaierror`` in Debian's urllib3 1.26.
    """
    if isinstance(reason, (Urllib3SSLError, ssl.SSLError, ssl.CertificateError)):
        short = _tls_reason(reason)
        return MirrorError(url, f"TLS failure: {short}", phrase=f"Bad Gateway (TLS: {short})")
    if NameResolutionError is not None and isinstance(reason, NameResolutionError):
        return MirrorError(url, "host name not found in DNS")
    if isinstance(reason, NewConnectionError):
        cause = _cause(reason)
        if isinstance(cause, socket.gaierror):  # Debian's urllib3 1.26
            return MirrorError(url, "host name not found in DNS")
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(reason).lower():
            return MirrorError(url, "refused connection")
        if isinstance(cause, (socket.timeout, TimeoutError)):
            return MirrorTimeoutError(url, f"timed out after {timeout:g} s")
        detail = getattr(cause, "strerror", None) or "no route"
        return MirrorError(url, f"unreachable: {detail}")
    if isinstance(reason, (ReadTimeoutError, urllib3.exceptions.ConnectTimeoutError)):
        return MirrorTimeoutError(url, f"timed out after {timeout:g} s")
    return MirrorError(url, f"request failed: {reason}")


def _cause(exc: BaseException) -> BaseException | None:
    """The OSError behind a urllib3 connection error (its cause or context chain)."""
    seen = exc.__cause__ or exc.__context__
    for _ in range(5):
        if seen is None or (isinstance(seen, OSError) and not isinstance(seen, Urllib3Error)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_reason(error: object) -> str:
    """A short, printable reason of a TLS failure (for the log and a reason phrase)."""
    inner: object = error
    while isinstance(inner, Urllib3SSLError) and inner.args:
        inner = inner.args[0]
    text = getattr(inner, "verify_message", None) or getattr(inner, "reason", None)
    if not text:
        text = str(inner)
    if "certificate is not valid for" in str(inner) or "match" in str(text).lower():
        text = "certificate does not match the host name"
    elif "CERTIFICATE_VERIFY_FAILED" in str(inner) and "verify failed" not in str(text):
        text = f"certificate verify failed: {text}"
    elif getattr(inner, "verify_message", None):
        text = f"certificate verify failed: {text}"
    clean = "".join(c if c.isprintable() and c.isascii() else " " for c in str(text))
    return " ".join(clean.split())[:120].lower()


def _connect(conn: HTTPConnection, reach: Reach):
    """``conn._new_conn``: resolve, keep the addresses ``reach`` allows, connect to one."""
    host, port = conn._dns_host.strip("[]"), conn.port
    scheme = "https" if isinstance(conn, HTTPSConnection) else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}/"
    try:
        candidates = reach.addresses(host, port, url)
    except gaierror as exc:
        if NameResolutionError is not None:
            raise NameResolutionError(conn.host, conn, exc) from exc
        raise NewConnectionError(conn, f"Failed to resolve {conn.host}: {exc}") from exc
    error: Exception | None = None
    for _family, sockaddr in candidates:
        try:
            return urllib3_connection.create_connection(
                (sockaddr[0], port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            error = ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            )
            error.__cause__ = exc
        except OSError as exc:
            error = NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
            error.__cause__ = exc
    assert error is not None
    raise error


def _guarded_pools(reach: Reach) -> dict[str, type]:
    """Connection pool classes whose connections go only where ``reach`` allows."""

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self):
            return _connect(self, reach)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self):
            return _connect(self, reach)

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}
