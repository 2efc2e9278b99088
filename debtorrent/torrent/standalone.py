"""Seed or download one standard v1 ``.torrent`` with debtorrent's engine.

A test-facing entry point: the wire protocol is proven against libtorrent, aria2 and
Transmission by running the same session, peer and picker code on a plain torrent. It
is not part of the apt proxy and has no config file::

    python -m debtorrent.torrent.standalone --torrent FILE --dir DIR --bind 127.0.0.2 \\
        [--port N] [--peer HOST:PORT]... [--tracker URL]... [--no-torrent-trackers] \\
        [--no-web-seeds] [--exit-when-complete] [--discovery lsd,dht,pex] \\
        [--dht-bootstrap HOST:PORT]... [--dht-port N] [--state-dir DIR] [--swarm-key FILE]

As any client would, it announces to the torrent's own trackers (``announce`` and the
BEP 12 ``announce-list`` tiers; each ``--tracker`` is one more tier) and downloads from
its BEP 19 ``url-list`` web seeds too; ``--no-torrent-trackers`` and ``--no-web-seeds``
leave them out. Discovery is off unless ``--discovery`` names it (and the DHT has no
bootstrap node unless given one), so the interop tests decide exactly what is used.
It prints ``listening <port>`` once the peer port is open (and ``dht <port>`` when the
DHT runs), ``complete`` when every piece is verified, and exits on SIGTERM (or at
completion when asked to).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from debtorrent.config import DISCOVERY_MECHANISMS  # noqa: E402
from debtorrent.errors import DebtorrentError  # noqa: E402
from debtorrent.mirror import Mirror  # noqa: E402
from debtorrent.torrent.metainfo import load_torrent  # noqa: E402
from debtorrent.torrent.session import Session, SessionSettings  # noqa: E402
from debtorrent.torrent.swarm import TorrentSwarm  # noqa: E402
from debtorrent.torrent.swarmkey import load_swarm_key  # noqa: E402
from debtorrent.torrent.webseed import WebSeed  # noqa: E402


def _peer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torrent", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peer", action="append", type=_peer, default=[])
    parser.add_argument("--tracker", action="append", default=[])
    parser.add_argument("--no-torrent-trackers", action="store_true")
    parser.add_argument("--no-web-seeds", action="store_true")
    parser.add_argument("--exit-when-complete", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--discovery", default="")
    parser.add_argument("--dht-bootstrap", action="append", type=_peer, default=[])
    parser.add_argument("--dht-port", type=int, default=0)
    parser.add_argument("--state-dir", default="")
    parser.add_argument("--swarm-key", default="")
    args = parser.parse_args(argv)
    discovery = tuple(m for m in args.discovery.replace(",", " ").split() if m)
    if any(m not in DISCOVERY_MECHANISMS for m in discovery):
        parser.error(f"--discovery takes {', '.join(DISCOVERY_MECHANISMS)}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        meta = load_torrent(args.torrent)
    except DebtorrentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        key = load_swarm_key(args.swarm_key) if args.swarm_key else None
    except DebtorrentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = SessionSettings(
        peer_port=args.port,
        peer_bind=args.bind,
        peers=args.peer,
        trackers=args.tracker,
        discovery=discovery,
        dht_bootstrap=args.dht_bootstrap,
        dht_port=args.dht_port,
        state_dir=args.state_dir,
        swarm_key=key,
        always_listen=True,  # a seed nobody was told about is still dialled by the tests
    )
    tiers = [] if args.no_torrent_trackers else [list(tier) for tier in meta.trackers]
    tiers += [[url] for url in args.tracker]
    mirror = Mirror(settings.http_timeout, lambda host: True, args.bind or None)
    session = Session(settings, mirror)
    session.start()
    print(f"listening {session.listen_port}", flush=True)
    if session.discovery.dht is not None:
        print(f"dht {session.discovery.dht.port}", flush=True)
    swarm = TorrentSwarm(session, meta, Path(args.dir))
    session.add_swarm(swarm, trackers=tiers)
    seeds = [] if args.no_web_seeds or swarm.have.complete else list(meta.web_seeds)
    web_seeds = [WebSeed(swarm, url, mirror, session.mirror_health) for url in seeds]
    for web_seed in web_seeds:
        web_seed.start()
    done = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, done.set)
    gevent.signal_handler(signal.SIGINT, done.set)

    def report() -> None:
        swarm.complete.wait()
        print("complete", flush=True)
        if args.exit_when_complete:
            done.set()

    gevent.spawn(report)
    done.wait()
    for web_seed in web_seeds:
        web_seed.stop()
    session.stop()
    mirror.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
