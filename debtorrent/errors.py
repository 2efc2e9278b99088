"""The one exception hierarchy of debtorrent.

Every expected failure (bad input from apt, a peer, a tracker, the mirror, a config
file or an index) is raised as a subclass of :class:`DebtorrentError`, so callers can
catch precisely and the edges (WSGI app, peer loop, CLI) can turn it into an HTTP
status, a closed connection or a one-line message instead of a traceback. Several also
inherit a builtin (``ValueError``, ``OSError``) so generic ``except`` clauses keep
working.
"""

from __future__ import annotations

__all__ = [
    "BadIndexError",
    "BadRequestError",
    "BencodeError",
    "BusyError",
    "CacheError",
    "ConfigError",
    "DebtorrentError",
    "DiskFullError",
    "ForbiddenError",
    "KrpcError",
    "MetainfoError",
    "MirrorError",
    "MirrorForbiddenError",
    "MirrorNotFoundError",
    "MirrorTimeoutError",
    "NotFoundError",
    "PeerError",
    "ProtocolError",
    "SignatureError",
    "TrackerError",
    "VerificationError",
]


class DebtorrentError(Exception):
    """Base of every error debtorrent raises on purpose."""


class ConfigError(DebtorrentError, ValueError):
    """A bad option on the command line or key in the config file.

    ``name`` is the option or key, so the message can name it.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# --- the apt side ---------------------------------------------------------------


class BadRequestError(DebtorrentError, ValueError):
    """A request apt (or anyone) sent that cannot be served: answered 400."""

    status = 400


class ForbiddenError(DebtorrentError):
    """A client, mirror or file the configuration does not allow: answered 403.

    ``phrase`` is the short reason sent as the HTTP reason phrase, which apt prints
    beside the status (``403  Forbidden (not a file of a Debian archive)``); it is a
    fixed text chosen by the code, never taken from the request.
    """

    status = 403

    def __init__(self, message: str, phrase: str = "Forbidden") -> None:
        super().__init__(message)
        self.phrase = phrase


class NotFoundError(DebtorrentError):
    """A path that has no answer (pdiffs, unknown files): answered 404."""

    status = 404


class BusyError(DebtorrentError):
    """A limit is reached (e.g. CONNECT tunnels open at once): answered 503."""

    status = 503

    def __init__(self, message: str, phrase: str = "Service Unavailable") -> None:
        super().__init__(message)
        self.phrase = phrase


# --- the mirror -----------------------------------------------------------------


class MirrorError(DebtorrentError):
    """The mirror failed: refused, 5xx, truncated. apt sees a 502.

    Carries ``url`` and ``reason`` so the log says which mirror and path failed.
    """

    status = 502
    phrase: str | None = None  # the plain reason phrase of the status unless set

    def __init__(self, url: str, reason: str, phrase: str | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        if phrase is not None:
            self.phrase = phrase


class MirrorForbiddenError(MirrorError):
    """A mirror address the daemon must not reach (loopback, link-local, its own
    addresses) that ``--allowed-mirrors`` does not name: apt sees a 403."""

    status = 403
    phrase = "Forbidden (internal address; name it in allowed-mirrors)"


class MirrorNotFoundError(MirrorError):
    """The mirror answered 404: apt sees a 404 too."""

    status = 404


class MirrorTimeoutError(MirrorError):
    """The mirror did not answer in time: apt sees a 504."""

    status = 504


# --- archive data -----------------------------------------------------------------


class BadIndexError(DebtorrentError, ValueError):
    """A Release, InRelease or Packages file that cannot be parsed or used."""


class VerificationError(DebtorrentError):
    """Data whose size or hash does not match what the signed index chain says.

    The mirror (or a peer) sent something wrong: apt sees a 502, as for a bad gateway.
    """

    status = 502

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class SignatureError(VerificationError):
    """A Release whose signature does not verify (or is expired) where the daemon
    enforces signatures: apt sees a 502 naming the reason."""

    phrase = "Bad Gateway (Release signature not verified)"


# --- the cache ----------------------------------------------------------------------


class CacheError(DebtorrentError, OSError):
    """The cache directory could not be written or read."""

    status = 503


class DiskFullError(CacheError):
    """The cache filesystem is full: apt sees a 507 until space is freed."""

    status = 507


# --- BitTorrent -----------------------------------------------------------------------


class BencodeError(DebtorrentError, ValueError):
    """Bytes that are not valid (canonical) bencoding."""


class MetainfoError(DebtorrentError, ValueError):
    """A .torrent or derived info dictionary that is malformed."""


class ProtocolError(DebtorrentError):
    """A peer broke the wire protocol; the connection is closed and counted."""


class KrpcError(ProtocolError):
    """A DHT (KRPC, BEP 5) message that is malformed; it is dropped and counted.

    ``code`` is the KRPC error code to answer with (201 generic, 203 protocol, 204
    method unknown) and ``t`` the query's transaction id, when the message was a query
    that can still be answered; ``t`` is None for anything else.
    """

    def __init__(self, reason: str, code: int = 203, t: bytes | None = None) -> None:
        super().__init__(reason)
        self.code = code
        #: the transaction id of a query that can still be answered with an error
        self.t = t


class PeerError(DebtorrentError):
    """A peer connection failed for an expected reason (refused, timed out)."""


class TrackerError(DebtorrentError):
    """A tracker could not be reached or sent a reply that cannot be used."""
