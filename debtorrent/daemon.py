"""The daemon: logging, wiring of the layers, the servers, and signals.

By the time this module is imported, :func:`debtorrent.cli.main` has monkey-patched
the standard library, so everything here runs on one gevent hub. SIGTERM and SIGINT
stop the servers and exit 0; SIGHUP reopens the log file and the access log (for
logrotate).

Run as root, the daemon refuses a cache or state directory that belongs to another
user (the system service's, typically): every file it wrote there would be root's,
and the service user could then neither read the checkpoint nor write into the
directories root made.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import sys
import time

import gevent
from gevent.event import Event

from debtorrent import __version__
from debtorrent.apt.accesslog import AccessLog, with_access_log
from debtorrent.apt.app import AptApp
from debtorrent.apt.proxy import Proxy
from debtorrent.apt.serve import AptServer
from debtorrent.archive.indexes import Archive
from debtorrent.archive.signature import Keyrings, Verifier
from debtorrent.cache import Cache
from debtorrent.config import Config
from debtorrent.errors import DebtorrentError
from debtorrent.expiry import Expiry
from debtorrent.fetch import Fetcher
from debtorrent.metrics import metrics_app
from debtorrent.mirror import Mirror
from debtorrent.policy import Policy
from debtorrent.ratelimit import LogLimiter, RateLimits
from debtorrent.state import State
from debtorrent.status import Status, StatusSources
from debtorrent.torrent.manager import SwarmManager
from debtorrent.torrent.session import Session, SessionSettings
from debtorrent.torrent.swarmkey import load_swarm_key

__all__ = ["Daemon", "run"]

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds a thread holds the GIL before the hub may take it
EXIT_OK = 0
EXIT_FAILURE = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Daemon:
    """All long-lived parts of one debtorrent process, wired bottom-up."""

    def __init__(self, config: Config, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.access_log = access_log
        self.cache = Cache(config.cache_dir)
        self.keyrings = Keyrings(config.keyring)
        self.archive = Archive(self.cache, Verifier(config.verify_signatures, self.keyrings))
        self.limits = RateLimits.of(config.upload_rate, config.download_rate, config.mirror_rate)
        self.mirror = Mirror(
            config.http_timeout,
            config.mirror_allowed,
            config.peer_bind or None,
            bucket=self.limits.mirror,
            reach=config.reach,
            tls_mirror=config.tls_mirror,
            ca_file=config.ca_file,
        )
        self.fetcher = Fetcher(self.cache, self.mirror)
        self.proxy = Proxy(self.cache, self.archive, self.fetcher, config.http_timeout + 5)
        self.app = AptApp(config, self.proxy)
        self.session = Session(session_settings(config), self.mirror)
        self.session.rate_limits = self.limits
        self.swarms = SwarmManager(self.session, self.archive, self.cache, config.old_swarm_keep)
        self.proxy.package_source = self.swarms.fetch
        self.state = State(config.state_dir)
        self.expiry = Expiry(self.cache, self.archive, config.cache_limit, self.swarms.forget)
        self.started = time.monotonic()
        self.status = Status(
            StatusSources(
                session=self.session,
                cache_root=self.cache.root,
                apt_port=config.port,
                started=self.started,
                all_time=self.state.totals,
                mirror_downloads=lambda: self.fetcher.active.values(),
                indexes_loading=lambda: self.archive.loading,
                archive=self.archive,
                tunnels=lambda: self.app.tunnels.snapshot(),
                mirror=self.mirror,
                has_room=self.cache.has_room,
            )
        )
        self.app.on_request = self.status.on_request
        self.app.routes["/"] = self.status.page_app
        self.app.routes["/status.json"] = self.status.json_app
        self.app.routes["/metrics"] = metrics_app(self.status.snapshot)
        self.app.routes["/health"] = self.status.health_app
        self.app.post_routes["/rescan"] = self._rescan_app
        self._refusals = LogLimiter()
        self.server: AptServer | None = None
        self._checkpointer: gevent.Greenlet | None = None
        self._expirer: gevent.Greenlet | None = None
        self.stopped = Event()

    def start(self) -> None:
        """Load what the cache holds, then open the apt port."""
        self.cache.sweep_temporaries()
        self.state.load()
        self.status.start()
        self.session.start()
        loaded = self.archive.load_saved()
        log.info("loaded %d saved Packages indexes from %s", loaded, self.cache.root)
        bind = self.config.bind or "::"
        self.server = AptServer(
            (bind, self.config.port),
            self.app,
            self._client_allowed,
            prefetch=self.app.prefetch,
            timeouts=self.session.policy.apt,
            log=None,
            error_log=logging.getLogger("debtorrent.http"),
        )
        if self.access_log is not None:
            self.server.handler_class = with_access_log(self.server.handler_class, self.access_log)
        self.server.start()
        self._checkpointer = gevent.spawn(self._checkpoint_loop)
        self._expirer = gevent.spawn(self._expiry_loop)
        log.info("debtorrent %s: apt side on %s port %d", __version__, bind, self.config.port)
        self._banner()

    def _banner(self) -> None:
        """How to point apt at this daemon, with its real address and mirrors."""
        host = self.config.bind or "localhost"
        if ":" in host:
            host = f"[{host}]"
        address = f"{host}:{self.config.port}"
        log.info('apt proxy form: Acquire::http::Proxy "http://%s/";', address)
        roots = sorted({(m, r.root) for (m, _), r in self.archive.releases.items()})
        for mirror, root in roots:
            log.info("apt path form: deb http://%s/%s/%s SUITE COMPONENTS", address, mirror, root)
        log.info("status: http://%s/ (health: /health)", address)

    def _client_allowed(self, address: str) -> bool:
        """``--allowed-clients``, with refusals logged (once a minute per address)."""
        if self.config.client_allowed(address):
            return True
        held = self._refusals.allow(address, time.monotonic())
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            log.warning("refused client %s: not in allowed-clients%s", address, more)
        if self.access_log is not None:
            self.access_log.refused(address)
        return False

    def _rescan_app(self, environ: dict, start_response) -> list[bytes]:
        """``POST /rescan``: match what is seeded with the cache now (the commands
        ``cache clear``, ``cache verify`` and ``import`` ask for it after changing it)."""
        added, lost = self.swarms.rescan()
        body = json.dumps({"added": added, "lost": lost}).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def _expiry_loop(self) -> None:
        gevent.sleep(min(self.session.policy.expiry_first, self.config.expire_interval))
        while True:
            try:
                self.expiry.run()
                self.swarms.rescan()  # files removed or added behind the daemon's back
            except OSError as exc:
                log.warning("expiry failed: %s", exc)
            gevent.sleep(self.config.expire_interval)

    def _checkpoint_loop(self) -> None:
        while True:
            gevent.sleep(self.session.policy.checkpoint_interval)
            self.state.save(self.session.counters)

    def stop(self) -> None:
        """Close the servers, checkpoint, close upstream connections; idempotent."""
        if self.stopped.is_set():
            return
        if self.server is not None:
            self.server.stop(timeout=2)
            self.server = None
        for greenlet in (self._checkpointer, self._expirer):
            if greenlet is not None:
                greenlet.kill(block=False)
        self.session.stop()
        self.state.save(self.session.counters)
        self.mirror.close()
        self.keyrings.close()
        self.status.close()
        if self.access_log is not None:
            self.access_log.close()
        self.stopped.set()


def session_settings(config: Config) -> SessionSettings:
    """The peer side's settings, taken from the option table's values."""
    return SessionSettings(
        peer_port=config.peer_port,
        peer_bind=config.peer_bind,
        trackers=list(config.tracker),
        peers=list(config.peer),
        max_peers=config.max_peers,
        max_peers_per_swarm=config.max_peers_per_swarm,
        upload_slots=config.upload_slots,
        choke_interval=config.choke_interval,
        http_seed_delay=config.http_seed_delay,
        connect_grace=config.connect_grace,
        http_seed_min_rate=config.http_seed_min_rate,
        http_timeout=config.http_timeout,
        policy=Policy.from_config(config),
        discovery=tuple(config.discovery),
        lan_only=config.lan_only,
        swarm_key=load_swarm_key(config.swarm_key) if config.swarm_key else None,
        dht_bootstrap=list(config.dht_bootstrap),
        dht_port=config.dht_port,
        state_dir=config.state_dir,
    )


def setup_logging(config: Config) -> logging.Handler:
    """Configure the root logger once: the only place handlers are made."""
    if config.log_file:
        handler: logging.Handler = logging.FileHandler(config.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    return handler


def _reopen_log(handler: logging.Handler, access_log: AccessLog | None = None) -> None:
    if isinstance(handler, logging.FileHandler):
        handler.acquire()
        try:
            handler.close()
            handler.stream = handler._open()
        finally:
            handler.release()
        log.info("log file reopened")
    if access_log is not None:
        access_log.reopen()


def foreign_directories(config: Config) -> str | None:
    """Why root must not run with this configuration, or None.

    A cache or state directory that exists and belongs to another user is that user's
    (the system service's): root would leave files there that user cannot use.
    """
    if os.geteuid() != 0:
        return None
    for what, path in (("cache-dir", config.cache_dir), ("state-dir", config.state_dir)):
        try:
            owner = os.stat(path).st_uid
        except OSError:
            continue
        if owner != 0:
            try:
                name = pwd.getpwuid(owner).pw_name
            except KeyError:
                name = str(owner)
            return (
                f"refusing to run as root: {what} {path} belongs to user {name}, and files "
                f"root writes there would be unusable to it; run the daemon as that user "
                f"(runuser -u {name} -- debtorrent ...) or start the service "
                f"(systemctl start debtorrent)"
            )
    return None


def run(config: Config) -> int:
    """Run until SIGTERM/SIGINT; the process's exit status."""
    # Work in the threadpool (index scanning) holds the GIL between its releases; the hub
    # waits up to the switch interval for it after a system call. 1 ms instead of
    # Python's 5 keeps apt's answers prompt while a 50 MB index loads.
    sys.setswitchinterval(SWITCH_INTERVAL)
    refusal = foreign_directories(config)
    if refusal is not None:
        print(f"debtorrent: error: {refusal}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        handler = setup_logging(config)
    except OSError as exc:
        print(f"debtorrent: error: log-file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        access_log = AccessLog(config.access_log) if config.access_log else None
    except OSError as exc:
        print(f"debtorrent: error: access-log: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop_requested = Event()  # handlers first: a SIGTERM during start-up is not lost
    gevent.signal_handler(signal.SIGTERM, stop_requested.set)
    gevent.signal_handler(signal.SIGINT, stop_requested.set)
    gevent.signal_handler(signal.SIGHUP, _reopen_log, handler, access_log)
    try:
        daemon = Daemon(config, access_log)
        daemon.start()
    except DebtorrentError as exc:
        log.error("cannot start: %s", exc)
        print(f"debtorrent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        print(f"debtorrent: error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    stop_requested.wait()
    log.info("stopping")
    daemon.stop()
    log.info("stopped")
    return EXIT_OK
