"""CONNECT tunnels: https sources that apt sends through the proxy, passed on uncached.

With only ``Acquire::http::Proxy`` set, apt 2.6 sends every ``https://`` source to the
proxy as ``CONNECT host:443`` and speaks TLS to the mirror through it. The daemon cannot
see (let alone cache or share) what goes through such a tunnel; refusing it would break
every https source, so it is passed on -- but only to a mirror ``--allowed-mirrors``
allows, on port 443, at an address :class:`~debtorrent.reach.Reach` allows (never the
daemon's own machine), and bounded: at most ``--max-tunnels`` at once (503 beyond),
closed after ``--tunnel-idle-timeout`` seconds without a byte either way. Anything else gets
a 403 whose reason phrase apt prints (``Invalid response from proxy: HTTP/1.1 403
Forbidden (CONNECT only to allowed mirrors on port 443)``).

Each tunnel is logged and counted; the status page shows the count with the way to
have those sources cached instead (an ``http://`` source plus ``--tls-mirrors``: the
daemon then fetches over https itself).

The apt side hands the tunnel its client socket after the request headers (see
:class:`~debtorrent.apt.serve.AptHandler`); bytes apt sent early and still sitting in
the request reader are passed on first.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gevent

from debtorrent.apt.urls import parse_authority
from debtorrent.config import Config
from debtorrent.errors import (
    BadRequestError,
    BusyError,
    ForbiddenError,
    MirrorError,
    MirrorTimeoutError,
)

__all__ = ["HINT", "Tunnel", "Tunnels"]

log = logging.getLogger(__name__)

CONNECT_PORT = 443
CHUNK = 65536
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
HINT = (
    "https sources are tunnelled, not cached or shared: write them as http:// and list "
    "their hosts in tls-mirrors, and the daemon fetches them over https itself"
)
REFUSED_PHRASE = "Forbidden (CONNECT only to allowed mirrors on port 443)"


@dataclass
class TunnelCounts:
    """What the status page shows of the tunnels since start."""

    opened: int = 0
    refused: int = 0
    bytes_to_mirror: int = 0
    bytes_from_mirror: int = 0
    hosts: Counter[str] = field(default_factory=Counter)


class Tunnel:
    """One open tunnel: the upstream socket, and the relay once the client is handed over."""

    def __init__(self, tunnels: Tunnels, authority: str, client: str, upstream: socket.socket):
        self.tunnels = tunnels
        self.idle_timeout = tunnels.idle_timeout
        self.check_every = min(5.0, self.idle_timeout / 4)  # the watchdog's period
        self.authority = authority
        self.client = client
        self.upstream = upstream
        self.started = time.monotonic()
        self.last = self.started
        self.sent = 0  # client to mirror
        self.received = 0  # mirror to client
        self.broken = False  # a side failed: end both
        self._closed = False

    def run(self, client_sock: socket.socket, reader: Any) -> None:
        """Answer 200, then relay both ways until either side ends or the tunnel idles."""
        try:
            client_sock.sendall(ESTABLISHED)
            client_sock.settimeout(None)
            self.upstream.settimeout(None)
            pumps = [
                gevent.spawn(self._pump, reader.read1, self.upstream, True),
                gevent.spawn(self._pump, self.upstream.recv, client_sock, False),
            ]
            self._watch(pumps)
        except OSError as exc:
            log.debug("tunnel to %s: %s", self.authority, exc)
        finally:
            self.close()

    def _pump(self, read, sink: socket.socket, outgoing: bool) -> None:
        """Copy one way until the end; a broken side ends the whole tunnel."""
        try:
            while True:
                data = read(CHUNK)
                if not data:
                    break
                sink.sendall(data)
                self.last = time.monotonic()
                if outgoing:
                    self.sent += len(data)
                else:
                    self.received += len(data)
        except (OSError, ValueError) as exc:  # reset, or a reader closed under us
            log.debug("tunnel to %s: %s", self.authority, exc)
            self.broken = True
            return
        try:
            sink.shutdown(socket.SHUT_WR)  # pass the end on; the other way may go on
        except OSError:
            pass

    def _watch(self, pumps: list[gevent.Greenlet]) -> None:
        while True:
            gevent.joinall(pumps, timeout=self.check_every, raise_error=False)
            if all(p.dead for p in pumps):
                return
            failed = self.broken or any(p.dead and not p.successful() for p in pumps)
            idle = time.monotonic() - self.last >= self.idle_timeout
            if failed or idle:
                if idle:
                    log.info(
                        "tunnel to %s idle for %.0f s: closed", self.authority, self.idle_timeout
                    )
                gevent.killall(pumps, block=True, timeout=5)
                return

    def close(self) -> None:
        """Close the upstream side and count the tunnel as ended (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.upstream.close()
        except OSError:
            pass
        self.tunnels._ended(self)

    def __iter__(self):  # a WSGI result the apt handler recognises; nothing to iterate
        return iter(())


class Tunnels:
    """Opens tunnels within the limits and keeps the counts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.limit: int = config.max_tunnels
        self.connect_timeout: float = config.http_timeout
        self.idle_timeout: float = config.tunnel_idle_timeout
        self.source_address: str = config.peer_bind or ""
        self.active: set[Tunnel] = set()
        self.counts = TunnelCounts()

    def open(self, target: str, client: str) -> Tunnel:
        """Check ``CONNECT target`` and connect to the mirror; the tunnel is not yet relaying.

        Raises :class:`ForbiddenError` (403) for a target that is not an allowed mirror
        on port 443, :class:`BusyError` (503) at the limit, and
        :class:`~debtorrent.errors.MirrorError` subclasses when the mirror cannot be
        reached (502/504).
        """
        try:
            host, port = parse_authority(target)
        except (BadRequestError, ForbiddenError) as exc:
            self.counts.refused += 1
            raise ForbiddenError(f"CONNECT {target}: {exc}", REFUSED_PHRASE) from None
        authority = f"{host}:{port}"
        if port != CONNECT_PORT or not self.config.mirror_allowed(authority):
            self.counts.refused += 1
            raise ForbiddenError(
                f"CONNECT {authority}: only allowed mirrors on port {CONNECT_PORT}", REFUSED_PHRASE
            )
        if len(self.active) >= self.limit:
            self.counts.refused += 1
            raise BusyError(
                f"CONNECT {authority}: {self.limit} tunnels open (max-tunnels)",
                "Service Unavailable (too many CONNECT tunnels)",
            )
        upstream = self._connect(host, port)
        tunnel = Tunnel(self, authority, client, upstream)
        self.active.add(tunnel)
        self.counts.opened += 1
        self.counts.hosts[host] += 1
        log.info("CONNECT %s from %s: tunnelled, not cached", authority, client)
        return tunnel

    def _connect(self, host: str, port: int) -> socket.socket:
        url = f"https://{host}/"
        try:
            candidates = self.config.reach.addresses(host.strip("[]"), port, url)
        except socket.gaierror:
            raise MirrorError(
                url, "host name does not resolve", "Bad Gateway (no such host)"
            ) from None
        except MirrorError:
            self.counts.refused += 1
            raise
        error: MirrorError | None = None
        for family, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.connect_timeout)
                if self.source_address and (":" in self.source_address) == (
                    family == socket.AF_INET6
                ):
                    sock.bind((self.source_address, 0))
                sock.connect(sockaddr)
                return sock
            except TimeoutError:
                error = MirrorTimeoutError(url, "connect timed out")
            except OSError as exc:
                error = MirrorError(url, f"connection failed: {exc.strerror or exc}")
            sock.close()
        assert error is not None
        raise error

    def _ended(self, tunnel: Tunnel) -> None:
        self.active.discard(tunnel)
        self.counts.bytes_to_mirror += tunnel.sent
        self.counts.bytes_from_mirror += tunnel.received
        log.info(
            "tunnel to %s from %s closed after %.1f s: %d bytes sent, %d received",
            tunnel.authority,
            tunnel.client,
            time.monotonic() - tunnel.started,
            tunnel.sent,
            tunnel.received,
        )

    def snapshot(self) -> dict[str, Any]:
        """Counts for the status page (plain data)."""
        counts = self.counts
        live_sent = sum(t.sent for t in self.active)
        live_received = sum(t.received for t in self.active)
        return {
            "open": len(self.active),
            "opened": counts.opened,
            "refused": counts.refused,
            "bytes_to_mirror": counts.bytes_to_mirror + live_sent,
            "bytes_from_mirror": counts.bytes_from_mirror + live_received,
            "hosts": [host for host, _ in counts.hosts.most_common(20)],
            "hint": HINT if counts.opened else "",
        }
