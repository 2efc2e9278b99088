"""``/metrics``: the status snapshot in the Prometheus text format, via prometheus-client.

Each daemon has its own :class:`~prometheus_client.CollectorRegistry` (never the
library's global one, which would mix in the process's own metrics and leak between
daemons built in one process), holding one custom collector. The collector reads
:meth:`~debtorrent.status.Status.snapshot` at every scrape, so ``/metrics`` and
``/status.json`` are the same figures under two names; nothing is counted twice.

Counters are since the daemon started (Prometheus handles restarts itself; the
all-time figures are in ``/status.json``). Label values that come from outside (swarm
names from a Release) are escaped by the library's text writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["StatusCollector", "metrics_app", "registry_for"]

Snapshot = Callable[[], dict[str, Any]]


class StatusCollector:
    """A prometheus-client collector over a snapshot function."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the snapshot is read per scrape

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        totals = snap["totals"]

        received = CounterMetricFamily(
            "debtorrent_package_bytes",
            "Package bytes received and verified, by source (peers or the mirror).",
            labels=["source"],
        )
        received.add_metric(["peers"], totals["bytes_from_peers"])
        received.add_metric(["mirror"], totals["bytes_from_mirror"])
        yield received
        yield CounterMetricFamily(
            "debtorrent_uploaded_bytes", "Bytes sent to peers.", value=totals["bytes_uploaded"]
        )

        apt_bytes = CounterMetricFamily(
            "debtorrent_apt_bytes",
            "Body bytes sent to apt (Content-Length of the answers), by file class.",
            labels=["class"],
        )
        apt_requests = CounterMetricFamily(
            "debtorrent_apt_requests",
            "Apt requests answered, by file class and HTTP status.",
            labels=["class", "status"],
        )
        by_class: dict[str, int] = {}
        for row in snap["requests"]:
            apt_requests.add_metric([row["class"], str(row["status"])], row["count"])
            by_class[row["class"]] = by_class.get(row["class"], 0) + row["bytes"]
        for cls, amount in sorted(by_class.items()):
            apt_bytes.add_metric([cls], amount)
        yield apt_bytes
        yield apt_requests

        yield CounterMetricFamily("debtorrent_bans", "Peer addresses banned.", value=totals["bans"])
        yield CounterMetricFamily(
            "debtorrent_protocol_errors",
            "Peer protocol violations.",
            value=totals["protocol_errors"],
        )

        yield GaugeMetricFamily(
            "debtorrent_peers", "Peer connections open, in all swarms.", value=snap["connections"]
        )
        yield GaugeMetricFamily(
            "debtorrent_swarms",
            "Swarms loaded (one per Packages index).",
            value=len(snap["swarms"]),
        )
        swarm_peers = GaugeMetricFamily(
            "debtorrent_swarm_peers", "Peers connected, per swarm.", labels=["swarm", "info_hash"]
        )
        for swarm in snap["swarms"]:
            swarm_peers.add_metric([swarm["name"], swarm["info_hash"]], swarm["peers"])
        yield swarm_peers
        yield from _discovery_metrics(snap.get("discovery") or {})
        yield GaugeMetricFamily(
            "debtorrent_downloads",
            "Files being downloaded now (through swarms or from mirrors).",
            value=len(snap["downloads"]),
        )
        yield GaugeMetricFamily(
            "debtorrent_peer_share",
            "Share of package bytes that came from peers since the start (0 to 1).",
            value=totals["peer_share"],
        )
        if snap["cache_bytes"] is not None:
            yield GaugeMetricFamily(
                "debtorrent_cache_bytes",
                "Bytes in the cache directory (recounted at most every 30 s).",
                value=snap["cache_bytes"],
            )
            yield GaugeMetricFamily(
                "debtorrent_cache_files", "Files in the cache directory.", value=snap["cache_files"]
            )
        yield GaugeMetricFamily(
            "debtorrent_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch.",
            value=snap["started"],
        )
        yield CounterMetricFamily(
            "debtorrent_cache_hits",
            "Answers for never-changing files served from the cache.",
            value=snap["cache_hits"],
        )
        yield CounterMetricFamily(
            "debtorrent_cache_misses",
            "Answers for never-changing files that had to be fetched.",
            value=snap["cache_misses"],
        )
        yield GaugeMetricFamily(
            "debtorrent_healthy", "1 while /health answers 200.", value=int(snap["health"]["ok"])
        )
        rate = GaugeMetricFamily(
            "debtorrent_rate_bytes_per_second",
            "Bytes per second now: to peers, from peers, from mirrors.",
            labels=["direction"],
        )
        limit = GaugeMetricFamily(
            "debtorrent_rate_limit_bytes_per_second",
            "The configured rate limits (only those set).",
            labels=["direction"],
        )
        for direction, figures in sorted(snap["rates"].items()):
            rate.add_metric([direction], figures["rate"])
            if figures["limit"] is not None:
                limit.add_metric([direction], figures["limit"])
        yield rate
        yield limit
        info = GaugeMetricFamily(
            "debtorrent_build_info", "The daemon's version.", labels=["version"]
        )
        info.add_metric([snap["version"]], 1)
        yield info


def _discovery_metrics(discovery: dict[str, Any]) -> Iterator[Metric]:
    """Peers by source, addresses learnt, the DHT's table and lookups, LSD announces."""
    by_source = GaugeMetricFamily(
        "debtorrent_peers_by_source",
        "Peer connections open, by how the peer was found (incoming: it connected to us).",
        labels=["source"],
    )
    for source, count in sorted((discovery.get("peers_by_source") or {}).items()):
        by_source.add_metric([source], count)
    yield by_source
    learnt = CounterMetricFamily(
        "debtorrent_peer_addresses",
        "Peer addresses learnt, by source (before the connection caps).",
        labels=["source"],
    )
    for source, count in sorted((discovery.get("addresses_learnt") or {}).items()):
        learnt.add_metric([source], count)
    yield learnt
    dht = discovery.get("dht")
    if dht and dht.get("running"):
        yield GaugeMetricFamily(
            "debtorrent_dht_nodes", "Nodes in the DHT routing table.", value=dht["nodes"]
        )
        yield GaugeMetricFamily(
            "debtorrent_dht_good_nodes",
            "Nodes in the DHT routing table that answered in the last 15 minutes.",
            value=dht["good_nodes"],
        )
        yield CounterMetricFamily(
            "debtorrent_dht_lookups", "DHT lookups completed.", value=dht["lookups"]
        )
        yield GaugeMetricFamily(
            "debtorrent_dht_stored_peers",
            "Peers other nodes announced to this node, kept for the DHT.",
            value=dht["stored_peers"],
        )
        yield CounterMetricFamily(
            "debtorrent_dht_malformed",
            "Malformed DHT messages dropped.",
            value=dht["malformed"],
        )
        yield CounterMetricFamily(
            "debtorrent_dht_rate_limited",
            "DHT queries dropped by the per-source rate limit.",
            value=dht["rate_limited"],
        )
    lsd = discovery.get("lsd")
    if lsd and lsd.get("running"):
        yield CounterMetricFamily(
            "debtorrent_lsd_rounds", "Local discovery announce rounds sent.", value=lsd["rounds"]
        )
        yield CounterMetricFamily(
            "debtorrent_lsd_heard",
            "Local discovery announces heard for our swarms.",
            value=lsd["heard"],
        )


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    """A private registry holding one :class:`StatusCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    return registry


def metrics_app(snapshot: Snapshot):
    """A WSGI app serving the registry of ``snapshot`` in the Prometheus text format."""
    registry = registry_for(snapshot)

    def app(environ: dict, start_response) -> list[bytes]:
        body = generate_latest(registry)
        start_response(
            "200 OK",
            [
                ("Content-Type", CONTENT_TYPE_LATEST),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app
