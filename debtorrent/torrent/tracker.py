"""Tracker client: BEP 3/23 HTTP(S) and BEP 15 UDP announces, BEP 12 tiers.

The module has two halves:

- pure functions (no sockets, no gevent calls) that build announce requests and parse
  tracker replies. Every parser either returns a result or raises
  :class:`~debtorrent.errors.TrackerError`, whatever bytes a tracker sends, so a broken
  or hostile tracker can never crash a swarm. They are fuzzed in the unit tests.
- :class:`Announcer`, one greenlet per swarm that announces ``started``, re-announces on
  the tracker's interval, sends ``completed`` and ``stopped`` when told, walks the tiers
  as BEP 12 says and backs off when every tracker fails.

Choices worth knowing:

- UDP uses ``gevent.socket`` explicitly, so it cooperates even in a process that is not
  monkey-patched. HTTP goes through urllib3, which only cooperates once the daemon's
  entry point has called ``gevent.monkey.patch_all()`` (it always does).
- The interval a tracker asks for is clamped (default 60..3600 s) so a tracker cannot make
  us hammer it nor forget the swarm for hours; ``min interval`` raises the interval but
  the upper bound wins.
- A tracker that lists the announcing peer itself (opentracker does) would hand us our
  own address: when the bind address is known, that address is dropped from the list.
- Debian's opentracker is whitelist-only. Over UDP it answers an unknown info hash with a
  bare 8-byte header (action and transaction id, no body); that is read as a refusal.
- ``stopped`` goes only to trackers that accepted an announce from us, within a bounded
  wait: at shutdown an unreachable tracker must not hold the daemon up.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import random
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import gevent
import gevent.event
import gevent.socket
import urllib3

from debtorrent.errors import BencodeError, TrackerError
from debtorrent.torrent import bencode

__all__ = [
    "UDP_PROTOCOL_ID",
    "AnnounceParams",
    "AnnounceReply",
    "Announcer",
    "Event",
    "Peer",
    "Tiers",
    "build_http_announce_url",
    "build_udp_announce",
    "build_udp_connect",
    "clamp_interval",
    "parse_http_reply",
    "parse_udp_announce",
    "parse_udp_connect",
    "retry_delay",
    "udp_transaction_id",
]

log = logging.getLogger(__name__)

Peer = tuple[str, int]
"""A peer address as ``(ip, port)``; ``ip`` is a textual IPv4 or IPv6 address."""

UDP_PROTOCOL_ID = 0x41727101980
"""The magic constant a BEP 15 connect request starts with."""

_UDP_CONNECT, _UDP_ANNOUNCE, _UDP_ERROR = 0, 1, 3
_UDP_CONNECTION_TTL = 60.0  # BEP 15: a client may use a connection id for one minute
_MAX_HTTP_REPLY = 1 << 20  # far above any sane reply; a bigger one is refused, not read
_MAX_MESSAGE = 200  # characters of a tracker's failure text kept for the log
_DEFAULT_INTERVAL = 1800  # when a tracker omits it (BEP 3 makes it mandatory)


class Event(enum.IntEnum):
    """The announce event. Values are the BEP 15 codes; HTTP sends the lower-case name."""

    NONE = 0
    COMPLETED = 1
    STARTED = 2
    STOPPED = 3

    @property
    def http_name(self) -> str | None:
        """The ``event=`` value of an HTTP announce, or None when nothing is sent."""
        return None if self is Event.NONE else self.name.lower()


@dataclass(frozen=True, slots=True)
class AnnounceParams:
    """What one announce tells the tracker; shared by the HTTP and UDP builders.

    ``numwant`` None lets the tracker pick (UDP sends -1); ``key`` is a random 32-bit
    number that lets the tracker recognise us across address changes.
    """

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int = 0
    downloaded: int = 0
    left: int = 0
    event: Event = Event.NONE
    numwant: int | None = 50
    key: int | None = None

    def __post_init__(self) -> None:
        """Reject caller bugs here, so a builder never sends a malformed request."""
        if len(self.info_hash) != 20 or len(self.peer_id) != 20:
            raise ValueError("info_hash and peer_id must be 20 bytes")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of range: {self.port}")
        for name in ("uploaded", "downloaded", "left"):
            if not 0 <= getattr(self, name) < 1 << 63:
                raise ValueError(f"{name} out of range: {getattr(self, name)}")
        if self.numwant is not None and not 0 <= self.numwant < 1 << 31:
            raise ValueError(f"numwant out of range: {self.numwant}")
        if self.key is not None and not 0 <= self.key < 1 << 32:
            raise ValueError(f"key out of range: {self.key}")


@dataclass(frozen=True, slots=True)
class AnnounceReply:
    """A successful announce, from either transport.

    ``interval`` and ``min_interval`` are as the tracker sent them (None when absent);
    :func:`clamp_interval` turns them into a delay. ``complete``/``incomplete`` are the
    seeder and leecher counts when the tracker gave them.
    """

    interval: int | None
    min_interval: int | None = None
    peers: tuple[Peer, ...] = ()
    complete: int | None = None
    incomplete: int | None = None
    warning: str | None = None


# --- request builders ------------------------------------------------------------------


def build_http_announce_url(base: str, params: AnnounceParams) -> str:
    """The GET URL of an HTTP announce (BEP 3, compact=1 as BEP 23 asks).

    ``info_hash`` and ``peer_id`` are raw bytes, so they are percent-encoded byte by byte
    (never as text). A query already in ``base`` (a passkey) is kept.
    """
    query = [
        ("info_hash", urllib.parse.quote_from_bytes(params.info_hash, safe="")),
        ("peer_id", urllib.parse.quote_from_bytes(params.peer_id, safe="")),
        ("port", str(params.port)),
        ("uploaded", str(params.uploaded)),
        ("downloaded", str(params.downloaded)),
        ("left", str(params.left)),
        ("compact", "1"),
    ]
    if params.event.http_name is not None:
        query.append(("event", params.event.http_name))
    if params.numwant is not None:
        query.append(("numwant", str(params.numwant)))
    if params.key is not None:
        query.append(("key", f"{params.key:08x}"))
    base = base.partition("#")[0]
    sep = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        sep = ""
    return base + sep + "&".join(f"{k}={v}" for k, v in query)


def build_udp_connect(transaction_id: int) -> bytes:
    """The 16-byte BEP 15 connect request."""
    return struct.pack(">QII", UDP_PROTOCOL_ID, _UDP_CONNECT, transaction_id)


def build_udp_announce(connection_id: int, transaction_id: int, params: AnnounceParams) -> bytes:
    """The 98-byte BEP 15 announce request (IP field 0: the tracker uses the sender's)."""
    numwant = -1 if params.numwant is None else params.numwant
    return struct.pack(
        ">QII20s20sQQQIIIiH",
        connection_id,
        _UDP_ANNOUNCE,
        transaction_id,
        params.info_hash,
        params.peer_id,
        params.downloaded,
        params.left,
        params.uploaded,
        int(params.event),
        0,
        params.key or 0,
        numwant,
        params.port,
    )


# --- reply parsers ---------------------------------------------------------------------


def _text(value: object) -> str:
    """A tracker-supplied message as printable, bounded text for logs and errors."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text[:_MAX_MESSAGE]


def _compact_peers(blob: bytes, ipv6: bool) -> list[Peer]:
    """Peers packed as address + 2-byte port (6 bytes IPv4, 18 bytes IPv6).

    A blob that is not a whole number of entries is a broken reply. Port 0 is skipped.
    """
    size = 18 if ipv6 else 6
    if len(blob) % size:
        raise TrackerError(f"compact peer list of {len(blob)} bytes is not a multiple of {size}")
    peers = []
    for off in range(0, len(blob), size):
        raw = blob[off : off + size - 2]
        (port,) = struct.unpack_from(">H", blob, off + size - 2)
        if port:
            ip = ipaddress.IPv6Address(raw) if ipv6 else ipaddress.IPv4Address(raw)
            peers.append((str(ip), port))
    return peers


def _dict_peers(items: list[object]) -> list[Peer]:
    """The BEP 3 list of ``{ip, port}`` dicts. Entries we cannot dial are skipped.

    Host names are allowed by BEP 3 but not resolved here: no tracker in use sends them,
    and one bad entry must not throw away the rest of the list.
    """
    peers = []
    for item in items:
        if not isinstance(item, dict):
            raise TrackerError("peer list entry is not a dictionary")
        ip, port = item.get(b"ip"), item.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
            continue
        try:
            address = ipaddress.ip_address(ip.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            continue
        peers.append((str(address), port))
    return peers


def _optional_int(reply: dict[bytes, object], key: bytes) -> int | None:
    """A non-negative integer field, None when absent; any other type is an error."""
    value = reply.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TrackerError(f"{key.decode()!r} is not a non-negative integer")
    return value


def parse_http_reply(body: bytes) -> AnnounceReply:
    """Parse a bencoded HTTP announce reply.

    ``failure reason`` becomes a TrackerError carrying the tracker's text; so does
    anything that is not a dictionary of the expected types. ``peers`` may be compact
    (BEP 23) or a list of dicts (BEP 3); ``peers6`` is compact IPv6 (BEP 7).
    """
    try:
        reply = bencode.decode(body, strict=False)  # some trackers do not sort keys
    except BencodeError as exc:
        raise TrackerError(f"reply is not bencoded: {exc}") from None
    if not isinstance(reply, dict):
        raise TrackerError("reply is not a dictionary")
    if b"failure reason" in reply:
        raise TrackerError(f"tracker says: {_text(reply[b'failure reason'])}")
    warning = reply.get(b"warning message")
    peers: list[Peer] = []
    raw = reply.get(b"peers", b"")
    if isinstance(raw, bytes):
        peers += _compact_peers(raw, ipv6=False)
    elif isinstance(raw, list):
        peers += _dict_peers(raw)
    else:
        raise TrackerError("'peers' is neither a string nor a list")
    raw6 = reply.get(b"peers6", b"")
    if not isinstance(raw6, bytes):
        raise TrackerError("'peers6' is not a string")
    peers += _compact_peers(raw6, ipv6=True)
    return AnnounceReply(
        interval=_optional_int(reply, b"interval"),
        min_interval=_optional_int(reply, b"min interval"),
        peers=tuple(dict.fromkeys(peers)),
        complete=_optional_int(reply, b"complete"),
        incomplete=_optional_int(reply, b"incomplete"),
        warning=None if warning is None else _text(warning),
    )


def _udp_header(data: bytes, transaction_id: int, action: int) -> None:
    """Check the 8-byte header every BEP 15 reply starts with; raise on an error reply."""
    if len(data) < 8:
        raise TrackerError(f"UDP reply of {len(data)} bytes is too short")
    got_action, got_tid = struct.unpack_from(">II", data)
    if got_tid != transaction_id:
        raise TrackerError(f"UDP reply for transaction {got_tid:#x}, not {transaction_id:#x}")
    if got_action == _UDP_ERROR:
        message = data[8:].rstrip(b"\0")  # opentracker NUL-terminates it
        raise TrackerError(f"tracker says: {_text(message)}")
    if got_action != action:
        raise TrackerError(f"UDP reply has action {got_action}, expected {action}")


def udp_transaction_id(data: bytes) -> int | None:
    """The transaction id of a UDP reply, to skip stale replies to earlier retransmits."""
    return struct.unpack_from(">I", data, 4)[0] if len(data) >= 8 else None


def parse_udp_connect(data: bytes, transaction_id: int) -> int:
    """Parse a BEP 15 connect reply; return the connection id."""
    _udp_header(data, transaction_id, _UDP_CONNECT)
    if len(data) < 16:
        raise TrackerError(f"UDP connect reply of {len(data)} bytes is too short")
    return struct.unpack_from(">Q", data, 8)[0]


def parse_udp_announce(data: bytes, transaction_id: int, *, ipv6: bool = False) -> AnnounceReply:
    """Parse a BEP 15 announce reply; ``ipv6`` when it came over IPv6 (18-byte peers).

    A reply that stops right after the header is how Debian's whitelist-only opentracker
    refuses an info hash it does not know: a TrackerError, like any error reply.
    """
    _udp_header(data, transaction_id, _UDP_ANNOUNCE)
    if len(data) == 8:
        raise TrackerError("tracker refused the announce (info hash not authorized?)")
    if len(data) < 20:
        raise TrackerError(f"UDP announce reply of {len(data)} bytes is too short")
    interval, leechers, seeders = struct.unpack_from(">III", data, 8)
    peers = _compact_peers(data[20:], ipv6=ipv6)
    return AnnounceReply(
        interval=interval,
        peers=tuple(dict.fromkeys(peers)),
        complete=seeders,
        incomplete=leechers,
    )


# --- scheduling policy -----------------------------------------------------------------


def clamp_interval(
    reply: AnnounceReply, low: float = 60.0, high: float = 3600.0, default: float = 1800.0
) -> float:
    """Seconds until the next regular announce.

    The tracker's ``interval`` (``default`` when absent), raised to its ``min interval``,
    then held within ``low..high``: ``low`` protects the tracker from a zero interval,
    ``high`` keeps the swarm from losing us when a tracker asks for hours.
    """
    value = float(default if reply.interval is None else reply.interval)
    if reply.min_interval is not None:
        value = max(value, reply.min_interval)
    return min(max(value, low), high)


def retry_delay(failures: int, base: float = 15.0, cap: float = 1800.0) -> float:
    """Seconds to wait after ``failures`` consecutive failed announces (1, 2, ...).

    Doubles from ``base`` up to ``cap`` so that a dead tracker costs little and a
    recovered one is found again within ``cap``.
    """
    return min(cap, base * 2 ** min(max(failures - 1, 0), 32))


class Tiers:
    """The BEP 12 announce list: tiers tried in order, trackers in order within a tier.

    Each tier is shuffled once, here; a tracker that answers moves to the front of its
    tier so it is asked first next time. Iterating yields the order to try; the caller
    stops at the first success, which means the next tier is only reached when every
    tracker of the tiers before it failed.
    """

    def __init__(self, tiers: Sequence[Sequence[str]], rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self._tiers: list[list[str]] = []
        for tier in tiers:
            urls = list(dict.fromkeys(u for u in tier if u))
            if urls:
                rng.shuffle(urls)
                self._tiers.append(urls)
        if not self._tiers:
            raise TrackerError("no tracker URLs")

    def __iter__(self) -> Iterator[str]:
        """Every tracker, in the order to try them; a snapshot, so promote() is safe."""
        return iter([url for tier in self._tiers for url in tier])

    def promote(self, url: str) -> None:
        """Move a tracker that just answered to the front of its tier."""
        for tier in self._tiers:
            if url in tier:
                tier.remove(url)
                tier.insert(0, url)
                return

    def as_lists(self) -> list[list[str]]:
        """A copy of the current order, for status pages and tests."""
        return [list(tier) for tier in self._tiers]


# --- the announcer -----------------------------------------------------------------------


@dataclass
class _UdpConnection:
    """A cached BEP 15 connection id and when it stops being usable."""

    connection_id: int
    expires: float


class Announcer:
    """Announces one swarm to its trackers from one greenlet.

    ``stats_callback()`` returns ``(uploaded, downloaded, left)`` at each announce;
    ``on_peers(peers)`` receives each successful reply's peers (our own address removed
    when ``source_address`` is known), from the announcer's greenlet. ``source_address``
    binds outgoing HTTP and UDP, so daemons on 127.0.0.2, .3... look like distinct hosts
    to the tracker. A ``pool`` is used as given (its own source address applies); without
    one the announcer makes its own.

    ``interval_bounds`` clamps the tracker's interval, ``retry_bounds`` is the
    ``(base, cap)`` of the backoff after a round in which every tracker failed,
    ``udp_timeout`` the BEP 15 base timeout (15 * 2^n) and ``udp_attempts`` how many
    sends one UDP announce is allowed. Tests shrink all of them.
    """

    def __init__(
        self,
        info_hash: bytes,
        peer_id: bytes,
        port: int,
        tiers: Sequence[Sequence[str]],
        stats_callback: Callable[[], tuple[int, int, int]],
        on_peers: Callable[[list[Peer]], None],
        source_address: str | None = None,
        http_timeout: float = 30.0,
        pool: urllib3.PoolManager | None = None,
        *,
        numwant: int = 50,
        interval_bounds: tuple[float, float] = (60.0, 3600.0),
        retry_bounds: tuple[float, float] = (15.0, 1800.0),
        udp_timeout: float = 15.0,
        udp_attempts: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.port = port
        self.tiers = Tiers(tiers, rng)
        self._stats = stats_callback
        self._on_peers = on_peers
        self.source_address = source_address
        self.http_timeout = http_timeout
        self._own_pool = pool is None
        if pool is None:
            kw = {"source_address": (source_address, 0)} if source_address else {}
            pool = urllib3.PoolManager(num_pools=4, maxsize=1, **kw)
        self._pool = pool
        self._numwant = numwant
        self._key = rng.getrandbits(32)
        self._interval_bounds = interval_bounds
        self._retry_bounds = retry_bounds
        self._udp_timeout = udp_timeout
        self._udp_attempts = udp_attempts
        self._rng = rng
        self._udp: dict[str, _UdpConnection] = {}
        self._event = Event.STARTED
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._registered: list[str] = []  # trackers that hold us, for 'stopped'
        self.stopped_sent: list[str] = []  # trackers that acknowledged 'stopped'
        self.failures = 0
        self.last_reply: AnnounceReply | None = None
        self.last_error: str | None = None
        self.current_tracker: str | None = None
        self.announces = 0

    # -- control, called from other greenlets --

    def start(self) -> None:
        """Start the greenlet; its first announce says ``started``."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def completed(self) -> None:
        """Tell the trackers now that the download is complete (sent once)."""
        self._event = Event.COMPLETED
        self._wake.set()

    def announce_now(self) -> None:
        """Announce at once instead of waiting for the interval (e.g. short of peers)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the greenlet and send ``stopped``, waiting at most ``timeout`` seconds.

        The loop is killed first, so an announce in flight to a slow tracker is abandoned
        rather than waited for.
        """
        deadline = time.monotonic() + timeout
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)
            self._greenlet = None
        registered, self._registered = self._registered, []
        if registered:
            self._send_stopped(registered, max(deadline - time.monotonic(), 0.001))
        if self._own_pool:
            self._pool.clear()  # close its keep-alive connections

    def _send_stopped(self, urls: list[str], timeout: float) -> None:
        """Send ``stopped`` to each tracker that holds us, all within ``timeout``."""
        params = self._params(Event.STOPPED)
        url = urls[0]
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            for url in urls:
                try:
                    self._announce_to(url, params)
                    self.stopped_sent.append(url)
                except TrackerError as exc:
                    log.warning("tracker %s: stopped: %s", url, exc)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            log.warning("tracker %s: stopped: no answer within %.1f s", url, timeout)
        finally:
            timer.close()

    @property
    def running(self) -> bool:
        """Whether the announce greenlet is alive."""
        return self._greenlet is not None and not self._greenlet.dead

    # -- the loop --

    def _run(self) -> None:
        """Announce, then sleep until the interval, a backoff, or a wake-up."""
        while True:
            self._wake.clear()
            try:
                reply = self._announce_round()
            except Exception:  # a bug in a callback must not end the announces
                log.exception("announce round failed")
                reply = None
            if reply is not None:
                self.failures = 0
                delay = clamp_interval(reply, *self._interval_bounds)
            else:
                self.failures += 1
                delay = retry_delay(self.failures, *self._retry_bounds)
            self._wake.wait(delay)

    def _announce_round(self) -> AnnounceReply | None:
        """One announce: each tracker in BEP 12 order until one answers."""
        event = self._event
        params = self._params(event)
        for url in self.tiers:
            try:
                reply = self._announce_to(url, params)
            except TrackerError as exc:
                self.last_error = f"{url}: {exc}"
                log.warning("tracker %s: %s", url, exc)
                continue
            self.tiers.promote(url)
            self._accepted(url, event, reply)
            return reply
        return None

    def _accepted(self, url: str, event: Event, reply: AnnounceReply) -> None:
        """Book-keeping after a successful announce, then hand the peers over."""
        if self._event is event:  # a completed() that arrived meanwhile stays pending
            self._event = Event.NONE
        if url not in self._registered:
            self._registered.append(url)
        self.current_tracker = url
        self.last_reply = reply
        self.last_error = None
        self.announces += 1
        if reply.warning:
            log.warning("tracker %s: warning: %s", url, reply.warning)
        me = (self.source_address, self.port)
        peers = [p for p in reply.peers if p != me]
        try:
            self._on_peers(peers)
        except Exception:
            log.exception("on_peers callback failed for tracker %s", url)

    def _params(self, event: Event) -> AnnounceParams:
        """The announce parameters, with fresh statistics."""
        uploaded, downloaded, left = self._stats()
        return AnnounceParams(
            info_hash=self.info_hash,
            peer_id=self.peer_id,
            port=self.port,
            uploaded=uploaded,
            downloaded=downloaded,
            left=left,
            event=event,
            numwant=0 if event is Event.STOPPED else self._numwant,
            key=self._key,
        )

    def _announce_to(self, url: str, params: AnnounceParams) -> AnnounceReply:
        """Announce to one tracker by its scheme; every failure is a TrackerError."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._announce_http(url, params)
        if scheme == "udp":
            return self._announce_udp(url, params)
        raise TrackerError(f"unsupported tracker scheme {scheme!r}")

    # -- HTTP --

    def _announce_http(self, url: str, params: AnnounceParams) -> AnnounceReply:
        """GET the announce URL through urllib3; a non-200 status is a failure."""
        try:
            resp = self._pool.request(
                "GET",
                build_http_announce_url(url, params),
                timeout=urllib3.Timeout(total=self.http_timeout),
                retries=urllib3.Retry(total=3, connect=0, read=0, status=0, other=0, redirect=3),
                preload_content=False,
            )
            try:
                body = resp.read(_MAX_HTTP_REPLY + 1)
            finally:
                resp.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TrackerError(_describe_http_error(exc)) from None
        if len(body) > _MAX_HTTP_REPLY:
            raise TrackerError("reply too large")
        if resp.status != 200:
            try:
                parse_http_reply(body)  # a failure reason in a 4xx body says more
            except TrackerError as exc:
                raise TrackerError(f"HTTP {resp.status}: {exc}") from None
            raise TrackerError(f"HTTP {resp.status}")
        return parse_http_reply(body)

    # -- UDP --

    def _announce_udp(self, url: str, params: AnnounceParams) -> AnnounceReply:
        """BEP 15: connect (or reuse a cached id), then announce, retransmitting on loss.

        The n-th send waits ``udp_timeout * 2**n``; the count is shared by connect and
        announce requests within one announce, as the BEP describes.
        """
        host, port = _udp_endpoint(url)
        sock = self._udp_socket(host, port)
        try:
            ipv6 = sock.family == gevent.socket.AF_INET6
            for attempt in range(self._udp_attempts):
                wait = self._udp_timeout * 2**attempt
                conn = self._udp.get(url)
                if conn is None or conn.expires <= time.monotonic():
                    tid = self._rng.getrandbits(32)
                    started = time.monotonic()
                    data = _udp_exchange(sock, build_udp_connect(tid), tid, wait)
                    if data is None:
                        continue
                    conn = _UdpConnection(
                        parse_udp_connect(data, tid), started + _UDP_CONNECTION_TTL
                    )
                    self._udp[url] = conn
                tid = self._rng.getrandbits(32)
                data = _udp_exchange(
                    sock, build_udp_announce(conn.connection_id, tid, params), tid, wait
                )
                if data is None:
                    self._udp.pop(url, None)  # maybe the id went stale: reconnect
                    continue
                try:
                    return parse_udp_announce(data, tid, ipv6=ipv6)
                except TrackerError:
                    self._udp.pop(url, None)
                    raise
            raise TrackerError(f"no UDP reply after {self._udp_attempts} attempts")
        finally:
            sock.close()

    def _udp_socket(self, host: str, port: int) -> gevent.socket.socket:
        """A UDP socket bound to the source address and connected to the tracker.

        Connecting filters out datagrams from anyone else and turns an ICMP port
        unreachable into an error, so a dead tracker on loopback fails fast.
        """
        family = gevent.socket.AF_UNSPEC
        if self.source_address:
            v6 = ipaddress.ip_address(self.source_address).version == 6
            family = gevent.socket.AF_INET6 if v6 else gevent.socket.AF_INET
        try:
            infos = gevent.socket.getaddrinfo(host, port, family, gevent.socket.SOCK_DGRAM)
        except OSError as exc:
            raise TrackerError(f"cannot resolve {host}: {exc}") from None
        if not infos:
            raise TrackerError(f"cannot resolve {host}")
        fam, kind, proto, _, addr = infos[0]
        sock = gevent.socket.socket(fam, kind, proto)
        try:
            if self.source_address:
                sock.bind((self.source_address, 0))
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            raise TrackerError(f"cannot reach {host}:{port}: {exc}") from None
        return sock


def _udp_exchange(
    sock: gevent.socket.socket, request: bytes, transaction_id: int, timeout: float
) -> bytes | None:
    """Send one request and wait for the reply with its transaction id; None on timeout.

    Replies to earlier (retransmitted) requests carry other ids and are skipped.
    """
    deadline = time.monotonic() + timeout
    try:
        sock.send(request)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                return None
            if udp_transaction_id(data) == transaction_id:
                return data
    except OSError as exc:
        raise TrackerError(f"UDP: {exc.strerror or exc}") from None
    return None


def _udp_endpoint(url: str) -> tuple[str, int]:
    """Host and port of a ``udp://host:port[/path]`` tracker URL; the port is required."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise TrackerError("UDP tracker URL needs a host and a port")
    return parts.hostname, port


def _describe_http_error(exc: Exception) -> str:
    """One line for a urllib3 failure: the innermost reason, not urllib3's long repr."""
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        reason = reason.__cause__ or reason
    text = getattr(reason, "strerror", None) or str(reason)
    return f"HTTP request failed: {type(reason).__name__}: {text}"
