"""The status page reads the daemon through :class:`StatusSources` and typed swarm reports.

Before, it held the daemon and looked attributes up by name (``getattr(swarm,
"requests")``), and told the session's ban notes from other warnings by the logging
function's name; a renamed method silently emptied the page. Here a status is built
from a bare session, with no daemon at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from debtorrent.status import RecentErrors, Status, StatusSources
from debtorrent.torrent.swarm import TorrentSwarm
from tests.fixtures.engine import connect_pair, engine_session, make_torrent, wait_for


def test_a_status_needs_no_daemon(tmp_path: Path) -> None:
    meta, directory = make_torrent(tmp_path, {"a.bin": 100_000}, 65536)
    with engine_session() as session:
        swarm = TorrentSwarm(session, meta, directory)
        session.add_swarm(swarm)
        peer, _remote, _ = connect_pair(swarm)
        status = Status(
            StatusSources(
                session=session,
                cache_root=tmp_path,
                apt_port=9988,
                all_time=lambda counters: {"apt": 5 + counters["apt"]},
            )
        )
        status.on_request("package", 200, 7)
        snap = status.snapshot()
        (entry,) = snap["swarms"]
        assert entry["name"] == meta.name and entry["mirror"] is None
        assert entry["files_enabled"] == 0 and entry["candidates"] == 0
        (listed,) = entry["peer_list"]
        assert listed["source"] == peer.source == "static"
        assert snap["totals"]["bytes_to_apt"] == 7 and snap["all_time"]["bytes_to_apt"] == 12
        assert snap["downloads"] == []
        session.ban("127.0.0.99", "test")
        wait_for(lambda: peer.closed)
        messages = [e["message"] for e in status.snapshot()["errors"]]
        assert messages == ["banned peer 127.0.0.99: test"]  # once, from the session's notes
        swarm.close()


def test_recent_errors_skip_the_session_notes_by_logger() -> None:
    handler = RecentErrors()
    logger = logging.getLogger("debtorrent")
    logger.addHandler(handler)
    try:
        logging.getLogger("debtorrent.torrent.session.notes").warning("banned peer 10.0.0.1")
        logging.getLogger("debtorrent.torrent.webseed").warning("mirror m: 3 failures")
    finally:
        logger.removeHandler(handler)
    assert [text for _, text in handler.entries] == ["mirror m: 3 failures"]
