"""What the daemon is doing, as data: the one source of ``/``, ``/status.json`` and ``/metrics``.

:meth:`Status.snapshot` gathers everything into plain JSON-able data; the HTML page
(:mod:`debtorrent.statuspage`) and the Prometheus text (:mod:`debtorrent.metrics`) are
both built from it, so the three never disagree. Field names are stable (documented in
the man page, STATUS, and docs/status.md): tools and tests read them. Byte counters
distinguish where package bytes came from (peers or the mirror), which is the number an
admin wants: how much traffic the fleet kept off the mirror.

Two things are gathered here rather than asked of other layers:

- the cache's size and file count: a walk of the cache directory, in a greenlet that
  yields every few hundred entries, at most every :attr:`CacheUsage.interval` seconds
  and only when someone asks (never once per request);
- recent errors: the session's notes (bans) plus the warnings and errors the daemon's
  own loggers emit (mirror failures, cut transfers), kept by a :class:`RecentErrors`
  handler on the ``debtorrent`` logger. It keeps records, it writes nothing: output
  handlers are still configured only by the entry point. A record below the configured
  ``--log-level`` never reaches it. One failure is often logged by two layers (the
  fetch that failed, the apt answer it failed); records carrying the same exception
  (``extra={"failure": exc}``) are kept once, and a message repeated word for word is
  one entry with a count.

Everything else comes through :class:`StatusSources`, the small typed view the daemon
builds for the status page (the session, the cache root, the apt port, the all-time
totals, the mirror downloads in flight, the archive and the mirror), and the swarms'
own typed reports (:meth:`~debtorrent.torrent.swarm.Swarm.info`,
:meth:`~debtorrent.torrent.swarm.Swarm.downloads`): no attribute looked up by name,
and the status page holds no reference to the daemon itself.

``/health`` answers 200 while the daemon can serve, and 503 with the reason when it
cannot: the cache directory cannot be written or its disk is full, or every mirror it
used is failing (nothing new can come in). The apt proxy detection script installed by
the Debian package sends apt straight to the mirrors when it gets anything but 200.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent

from debtorrent import __version__
from debtorrent.archive.indexes import Archive
from debtorrent.cache import TMP_PREFIX
from debtorrent.fetch import Download
from debtorrent.mirror import Mirror
from debtorrent.statuspage import render
from debtorrent.torrent.peer import PeerConnection
from debtorrent.torrent.session import NOTE_LOGGER, Session
from debtorrent.torrent.swarm import Swarm

__all__ = ["CacheUsage", "RecentErrors", "Status", "StatusSources"]

log = logging.getLogger(__name__)

#: Recent errors shown (newest kept).
MAX_ERRORS = 50
#: Characters kept of one error message.
MAX_MESSAGE = 500
#: Connected peers listed per swarm (the count is always exact).
MAX_PEERS_LISTED = 200
#: File classes whose answers count as cache hits or misses (files that never change).
CACHEABLE = frozenset({"package", "immutable", "by-hash"})
#: Free bytes under which the cache disk counts as full for /health.
MIN_FREE = 16 << 20


def _share(from_peers: int, from_mirror: int) -> float:
    total = from_peers + from_mirror
    return round(from_peers / total, 4) if total else 0.0


@dataclass(frozen=True)
class StatusSources:
    """What the status page reads, handed over by the daemon (which it never sees).

    New sources are new fields (with a default, so the daemon and tests that do not
    have one still build it).
    """

    session: Session
    cache_root: str | os.PathLike[str]
    apt_port: int
    #: ``time.monotonic()`` at start, for the uptime
    started: float = field(default_factory=time.monotonic)
    #: the all-time totals for the session's counters (the checkpoint adds its own)
    all_time: Callable[[Mapping[str, int]], Mapping[str, int]] = dict
    #: direct mirror downloads in flight (indexes, files no swarm has)
    mirror_downloads: Callable[[], Iterable[Download]] = tuple
    #: Packages indexes being hashed and scanned now (off the hub)
    indexes_loading: Callable[[], int] = int
    #: the archive, for the trust state of every Release (``suites``)
    archive: Archive | None = None
    #: counts of the CONNECT tunnels (``tunnels``)
    tunnels: Callable[[], Mapping[str, Any]] = dict
    #: the upstream side, for each mirror's last failure (``mirrors``, ``/health``)
    mirror: Mirror | None = None
    #: whether that many bytes fit on the cache's disk (``/health``)
    has_room: Callable[[int], bool] = lambda size: True


class CacheUsage:
    """Bytes and files under the cache directory, recounted at most every ``interval`` s.

    The count is started by the first :meth:`current` call after ``interval`` seconds
    and runs in its own greenlet; callers get the last finished count at once (the very
    first caller waits up to ``first_wait`` seconds for it). Temporary files are left
    out; symbolic links are not followed.
    """

    interval = 30.0
    first_wait = 5.0
    yield_every = 256

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self.bytes: int | None = None
        self.files: int | None = None
        self.counted_at: float | None = None  # time.time() when the last count finished
        self._started = float("-inf")
        self._walker: gevent.Greenlet | None = None

    def current(self) -> tuple[int | None, int | None, float | None]:
        """``(bytes, files, counted_at)`` of the last finished count."""
        now = time.monotonic()
        if self._walker is None and now - self._started >= self.interval:
            self._started = now
            self._walker = gevent.spawn(self._count)
        if self.counted_at is None and self._walker is not None:
            self._walker.join(self.first_wait)
        return self.bytes, self.files, self.counted_at

    def _count(self) -> None:
        try:
            total, files, seen = 0, 0, 0
            stack = [self.root]
            while stack:
                directory = stack.pop()
                try:
                    with os.scandir(directory) as entries:
                        for entry in entries:
                            seen += 1
                            if seen % self.yield_every == 0:
                                gevent.sleep(0)
                            try:
                                if entry.is_dir(follow_symlinks=False):
                                    stack.append(entry.path)
                                elif entry.is_file(follow_symlinks=False):
                                    if not entry.name.startswith(TMP_PREFIX):
                                        total += entry.stat(follow_symlinks=False).st_size
                                        files += 1
                            except OSError:
                                continue  # removed meanwhile
                except OSError as exc:
                    log.debug("cannot count %s: %s", directory, exc)
            self.bytes, self.files, self.counted_at = total, files, time.time()
        finally:
            self._walker = None


class RecentErrors(logging.Handler):
    """Keeps the last warnings and errors of the daemon's loggers, as ``(time, text)``.

    The session's notes (bans) are logged too; they are skipped here because the
    session keeps them itself (:attr:`Session.events`), and merged when shown.
    """

    def __init__(self, maxlen: int = MAX_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.maxlen = maxlen
        self.entries: deque[tuple[float, str]] = deque(maxlen=maxlen)
        self.counts: dict[str, int] = {}  # message -> times seen (entries hold it once)
        self._failures: deque[BaseException] = deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == NOTE_LOGGER:
            return
        failure = getattr(record, "failure", None)
        if failure is not None:
            if any(seen is failure for seen in self._failures):
                return  # the same failure, logged again by the layer above
            self._failures.append(failure)
        try:
            text = record.getMessage()
        except Exception:  # a bad format string in a log call: keep the raw message
            text = str(record.msg)
        text = text[:MAX_MESSAGE]
        if text in self.counts:
            self.entries = deque((e for e in self.entries if e[1] != text), maxlen=self.maxlen)
        self.entries.append((record.created, text))
        self.counts[text] = self.counts.get(text, 0) + 1
        if len(self.counts) > 4 * self.maxlen:
            kept = {t for _, t in self.entries}
            self.counts = {t: n for t, n in self.counts.items() if t in kept}


class Status:
    """The status of one daemon: counters of apt requests, cache usage, recent errors.

    :meth:`on_request` is the apt app's hook (see :class:`~debtorrent.apt.app.AptApp`):
    requests are counted by file class and status; bytes sent to apt also go to the
    session's counters (key ``apt``) so that the checkpoint keeps them all-time.
    """

    def __init__(self, sources: StatusSources) -> None:
        self.sources = sources
        self.started_at = time.time()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.request_bytes: Counter[tuple[str, int]] = Counter()
        self.hits = 0
        self.misses = 0
        self.cache_usage = CacheUsage(sources.cache_root)
        self.errors = RecentErrors()
        self._logger = logging.getLogger("debtorrent")

    def start(self) -> None:
        if self.errors not in self._logger.handlers:
            self._logger.addHandler(self.errors)

    def close(self) -> None:
        self._logger.removeHandler(self.errors)

    def on_request(self, cls: str, status: int, nbytes: int, source: str = "-") -> None:
        self.requests[(cls, status)] += 1
        if nbytes > 0:
            self.request_bytes[(cls, status)] += nbytes
            self.sources.session.count("apt", nbytes)
        if cls in CACHEABLE and status in (200, 206, 304):
            if source in ("cache", "offline"):
                self.hits += 1
            elif source in ("peer", "mirror"):
                self.misses += 1

    # --- health ------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """Whether the daemon can serve, and if not, why (see the module docstring)."""
        root = os.fspath(self.sources.cache_root)
        if not os.access(root, os.W_OK | os.X_OK):
            return False, f"cache directory {root} is not writable"
        if not self.sources.has_room(MIN_FREE):
            return False, f"cache disk full ({root})"
        mirrors = self._mirror_states()
        failing = [m for m in mirrors if m["failure"] is not None]
        if mirrors and len(failing) == len(mirrors):
            worst = failing[0]
            return False, f"mirror {worst['host']} failing: {worst['failure']}"
        return True, "serving"

    def _mirror_states(self) -> list[dict[str, Any]]:
        """Each mirror host the daemon knows (from Releases, or one it failed to reach),
        with its archive roots and suites, and its failure if the last contact failed."""
        archive, mirror = self.sources.archive, self.sources.mirror
        failures = mirror.failures if mirror is not None else {}
        answered = mirror.answered if mirror is not None else {}
        hosts: dict[str, dict[tuple[str, str], set[str]]] = {}
        origins: dict[tuple[str, str, str], str] = {}
        releases = list(archive.releases.items()) if archive is not None else []
        loaded_indexes = list(archive.loaded.values()) if archive is not None else []
        for (host, dist), release in releases:
            suite = dist.rsplit("/dists/", 1)[-1].removeprefix("dists/")
            hosts.setdefault(host, {}).setdefault((release.root, suite), set())
            origins[(host, release.root, suite)] = release.origin
        for loaded in loaded_indexes:
            dist = loaded.release.dist
            suite = dist.rsplit("/dists/", 1)[-1].removeprefix("dists/")
            key = (loaded.release.root, suite)
            hosts.setdefault(loaded.mirror, {}).setdefault(key, set()).add(loaded.component)
        for host in failures:
            hosts.setdefault(host, {})
        out = []
        for host in sorted(hosts):
            failed = failures.get(host)
            if failed is not None and failed[0] <= answered.get(host, 0.0):
                failed = None
            suites = hosts[host]
            out.append(
                {
                    "host": host,
                    "suites": [
                        {
                            "root": root,
                            "suite": suite,
                            "origin": origins.get((host, root, suite), ""),
                            "components": sorted(comps) or ["main"],
                        }
                        for (root, suite), comps in sorted(suites.items())
                    ],
                    "failure": failed[1] if failed else None,
                    "failed_at": round(failed[0], 3) if failed else None,
                }
            )
        return out

    # --- the snapshot ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole status as plain JSON-able data (see the module docstring)."""
        sources = self.sources
        session = sources.session
        counters = session.counters
        all_time = Counter(sources.all_time(counters))
        cache_bytes, cache_files, counted_at = self.cache_usage.current()
        healthy, reason = self.health()
        return {
            "health": {"ok": healthy, "reason": reason},
            "mirrors": self._mirror_states(),
            "rates": session.rate_limits.snapshot(time.monotonic()),
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "version": __version__,
            "uptime": round(time.monotonic() - sources.started, 3),
            "started": round(self.started_at, 3),
            "peer_id": session.peer_id.decode("latin-1"),
            "peer_port": session.listen_port or None,
            "connections": len(session.connections),
            "discovery": _discovery(session),
            "indexes_loading": sources.indexes_loading(),
            "totals": {
                "bytes_to_apt": counters["apt"],
                "bytes_from_peers": counters["peers"],
                "bytes_from_mirror": counters["mirror"],
                "bytes_uploaded": counters["uploaded"],
                "peer_share": _share(counters["peers"], counters["mirror"]),
                "bans": counters["bans"],
                "protocol_errors": counters["protocol_errors"],
                "choke_rounds": counters["choke_rounds"],
            },
            "all_time": {
                "bytes_to_apt": all_time["apt"],
                "bytes_from_peers": all_time["peers"],
                "bytes_from_mirror": all_time["mirror"],
                "bytes_uploaded": all_time["uploaded"],
                "peer_share": _share(all_time["peers"], all_time["mirror"]),
                "bans": all_time["bans"],
                "protocol_errors": all_time["protocol_errors"],
                "choke_rounds": all_time["choke_rounds"],
            },
            "cache_bytes": cache_bytes,
            "cache_files": cache_files,
            "cache_counted": round(counted_at, 3) if counted_at is not None else None,
            "requests": [
                {
                    "class": cls,
                    "status": status,
                    "count": count,
                    "bytes": self.request_bytes[(cls, status)],
                }
                for (cls, status), count in sorted(self.requests.items())
            ],
            "swarms": [_swarm(swarm, session) for swarm in list(session.swarms.values())],
            "downloads": self._downloads(),
            "errors": self._errors(),
            "suites": _suites(sources.archive) if sources.archive is not None else [],
            "tunnels": sources.tunnels(),
        }

    def _downloads(self) -> list[dict[str, Any]]:
        """Files on their way: through swarms (apt waits on them) and straight from mirrors."""
        out: list[dict[str, Any]] = []
        for swarm in list(self.sources.session.swarms.values()):
            for item in swarm.downloads():
                out.append(
                    {
                        "swarm": swarm.name,
                        "mirror": item.mirror,
                        "path": item.path,
                        "size": item.size,
                        "done": item.done,
                        "source": item.source,
                        "waiting": item.waiting,
                    }
                )
        for download in list(self.sources.mirror_downloads()):
            if download.done:
                continue
            out.append(
                {
                    "swarm": None,
                    "mirror": download.mirror,
                    "path": download.path,
                    "size": download.length,
                    "done": download.received,
                    "source": "mirror",
                    "waiting": None,
                }
            )
        return out

    def _errors(self) -> list[dict[str, Any]]:
        """Newest first: session notes (bans) and logged warnings, merged by time."""
        merged = sorted(
            [*self.sources.session.events, *self.errors.entries], key=lambda e: e[0], reverse=True
        )
        counts = self.errors.counts
        return [
            {"time": round(t, 3), "message": text, "count": counts.get(text, 1)}
            for t, text in merged[:MAX_ERRORS]
        ]

    # --- the WSGI routes ---------------------------------------------------------------

    def json_app(self, environ: dict, start_response) -> list[bytes]:
        """``/status.json``."""
        body = json.dumps(self.snapshot(), indent=1, sort_keys=True).encode()
        return _answer(environ, start_response, "application/json", body)

    def health_app(self, environ: dict, start_response) -> list[bytes]:
        """``/health``: 200 ``ok: serving``, or 503 with the reason (one line of text)."""
        healthy, reason = self.health()
        body = f"{'ok' if healthy else 'unhealthy'}: {reason}\n".encode("utf-8", "replace")
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def page_app(self, environ: dict, start_response) -> list[bytes]:
        """``/``: the HTML page, for people."""
        host = environ.get("HTTP_HOST") or f"localhost:{self.sources.apt_port}"
        body = render(self.snapshot(), host=host, now=time.time()).encode("utf-8", "replace")
        return _answer(
            environ,
            start_response,
            "text/html; charset=utf-8",
            body,
            # nothing on the page runs: no script, no frame, no request elsewhere
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
        )


#: Where connected peers came from, as the status shows them (accepted ones: "incoming").
PEER_SOURCES = ("tracker", "dht", "lsd", "pex", "static", "incoming")


def _discovery(session: Any) -> dict[str, Any]:
    """How peers are found: mechanisms, peers by source, DHT and LSD figures, a hint."""
    out = session.discovery.snapshot()
    by_source = dict.fromkeys(PEER_SOURCES, 0)
    for peer in list(session.connections):
        source = getattr(peer, "source", "incoming")
        by_source[source] = by_source.get(source, 0) + 1
    out["peers_by_source"] = by_source
    out["addresses_learnt"] = {s: session.candidates[s] for s in PEER_SOURCES[:-1]}
    out["trackers"] = len(session.settings.trackers)
    out["static_peers"] = len(session.settings.peers)
    out["peers_seen"] = session.peers_seen
    out["hint"] = _hint(session, out)
    return out


def _hint(session: Any, discovery: dict[str, Any]) -> str | None:
    """A plain sentence when this daemon cannot meet peers, or has not met one yet."""
    if not discovery["enabled"] and not discovery["trackers"] and not discovery["static_peers"]:
        return (
            "No discovery is enabled and no tracker or peer is configured: this daemon "
            "will never meet a peer, and every package comes from the mirror. Set "
            "discovery (lsd, dht, pex) or name a tracker or peers."
        )
    if session.peers_seen == 0:
        ways = list(discovery["enabled"])
        if discovery["trackers"]:
            ways.append("trackers")
        if discovery["static_peers"]:
            ways.append("static peers")
        return (
            f"No peer seen yet (looking through {', '.join(ways)}). Peers appear once "
            "another machine runs debtorrent with the same indexes; on a LAN, local "
            "discovery finds it within seconds of its apt update."
        )
    return None


def _suites(archive: Archive) -> list[dict[str, Any]]:
    """The trust state of every Release the daemon knows (one per suite and mirror)."""
    out = []
    for (mirror, dist), release in sorted(archive.releases.items()):
        out.append(
            {
                "mirror": mirror,
                "path": dist,
                "origin": release.origin,
                "suite": release.suite,
                "codename": release.codename,
                "trust": release.trust,
                "trusted": release.trusted,
                "reason": release.trust_reason,
                "signer": release.signer,
                "valid_until": release.valid_until or None,
                "indexes": sum(
                    1
                    for (m, _), loaded in archive.loaded.items()
                    if m == mirror and loaded.release is release
                ),
            }
        )
    return out


def _swarm(swarm: Swarm, session: Session) -> dict[str, Any]:
    peers = [p for p in list(swarm.peers) if not p.closed]
    info = swarm.info()
    candidates = session.peer_lists.get(swarm.info_hash)
    return {
        "name": swarm.name,
        "info_hash": swarm.info_hash.hex(),
        "mirror": info.mirror,
        "index_date": info.index_date,
        "files": swarm.layout.num_files,
        "files_enabled": info.files_enabled,
        "files_complete": info.files_complete,
        "seeding": swarm.seeding,
        "pieces": swarm.layout.num_pieces,
        "pieces_had": len(swarm.have),
        "peers": len(peers),
        "candidates": len(candidates) if candidates is not None else 0,
        "down_rate": round(sum(p.down.rate for p in peers)),
        "up_rate": round(sum(p.up.rate for p in peers)),
        "downloaded": swarm.downloaded,
        "uploaded": swarm.uploaded,
        "peer_list": [_peer(p) for p in peers[:MAX_PEERS_LISTED]],
    }


def _peer(peer: PeerConnection) -> dict[str, Any]:
    ip, port = peer.address[0], peer.address[1]
    return {
        "address": f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}",
        "client": peer.client,
        "source": peer.source,
        "outgoing": peer.outgoing,
        "seed": peer.seed,
        "pieces": len(peer.has),
        "down_rate": round(peer.down.rate),
        "up_rate": round(peer.up.rate),
        "downloaded": peer.down.total,
        "uploaded": peer.up.total,
        "am_choking": peer.am_choking,
        "am_interested": peer.am_interested,
        "peer_choking": peer.peer_choking,
        "peer_interested": peer.peer_interested,
        "optimistic": peer.optimistic,
        "snubbed": peer.snubbed,
        "connected": round(time.monotonic() - peer.connected_at, 1),
    }


def _answer(
    environ: dict, start_response, content_type: str, body: bytes, *extra: tuple[str, str]
) -> list[bytes]:
    start_response(
        "200 OK",
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ],
    )
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
