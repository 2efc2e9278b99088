"""The access log (``--access-log FILE``): one line per apt request, as an admin greps it.

::

    2026-11-30T12:34:56+0000 127.0.0.1 "GET /deb.example.org/debian/pool/main/h/hello/\
    hello_2.12-1_amd64.deb HTTP/1.1" 200 53576 cache 3

(one line; cut here to fit the page).

Fields, separated by single spaces: local time with its UTC offset; the client
address; the request line in double quotes (control characters, backslashes and
quotes escaped as ``\\xNN``, cut at 2,000 characters); the status; the body bytes
actually sent (chunk framing included for the rare stream whose length the mirror did
not say); where the answer came from (``cache``, ``offline`` for the saved copy
served while the mirror fails, ``peer`` for a package that came through its swarm,
``mirror`` when the mirror sent it or joined the swarm download, ``-`` for no file:
errors, refusals, status paths); and the milliseconds from the request line to the
last byte. A client refused before it sent anything (``--allowed-clients``) is logged
with ``"-"`` as its request line.

The line is written when the answer is complete, by the request handler (it alone
knows the bytes that reached the socket, including those sent with ``os.sendfile``),
so the log needs nothing from the proxy but the source it records in the WSGI
environment. The file is opened in append mode and reopened on SIGHUP (logrotate).
"""

from __future__ import annotations

import logging
import time
from typing import IO, Any

from debtorrent.apt.app import answer_source

__all__ = ["AccessLog", "with_access_log"]

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 2000


def _escape(text: str) -> str:
    return "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\x{ord(c):02x}" for c in text)[
        :MAX_REQUEST_LINE
    ]


class AccessLog:
    """The open access log file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] = self._open()

    def _open(self) -> IO[str]:
        return open(self.path, "a", encoding="ascii", buffering=1)

    def reopen(self) -> None:
        """After logrotate moved the file away (SIGHUP)."""
        try:
            fresh = self._open()
        except OSError as exc:
            log.warning("cannot reopen the access log %s: %s", self.path, exc)
            return
        self._file.close()
        self._file = fresh

    def close(self) -> None:
        self._file.close()

    def write(
        self, client: str, request: str, status: int, sent: int, source: str, ms: int
    ) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        who, what = _escape(client) or "-", _escape(request) or "-"
        line = f'{stamp} {who} "{what}" {status} {sent} {source} {ms}\n'
        try:
            self._file.write(line)
        except (OSError, ValueError) as exc:  # a full disk must not fail the answer
            log.warning("cannot write the access log %s: %s", self.path, exc)

    def refused(self, client: str) -> None:
        """A connection refused before it sent a request (``--allowed-clients``)."""
        self.write(client, "", 403, 0, "-", 0)

    def record(self, handler: Any) -> None:
        """Write the line of the request ``handler`` (a gevent.pywsgi handler) just
        answered."""
        address = handler.client_address
        client = address[0] if isinstance(address, tuple) else str(address or "")
        status = getattr(handler, "_orig_status", None) or handler.status or "000"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        try:
            code = int(str(status).split()[0])
        except (ValueError, IndexError):
            code = 0
        start, finish = handler.time_start, handler.time_finish
        ms = round((finish - start) * 1000) if start and finish else 0
        environ = getattr(handler, "environ", None) or {}
        sent = max(0, (handler.response_length or 0) - _head_length(handler))
        self.write(client, handler.requestline or "", code, sent, answer_source(environ), ms)


def _head_length(handler: Any) -> int:
    """Bytes of the status line and headers pywsgi sent (it counts them in
    ``response_length`` with the body)."""
    if not getattr(handler, "headers_sent", False):
        return 0
    status = handler.status or b""
    if isinstance(status, str):
        status = status.encode("latin-1")
    fields = getattr(handler, "response_headers", None) or ()
    return len(b"HTTP/1.1 ") + len(status) + 2 + sum(len(k) + len(v) + 4 for k, v in fields) + 2


def with_access_log(handler_class: type, access_log: AccessLog) -> type:
    """``handler_class`` whose every answered request also goes to ``access_log``."""

    class AccessLoggingHandler(handler_class):  # type: ignore[misc, valid-type]
        def log_request(self) -> None:
            super().log_request()
            access_log.record(self)

    AccessLoggingHandler.__name__ = f"AccessLogging{handler_class.__name__}"
    return AccessLoggingHandler
