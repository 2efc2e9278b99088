"""Reading apt's pipelined requests ahead of the one being answered.

apt sends up to ten requests on one connection before it reads the first answer.
pywsgi reads a request only once the previous answer is written, so each cold file's
download would start only when the file before it had been served: a chain of mirror
round trips. :class:`LookaheadReader` is the handler's ``rfile`` instead of a plain
socket file: one greenlet reads the socket into a bounded buffer, and while a request
is being answered, every complete ``GET`` request head found after it in the buffer is
reported once to ``on_ahead(target)``, so its download can start at once. Answers still
go out in order: pywsgi reads the requests from this buffer one by one, as before.

Bounds: at most :data:`MAX_BUFFER` unread bytes are held (reading stops until the
handler catches up), at most :data:`MAX_AHEAD` requests are reported beyond the one
being answered, and a request with a body stops the look-ahead until the handler has
read past it (the next request's start cannot be known without parsing the body).
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event

__all__ = ["MAX_AHEAD", "MAX_BUFFER", "LookaheadReader", "request_heads"]

log = logging.getLogger(__name__)

MAX_BUFFER = 65536  # unread request bytes held per connection
MAX_AHEAD = 10  # requests reported beyond the one being answered (apt pipelines 10)
RECV_SIZE = 16384


def request_heads(data: bytes | bytearray, start: int) -> list[tuple[int, str, str, bool]]:
    """Complete request heads in ``data`` from ``start``: ``(end, method, target, body)``.

    ``end`` is the offset just past the head's blank line; ``body`` says the request
    carries a body (Content-Length other than 0, or Transfer-Encoding), after which
    nothing more can be located. Pure: no I/O.
    """
    heads = []
    position = start
    while True:
        end = data.find(b"\r\n\r\n", position)
        if end < 0:
            return heads
        head = bytes(data[position:end]).decode("latin-1")
        end += 4
        line, _, fields = head.partition("\r\n")
        words = line.split()
        if len(words) != 3:  # not a request we would answer: let pywsgi say so
            heads.append((end, "", "", True))
            return heads
        body = False
        for field in fields.split("\r\n"):
            name, _, value = field.partition(":")
            name = name.strip().lower()
            if name == "transfer-encoding" or (
                name == "content-length" and value.strip() not in ("", "0")
            ):
                body = True
        heads.append((end, words[0], words[1], body))
        if body:
            return heads
        position = end


class LookaheadReader:
    """A file-like ``rfile`` over a socket that reports pipelined requests early.

    The handler calls :meth:`answering` once it has read a request's head and
    :meth:`idle` before it reads the next: heads are reported only in between.
    """

    def __init__(self, sock: socket.socket, on_ahead: Callable[[str], None]) -> None:
        self._sock = sock
        self._on_ahead = on_ahead
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self.closed = False
        self._answering = False
        self._scanned = 0  # stream offset up to which heads were looked at
        self._reported: deque[int] = deque()  # stream offsets where reported heads end
        self._arrived = Event()
        self._room = Event()
        self._room.set()
        self._hungry = False
        self._greenlet = gevent.spawn(self._fill)

    # --- the reading greenlet -----------------------------------------------------

    def _fill(self) -> None:
        try:
            while not self.closed:
                while len(self._buf) >= MAX_BUFFER and not self._hungry:
                    self._room.clear()
                    self._room.wait()
                try:
                    data = self._sock.recv(RECV_SIZE)
                except TimeoutError:
                    continue  # idleness is the handler's to judge (its own deadlines)
                if not data:
                    break
                self._buf += data
                self._wake()
                self._look_ahead()
        except OSError:
            pass
        finally:
            self._eof = True
            self._wake()

    def _wake(self) -> None:
        arrived, self._arrived = self._arrived, Event()
        arrived.set()

    # --- look-ahead -------------------------------------------------------------------

    def answering(self) -> None:
        """The handler has read a request's head and answers it now."""
        self._answering = True
        self._scanned = max(self._scanned, self._base)
        self._look_ahead()

    def idle(self) -> None:
        """The handler is about to read the next request itself."""
        self._answering = False

    def _look_ahead(self) -> None:
        if not self._answering or self.closed:
            return
        while self._reported and self._reported[0] <= self._base:
            self._reported.popleft()  # the handler has read these
        if len(self._reported) >= MAX_AHEAD:
            return
        start = self._scanned - self._base
        for end, method, target, body in request_heads(self._buf, start):
            self._scanned = self._base + end
            if body or not method:
                return  # where the next request starts is the handler's to find
            if method != "GET":
                continue
            self._reported.append(self._base + end)
            try:
                self._on_ahead(target)
            except Exception:  # a bug in the hook must not break the connection
                log.exception("look-ahead for %r failed", target[:200])
            if len(self._reported) >= MAX_AHEAD:
                return

    # --- the file interface pywsgi uses ---------------------------------------------

    def _consume(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        self._base += size
        self._room.set()
        return data

    def _wait(self) -> None:
        """Block until more bytes arrive or the stream ends."""
        self._hungry = True
        self._room.set()
        try:
            self._arrived.wait()
        finally:
            self._hungry = False

    def readline(self, limit: int | None = -1) -> bytes:
        limit = -1 if limit is None else limit
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0 and (limit < 0 or newline < limit):
                return self._consume(newline + 1)
            if 0 <= limit <= len(self._buf):
                return self._consume(limit)
            if self._eof or self.closed:
                return self._consume(len(self._buf))
            self._wait()

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        while not (self._eof or self.closed) and (size < 0 or len(self._buf) < size):
            self._wait()
        return self._consume(len(self._buf) if size < 0 else min(size, len(self._buf)))

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer)) if len(self._buf) >= len(buffer) else self.read1()
        buffer[: len(data)] = data
        return len(data)

    def read1(self, size: int = -1) -> bytes:
        while not self._buf and not (self._eof or self.closed):
            self._wait()
        return self._consume(len(self._buf) if size < 0 else min(size, len(self._buf)))

    def close(self) -> None:
        """Stop reading: the reading greenlet is gone when this returns, so the socket
        can be closed without a watcher left on it."""
        if self.closed:
            return
        self.closed = True
        if self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=True)
        self._wake()
