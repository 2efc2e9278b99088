"""The commands an administrator runs beside the daemon: status, cache verify/clear, import.

``debtorrent status`` asks the running daemon (``GET /status.json`` on its apt port,
found with ``--bind`` and ``--port`` as the daemon reads them) and prints a summary;
with no daemon there it says so, shows what the cache and the checkpoint hold, and
exits with status 3 (as LSB ``status`` actions do for "not running").

The cache commands act on the cache directory directly (:mod:`debtorrent.cachetool`),
whether or not a daemon runs; when one answers, they ask it to rescan the cache
(``POST /rescan``) so it stops offering removed files to peers and starts seeding
imported ones at once, rather than at its next expiry pass.

Exit statuses: 0 done; 1 a failure (named on standard error), or ``cache verify`` found
and removed bad files; 2 bad usage; 3 ``status`` found no daemon.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import urllib3

from debtorrent.archive.signature import Keyrings, Verifier
from debtorrent.cache import TMP_PREFIX, Cache
from debtorrent.cachetool import CacheTool, looks_like_cache, require_writable
from debtorrent.config import Config
from debtorrent.errors import DebtorrentError
from debtorrent.state import State
from debtorrent.statuspage import duration, human_bytes

__all__ = ["daemon_url", "run"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOT_RUNNING = 3
TIMEOUT = 10.0


def daemon_url(config: Config) -> str:
    """Where the daemon of ``config`` answers on this machine."""
    host = config.bind
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


def _ask(config: Config, method: str, path: str) -> tuple[int, bytes]:
    """One request to the daemon; raises ``OSError``-like urllib3 errors when none."""
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=3, read=TIMEOUT))
    try:
        answer = pool.request(method, daemon_url(config) + path)
        return answer.status, answer.data
    finally:
        pool.clear()


def run(words: str, args: dict[str, Any], config: Config) -> int:
    """Run one command; its exit status."""
    logging.basicConfig(level=logging.WARNING, format="debtorrent: %(message)s")
    try:
        if words == "status":
            return status(config, bool(args.get("--json")))
        if words == "cache verify":
            return verify(config)
        if words == "cache clear":
            return clear(config, bool(args.get("--all")))
        if words == "import":
            return import_(config, list(args.get("PATH") or []))
    except DebtorrentError as exc:
        print(f"debtorrent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"debtorrent: error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    raise AssertionError(f"unknown command {words}")


# --- status --------------------------------------------------------------------------------


def status(config: Config, as_json: bool) -> int:
    url = daemon_url(config)
    try:
        code, body = _ask(config, "GET", "/status.json")
    except urllib3.exceptions.HTTPError as exc:
        return _offline(config, url, _why(exc), as_json)
    if code != 200:
        print(
            f"debtorrent: error: the daemon at {url}/ answered {code} "
            f"(is this address in its allowed-clients?)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if as_json:
        sys.stdout.write(body.decode("utf-8", "replace"))
        if not body.endswith(b"\n"):
            sys.stdout.write("\n")
        return EXIT_OK
    for line in summary(json.loads(body), url):
        print(line)
    return EXIT_OK


def _why(exc: Exception) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    if "refused" in text.lower():
        return "connection refused"
    if "timed out" in text.lower():
        return "no answer in time"
    return text.split(": ", 1)[-1][:100]


def _percent(value: Any) -> str:
    return f"{value * 100:.1f} %" if isinstance(value, int | float) else "?"


def _rate(figures: dict[str, Any]) -> str:
    limit = figures.get("limit")
    shown = f"limit {human_bytes(limit)}/s" if limit else "no limit"
    return f"{human_bytes(figures.get('rate', 0))}/s ({shown})"


def summary(snap: dict[str, Any], url: str) -> list[str]:
    """The human summary of a daemon's ``/status.json``."""
    totals, all_time = snap.get("totals", {}), snap.get("all_time", {})
    health = snap.get("health", {})
    state = "serving" if health.get("ok", True) else f"NOT SERVING: {health.get('reason')}"
    uptime = int(snap.get("uptime", 0))
    lines = [f"debtorrent {snap.get('version')} at {url}/: up {duration(uptime)}, {state}"]
    peers_b, mirror_b = totals.get("bytes_from_peers", 0), totals.get("bytes_from_mirror", 0)
    lines.append(
        f"From peers: {_percent(totals.get('peer_share'))} of package bytes since the start "
        f"({human_bytes(peers_b)} from peers, {human_bytes(mirror_b)} from mirrors); "
        f"all time {_percent(all_time.get('peer_share'))}"
    )
    swarms = snap.get("swarms", [])
    complete = sum(s.get("files_complete", 0) for s in swarms)
    lines.append(
        f"Swarms:     {len(swarms)} ({complete:,} files complete here, "
        f"{len(snap.get('downloads', []))} downloads now)"
    )
    discovery = snap.get("discovery", {})
    found = list(discovery.get("enabled", []))
    for key, what in (("trackers", "tracker"), ("static_peers", "static peer")):
        if discovery.get(key):
            found.append(f"{discovery[key]} {what}{'s' if discovery[key] > 1 else ''}")
    ways = ", ".join(found) or "none configured"
    lines.append(
        f"Peers:      {snap.get('connections', 0)} connected, peer port "
        f"{snap.get('peer_port')}; discovery: {ways}"
    )
    size, files = snap.get("cache_bytes"), snap.get("cache_files")
    counted = f"{human_bytes(size)} in {files:,} files" if size is not None else "not counted yet"
    lines.append(
        f"Cache:      {counted}; {snap.get('cache_hits', 0):,} hits, "
        f"{snap.get('cache_misses', 0):,} misses"
    )
    rates = snap.get("rates", {})
    lines.append(
        f"Rates:      from peers {_rate(rates.get('download', {}))}, to peers "
        f"{_rate(rates.get('upload', {}))}, from mirrors {_rate(rates.get('mirror', {}))}"
    )
    for mirror in snap.get("mirrors", []):
        suites = ", ".join(
            f"{s.get('root') or '/'} {s.get('suite')}" for s in mirror.get("suites", [])
        )
        failing = f"; FAILING: {mirror['failure']}" if mirror.get("failure") else ""
        lines.append(f"Mirror:     {mirror.get('host')} ({suites or 'no suite yet'}){failing}")
    errors = snap.get("errors", [])
    if errors:
        newest = errors[0]
        when = time.strftime("%H:%M:%S", time.localtime(newest.get("time", 0)))
        lines.append(f"Errors:     {len(errors)} recent; newest at {when}: {newest.get('message')}")
    if discovery.get("hint"):
        lines.append(f"Hint: {discovery['hint']}")
    return lines


def _offline(config: Config, url: str, why: str, as_json: bool) -> int:
    root = Path(config.cache_dir)
    size, files = _usage(root)
    state = State(config.state_dir)
    state.load()
    totals = state.base
    if as_json:
        data = {
            "running": False,
            "url": url,
            "cache_dir": str(root),
            "cache_bytes": size,
            "cache_files": files,
            "all_time": {
                "bytes_from_peers": totals["peers"],
                "bytes_from_mirror": totals["mirror"],
                "bytes_uploaded": totals["uploaded"],
                "bytes_to_apt": totals["apt"],
            },
        }
        print(json.dumps(data, indent=1, sort_keys=True))
        return EXIT_NOT_RUNNING
    print(f"debtorrent is not running at {url}/ ({why}).")
    if size is None:
        print(f"Cache:      {root} does not exist or cannot be read")
    else:
        print(f"Cache:      {root}: {human_bytes(size)} in {files:,} files")
    print(
        f"All time:   {human_bytes(totals['peers'])} from peers, "
        f"{human_bytes(totals['mirror'])} from mirrors, "
        f"{human_bytes(totals['uploaded'])} uploaded ({state.path})"
    )
    return EXIT_NOT_RUNNING


def _usage(root: Path) -> tuple[int | None, int | None]:
    if not root.is_dir():
        return None, None
    size = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.startswith(TMP_PREFIX):
                continue
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                continue
    return size, files


# --- the cache commands -----------------------------------------------------------------------


def _tool(config: Config) -> CacheTool:
    root = Path(config.cache_dir)
    if not root.is_dir():
        raise DebtorrentError(f"no cache at {root} (is cache-dir right? -c names the config)")
    problem = looks_like_cache(root)
    if problem is not None:
        raise DebtorrentError(f"{root} does not look like a debtorrent cache: {problem}")
    require_writable(root)
    verifier = Verifier(config.verify_signatures, Keyrings(config.keyring))
    return CacheTool(Cache(root, check=False), verifier)


def _tell_daemon(config: Config) -> None:
    """Ask a running daemon to rescan the cache; say what it did, if it runs."""
    try:
        code, body = _ask(config, "POST", "/rescan")
    except urllib3.exceptions.HTTPError:
        return  # no daemon: it rescans the cache when it starts
    if code != 200:
        print(f"the daemon at {daemon_url(config)}/ refused to rescan ({code})")
        return
    result = json.loads(body)
    print(
        f"the running daemon now seeds {result.get('added', 0)} more files "
        f"and {result.get('lost', 0)} fewer"
    )


def verify(config: Config) -> int:
    tool = _tool(config)
    indexes = tool.load_indexes()
    report = tool.verify()
    for line in report.bad:
        print(f"bad: {line}")
    print(
        f"checked {report.checked:,} files ({human_bytes(report.bytes)}) against "
        f"{indexes} saved Packages indexes (verified Releases): {report.good:,} good, "
        f"{len(report.bad):,} bad; "
        f"{report.unlisted:,} packages no saved index lists, {report.other:,} other files"
    )
    if report.bad:
        _tell_daemon(config)
    return EXIT_FAILURE if report.bad else EXIT_OK


def clear(config: Config, everything: bool) -> int:
    tool = _tool(config)
    report = tool.clear(everything)
    for line in report.failed:
        print(f"could not remove: {line}")
    kept = "" if everything else f"; kept {report.kept:,} index files"
    print(f"removed {report.removed:,} files ({human_bytes(report.bytes)}){kept}")
    _tell_daemon(config)
    return EXIT_FAILURE if report.failed else EXIT_OK


def import_(config: Config, paths: list[str]) -> int:
    tool = _tool(config)
    if tool.load_indexes() == 0:
        raise DebtorrentError(
            f"no Packages index with a verified Release is saved in {config.cache_dir}: "
            "run apt update through the daemon first, so it knows what the packages must be"
        )
    report = tool.import_paths(paths)
    for line in report.bad:
        print(f"not imported: {line}")
    for line in report.failed:
        print(f"failed: {line}")
    print(
        f"imported {report.linked + report.copied:,} files ({human_bytes(report.bytes)}): "
        f"{report.linked:,} linked, {report.copied:,} copied; {report.already:,} already "
        f"cached, {report.unlisted:,} not in any saved index, {len(report.bad):,} with other "
        f"content than the index says (of {report.seen:,} found)"
    )
    if report.linked or report.copied:
        _tell_daemon(config)
    return EXIT_FAILURE if report.failed else EXIT_OK
