"""Check a DHT node by hand, or run one: ``python -m debtorrent.torrent.dht COMMAND``.

::

    python -m debtorrent.torrent.dht ping HOST:PORT
    python -m debtorrent.torrent.dht get-peers INFOHASH --bootstrap HOST:PORT [...]
    python -m debtorrent.torrent.dht serve [--bind ADDR] [--port N] [--bootstrap HOST:PORT]...

``ping`` prints the node's id and round trip; ``get-peers`` runs a full lookup from the
bootstrap nodes and prints one peer per line; ``serve`` runs a node (printing
``dht <port>`` once it listens) until SIGTERM or Ctrl-C, e.g. as the bootstrap node of a
private DHT. Exit status 1 when a node does not answer or no peer is found.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from debtorrent.torrent.dht.node import DhtNode  # noqa: E402


def _address(text: str) -> tuple[str, int]:
    host, _sep, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m debtorrent.torrent.dht")
    parser.add_argument("--log-level", default="warning")
    commands = parser.add_subparsers(dest="command", required=True)
    ping = commands.add_parser("ping", help="ping one node")
    ping.add_argument("node", type=_address)
    get = commands.add_parser("get-peers", help="look an info hash up")
    get.add_argument("info_hash")
    get.add_argument("--bootstrap", type=_address, action="append", required=True)
    serve = commands.add_parser("serve", help="run a node")
    serve.add_argument("--bind", default="")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--bootstrap", type=_address, action="append", default=[])
    serve.add_argument("--state-dir", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    if args.command == "serve":
        node = DhtNode(args.bind, args.port, bootstrap=args.bootstrap, state_dir=args.state_dir)
        node.start()
        print(f"dht {node.port}", flush=True)
        done = Event()
        gevent.signal_handler(signal.SIGTERM, done.set)
        gevent.signal_handler(signal.SIGINT, done.set)
        done.wait()
        node.stop()
        return 0

    node = DhtNode("", 0, bootstrap=getattr(args, "bootstrap", []), read_only=True)
    node.start()
    try:
        if args.command == "ping":
            started = time.monotonic()
            reply = node.ping(args.node)
            if reply is None:
                print(f"{args.node[0]}:{args.node[1]}: no answer", file=sys.stderr)
                return 1
            elapsed = (time.monotonic() - started) * 1000
            print(f"{args.node[0]}:{args.node[1]} id {reply.sender.hex()} in {elapsed:.1f} ms")
            return 0
        try:
            info_hash = bytes.fromhex(args.info_hash)
        except ValueError:
            info_hash = b""
        if len(info_hash) != 20:
            parser.error("INFOHASH is 40 hexadecimal digits")
        peers, lookup = node.get_peers(info_hash)
        for ip, port in peers:
            print(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
        print(f"{len(peers)} peers, {lookup.queries} queries", file=sys.stderr)
        return 0 if peers else 1
    finally:
        node.stop()


if __name__ == "__main__":
    raise SystemExit(main())
