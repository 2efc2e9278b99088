"""What the daemon is doing, as data: the source of ``/status.json``.

Field names are stable (documented in the man page): tools and tests read them.
Byte counters distinguish where package bytes came from (peers or the mirror), which
is the number an admin wants: how much traffic the fleet kept off the mirror.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from debtorrent import __version__

if TYPE_CHECKING:
    from debtorrent.daemon import Daemon

__all__ = ["snapshot", "status_json_app"]


def snapshot(daemon: Daemon) -> dict[str, Any]:
    """The whole status as plain JSON-able data."""
    session = daemon.session
    counters = session.counters
    from_peers = counters["peers"]
    from_mirror = counters["mirror"]
    swarms = []
    for swarm in session.swarms.values():
        swarms.append(
            {
                "name": swarm.name,
                "info_hash": swarm.info_hash.hex(),
                "files": swarm.layout.num_files,
                "pieces": swarm.layout.num_pieces,
                "pieces_had": len(swarm.have),
                "peers": len(swarm.peers),
                "downloaded": swarm.downloaded,
                "uploaded": swarm.uploaded,
            }
        )
    return {
        "version": __version__,
        "uptime": round(time.monotonic() - daemon.started, 3),
        "peer_id": session.peer_id.decode("latin-1"),
        "peer_port": session.listen_port,
        "totals": {
            "bytes_from_peers": from_peers,
            "bytes_from_mirror": from_mirror,
            "bytes_uploaded": counters["uploaded"],
            "peer_share": round(from_peers / (from_peers + from_mirror), 4)
            if from_peers + from_mirror
            else 0.0,
            "bans": counters["bans"],
            "protocol_errors": counters["protocol_errors"],
        },
        "all_time": {
            "bytes_from_peers": daemon.state.totals(counters)["peers"],
            "bytes_from_mirror": daemon.state.totals(counters)["mirror"],
            "bytes_uploaded": daemon.state.totals(counters)["uploaded"],
        },
        "swarms": swarms,
        "connections": len(session.connections),
    }


def status_json_app(daemon: Daemon):
    """A WSGI app serving :func:`snapshot` as JSON."""

    def app(environ: dict, start_response) -> list[bytes]:
        body = json.dumps(snapshot(daemon), indent=1, sort_keys=True).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return app
