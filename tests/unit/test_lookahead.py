"""Reading pipelined apt requests ahead: the head scanner, and the reader on a socket pair."""

from __future__ import annotations

import gevent
from gevent import socket as gsocket

from debtorrent.apt.lookahead import MAX_AHEAD, MAX_BUFFER, LookaheadReader, request_heads


def req(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: proxy\r\n{extra}\r\n".encode()


def test_request_heads_finds_complete_gets_only() -> None:
    data = req("/a") + req("/b") + b"GET /c HTTP/1.1\r\nHost: pro"
    heads = request_heads(data, 0)
    assert [(m, t, body) for _end, m, t, body in heads] == [
        ("GET", "/a", False),
        ("GET", "/b", False),
    ]
    assert heads[-1][0] == len(req("/a") + req("/b"))
    assert request_heads(data, heads[0][0])[0][2] == "/b"


def test_a_body_or_a_strange_line_stops_the_scan() -> None:
    with_body = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + req("/after")
    assert [(t, body) for _e, _m, t, body in request_heads(with_body, 0)] == [("/x", True)]
    chunked = b"PUT /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + req("/after")
    assert request_heads(chunked, 0)[0][3] is True
    zero = b"GET /z HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + req("/next")
    assert [t for _e, _m, t, _b in request_heads(zero, 0)] == ["/z", "/next"]
    garbage = b"\x00\x01 nonsense\r\n\r\n" + req("/never")
    assert request_heads(garbage, 0) == [(len(b"\x00\x01 nonsense\r\n\r\n"), "", "", True)]


def _pair() -> tuple[gsocket.socket, gsocket.socket]:
    return gsocket.socketpair()


def test_reader_reports_pipelined_requests_once_and_only_while_answering() -> None:
    ours, theirs = _pair()
    seen: list[str] = []
    reader = LookaheadReader(ours, seen.append)
    try:
        theirs.sendall(req("/1") + req("/2") + req("/3"))
        assert reader.readline(8192) == b"GET /1 HTTP/1.1\r\n"
        gevent.sleep(0.01)
        assert seen == []  # the handler is still reading: nothing is "ahead" yet
        while reader.readline(8192) not in (b"\r\n", b""):
            pass
        reader.answering()
        assert seen == ["/2", "/3"]
        theirs.sendall(req("/4"))
        gevent.sleep(0.05)
        assert seen == ["/2", "/3", "/4"]  # arrived while /1 is answered
        reader.idle()
        assert reader.readline(8192) == b"GET /2 HTTP/1.1\r\n"  # the bytes are all there
        theirs.sendall(req("/5"))
        gevent.sleep(0.05)
        assert seen == ["/2", "/3", "/4"]  # idle: the handler reads it itself
    finally:
        reader.close()
        ours.close()
        theirs.close()


def test_reader_bounds_what_it_reports_and_holds() -> None:
    ours, theirs = _pair()
    seen: list[str] = []
    reader = LookaheadReader(ours, seen.append)
    try:
        flood = b"".join(req(f"/{i}") for i in range(2000))
        sender = gevent.spawn(theirs.sendall, flood)
        gevent.sleep(0.1)
        assert len(reader._buf) <= MAX_BUFFER + 16384  # stops reading when full
        while reader.readline(8192) not in (b"\r\n", b""):
            pass
        reader.answering()
        assert seen == [f"/{i}" for i in range(1, MAX_AHEAD + 1)]
        reader.idle()
        total = len(flood) - len(req("/0"))
        got = b""
        while len(got) < total:
            got += reader.read1()
        assert got == flood[len(req("/0")) :]  # every byte reaches the handler, in order
        sender.join(5)
    finally:
        reader.close()
        ours.close()
        theirs.close()


def test_reader_reads_exact_lengths_and_ends_at_eof() -> None:
    ours, theirs = _pair()
    reader = LookaheadReader(ours, lambda target: None)
    try:
        theirs.sendall(b"hello world")
        theirs.close()
        assert reader.read(5) == b"hello"
        assert reader.readline() == b" world"  # no newline before EOF
        assert reader.read(10) == b""
    finally:
        reader.close()
        ours.close()
