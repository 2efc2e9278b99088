"""Timeouts, limits and back-offs of the daemon, as frozen values in one place.

These used to be constants scattered over the modules that use them (handshake, idle,
keep-alive, snub and connect timeouts in ``peer`` and ``session``, ban lengths, the
choker's own idea of the upload slots). They are values, not settings a user edits: an
option exists only where an administrator has a reason to change one
(``--http-timeout``), and :meth:`Policy.from_config` takes those from the option table.
Everything else is a documented default here.

As urllib3 does with ``Timeout`` and ``Retry``, every policy is immutable: a part of the
engine that wants other values (a test, a benchmark) makes a changed copy with
:func:`dataclasses.replace`, and nothing can change a policy another part holds. The
state that goes with a policy (how many times a mirror failed, a candidate's failure
count) lives with its owner; :meth:`Backoff.delay` turns a failure count into seconds.

This module imports nothing of the engine: the pure cores may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AptTimeouts",
    "Backoff",
    "BanPolicy",
    "DialPolicy",
    "PeerLimits",
    "PeerTimeouts",
    "Policy",
]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: ``base * factor**(failures - 1)``, at most ``cap`` seconds.

    No failure means no wait. Used per mirror (a dead mirror is asked again after 2, 4,
    8 ... s, not four times a second) and per peer candidate (a peer that refused us is
    dialled again later, not at every announce).
    """

    base: float
    cap: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or self.factor < 1:
            raise ValueError(f"bad back-off {self.base}..{self.cap} x{self.factor}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        return min(self.cap, self.base * self.factor ** min(failures - 1, 64))


@dataclass(frozen=True, slots=True)
class AptTimeouts:
    """Seconds the apt side gives a client, from its connection to its last byte.

    One deadline covers each whole step (a byte now and then does not extend it), so a
    slowloris client holds a socket no longer than these.
    """

    idle: float = 60.0  #: a keep-alive connection with no next request is closed
    header: float = 15.0  #: from the request line to the end of the headers
    send: float = 120.0  #: a client that stops reading a file being sent


@dataclass(frozen=True, slots=True)
class PeerTimeouts:
    """Seconds a peer connection may take for each thing it waits for.

    ``idle`` is how long a connection may stay silent. BEP 3 peers send a keep-alive
    about every two minutes when they have nothing else to say (libtorrent, Transmission
    and aria2 all do), so the idle timeout must be clearly longer than that, or quiet
    but healthy peers are dropped: 300 s, two and a half periods. We send our own
    keep-alive every ``keepalive`` seconds of silence, well inside anyone's timeout.
    """

    handshake: float = 10.0  #: the whole 68-byte handshake, however it trickles in
    connect: float = 10.0  #: TCP connect of an outgoing connection
    idle: float = 300.0  #: silence from the peer before the connection is dropped
    keepalive: float = 60.0  #: our silence before we send a keep-alive
    snub: float = 30.0  #: no block despite requests: the peer is snubbed

    def __post_init__(self) -> None:
        if self.idle <= 2 * self.keepalive:
            raise ValueError("the idle timeout must exceed two keep-alive periods")


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """What one peer may make us hold, and how much we ask of it.

    ``send_watermark`` is libtorrent's send-buffer watermark: the uploader reads the next
    block from disk only while fewer bytes than this wait for the peer's socket, so a
    peer that requests and never reads holds at most the watermark plus one block.
    ``max_send_bytes`` bounds everything else queued for a peer (rejects, haves,
    extension messages): a peer that lets that much pile up does not read and is
    dropped. ``writer_batch`` is the most bytes joined into one ``send``.
    """

    pipeline: int = 64  #: block requests in flight per peer (~1 MiB)
    #: the longest run of consecutive blocks asked for in one file-plane request (the
    #: peer's ``dt_run`` caps it): one message instead of several, on both sides
    file_run: int = 128 * KiB
    max_queued_requests: int = 500  #: requests a peer may queue with us (our reqq)
    max_peer_reqq: int = 1000  #: the most requests we queue with a peer, whatever it says
    send_watermark: int = 1 * MiB
    max_send_bytes: int = 4 * MiB
    writer_batch: int = 256 * KiB
    recv_size: int = 256 * KiB  #: bytes read from a peer's socket at once


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """Strikes (protocol errors) and bans, per address.

    ``strikes`` errors within the decay ban an address for ``ban`` seconds; one strike
    is forgiven every ``strike_decay`` seconds, so an honest client with a rare quirk is
    never banned for errors spread over days. A ban expires and takes its strikes with it.
    Bad piece data bans at once (that is not a strike).
    """

    strikes: int = 3
    strike_decay: float = 600.0
    ban: float = 3600.0


@dataclass(frozen=True, slots=True)
class DialPolicy:
    """The peer list (libtorrent's ``peer_list``): how candidates are kept and dialled.

    A candidate that failed ``max_failures`` times in a row is dropped (static peers
    never are); until then it waits ``retry.delay(failures)`` before the next dial.
    ``max_candidates`` bounds the list of one swarm; ``max_dialing`` the connection
    attempts in flight in the whole session (half-open connections).
    """

    max_candidates: int = 1000
    max_failures: int = 3
    max_dialing: int = 20
    retry: Backoff = field(default_factory=lambda: Backoff(15.0, 600.0))
    static_retry: Backoff = field(default_factory=lambda: Backoff(15.0, 120.0))


@dataclass(frozen=True, slots=True)
class Policy:
    """Every timeout and limit of the daemon (see the module docstring): the peer side,
    the apt side, and the daemon's own periodic work."""

    timeouts: PeerTimeouts = field(default_factory=PeerTimeouts)
    limits: PeerLimits = field(default_factory=PeerLimits)
    bans: BanPolicy = field(default_factory=BanPolicy)
    dial: DialPolicy = field(default_factory=DialPolicy)
    #: a mirror that failed (refused, 5xx, timed out) is asked again after this
    mirror_backoff: Backoff = field(default_factory=lambda: Backoff(2.0, 120.0))
    #: a failing mirror is logged once per this many seconds, with a count
    mirror_log_period: float = 60.0
    #: seconds to wait for a mirror or tracker over HTTP (``--http-timeout``)
    http_timeout: float = 30.0
    #: seconds between maintenance rounds (snub checks, dialling from the peer list)
    maintenance_interval: float = 2.0
    #: what the apt side gives a client (idle, headers, a stalled reader)
    apt: AptTimeouts = field(default_factory=AptTimeouts)
    #: seconds between checkpoints of the all-time counters (and one at exit)
    checkpoint_interval: float = 60.0
    #: seconds after start before the first expiry pass: apt's first update reloads
    #: what its indexes list, so nothing is expired before it had the chance
    expiry_first: float = 60.0

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        """The policy for a :class:`~debtorrent.config.Config`: its options, else defaults."""
        return cls(http_timeout=float(config.http_timeout))
