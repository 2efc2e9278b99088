"""The DHT's plain-data parts: routing table, lookup, peer store, tokens, rate limits.

Built from ids and clock values only; no socket. The flood cases feed each structure
far more than its caps allow and check the caps hold.
"""

from __future__ import annotations

import os
import random

import pytest

from debtorrent.torrent.dht.compact import NodeInfo
from debtorrent.torrent.dht.lookup import Lookup
from debtorrent.torrent.dht.peerstore import PeerStore
from debtorrent.torrent.dht.ratelimit import RateLimiter
from debtorrent.torrent.dht.routing import (
    BUCKETS,
    GOOD_FOR,
    MAX_FAILURES,
    K,
    RoutingTable,
    bucket_index,
    distance,
    random_id_in_bucket,
)
from debtorrent.torrent.dht.tokens import Tokens

OWN = bytes(20)


def node_id(prefix_bits: str, rng: random.Random) -> bytes:
    """An id starting with ``prefix_bits`` (a string of 0/1), the rest random."""
    value = rng.getrandbits(160)
    n = len(prefix_bits)
    if n:
        value = (int(prefix_bits, 2) << (160 - n)) | (value & ((1 << (160 - n)) - 1))
    return value.to_bytes(20, "big")


def ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# --- routing table -----------------------------------------------------------------------------


def test_bucket_index_counts_shared_leading_bits():
    rng = random.Random(1)
    assert bucket_index(OWN, node_id("1", rng)) == 0
    assert bucket_index(OWN, node_id("01", rng)) == 1
    assert bucket_index(OWN, node_id("0" * 10 + "1", rng)) == 10
    assert bucket_index(OWN, OWN) == BUCKETS


@pytest.mark.parametrize("index", [0, 1, 7, 80, 159])
def test_random_id_in_bucket_lands_there(index):
    own = os.urandom(20)
    for _ in range(20):
        assert bucket_index(own, random_id_in_bucket(own, index)) == index


def test_bucket_keeps_k_nodes_then_waits_and_names_a_stale_one_to_ping():
    rng = random.Random(2)
    table = RoutingTable(OWN)
    far = [NodeInfo(node_id("1", rng), ip(i), 6881) for i in range(K + 3)]
    for n in far[:K]:
        assert table.confirmed(n, now=0.0) is None
    assert len(table) == K
    # all good: the newcomer waits in the replacement cache, nobody needs a ping
    assert table.confirmed(far[K], now=10.0) is None
    assert len(table) == K and table.replacement_count() == 1
    # later, the bucket's nodes are questionable: the least recently seen is named
    stale = table.confirmed(far[K + 1], now=GOOD_FOR + 20.0)
    assert stale is not None and stale.id == far[0].id


def test_a_node_that_fails_is_replaced_by_the_newest_waiting_one():
    rng = random.Random(3)
    table = RoutingTable(OWN)
    nodes = [NodeInfo(node_id("1", rng), ip(i), 6881) for i in range(K + 1)]
    for n in nodes:
        table.confirmed(n, now=0.0)
    victim = nodes[0]
    for _ in range(MAX_FAILURES):
        table.failed(victim.id, victim.ip, victim.port)
    ids = {e.id for e in table}
    assert victim.id not in ids and nodes[K].id in ids and len(table) == K


def test_one_node_per_address_except_loopback():
    rng = random.Random(4)
    table = RoutingTable(OWN)
    table.confirmed(NodeInfo(node_id("1", rng), "192.0.2.1", 1), 0.0)
    table.confirmed(NodeInfo(node_id("01", rng), "192.0.2.1", 2), 0.0)
    assert len(table) == 1
    assert not table.would_take(node_id("001", rng), "192.0.2.1", 0.0)
    table.confirmed(NodeInfo(node_id("1", rng), "127.0.0.1", 1), 0.0)
    table.confirmed(NodeInfo(node_id("01", rng), "127.0.0.1", 2), 0.0)
    assert len(table) == 3


def test_an_id_answering_from_another_address_does_not_move():
    rng = random.Random(5)
    table = RoutingTable(OWN)
    n = NodeInfo(node_id("1", rng), "192.0.2.1", 1)
    table.confirmed(n, 0.0)
    table.confirmed(NodeInfo(n.id, "192.0.2.66", 1), 1.0)
    assert [(e.ip, e.port) for e in table] == [("192.0.2.1", 1)]


def test_closest_matches_brute_force():
    rng = random.Random(6)
    table = RoutingTable(os.urandom(20))
    for i in range(2000):
        table.confirmed(NodeInfo(rng.randbytes(20), ip(i), 1), 0.0)
    target = rng.randbytes(20)
    everyone = sorted((e for e in table), key=lambda e: distance(e.id, target))
    assert [n.id for n in table.closest(target, 8)] == [e.id for e in everyone[:8]]


def test_table_stays_bounded_under_a_flood_of_nodes():
    rng = random.Random(7)
    table = RoutingTable(os.urandom(20))
    for i in range(100_000):
        table.confirmed(NodeInfo(rng.randbytes(20), ip(i), 1 + i % 60000), now=float(i))
    assert len(table) <= BUCKETS * K
    assert table.replacement_count() <= BUCKETS * table.replacements_per_bucket
    assert all(len(b) <= K for b in table.buckets)
    # random ids fill the far buckets only: about log2(100000) of them
    assert len(table) < 30 * K


def test_stale_buckets_are_named_for_refresh():
    rng = random.Random(8)
    table = RoutingTable(OWN)
    table.confirmed(NodeInfo(node_id("01", rng), ip(1), 1), now=100.0)
    assert table.stale_buckets(now=200.0, interval=900.0) == []
    assert table.stale_buckets(now=950.0, interval=900.0) == [0, 2]
    assert table.stale_buckets(now=1000.0, interval=900.0) == [0, 1, 2]


# --- lookups --------------------------------------------------------------------------------------


class FakeNetwork:
    """Nodes with real routing tables, each holding every other node it can: find_node
    answers with the k closest of its table, as a real node does."""

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        self.nodes = [NodeInfo(rng.randbytes(20), ip(i), 6881) for i in range(size)]
        self.by_address = {n.address: n for n in self.nodes}
        self.tables = {}
        for n in self.nodes:
            table = RoutingTable(n.id)
            for other in rng.sample(self.nodes, len(self.nodes)):
                table.confirmed(other, 0.0)
            self.tables[n.address] = table

    def answer(self, address, target):
        return self.by_address[address].id, self.tables[address].closest(target, K)


def drive(lookup: Lookup, network: FakeNetwork, *, drop=frozenset()) -> int:
    """Run a lookup against the fake network; returns the most queries in flight seen."""
    peak = 0
    in_flight: list[NodeInfo] = []
    while True:
        in_flight += lookup.next_queries()
        peak = max(peak, len(in_flight))
        if not in_flight:
            return peak
        node = in_flight.pop(0)
        if node.address in drop:
            lookup.on_failure(node.address)
            continue
        node_id_, nodes = network.answer(node.address, lookup.target)
        lookup.on_reply(node.address, node_id_, nodes, token=b"tok")


def test_lookup_converges_on_the_true_closest_nodes_with_bounded_parallelism():
    network = FakeNetwork(300, seed=9)
    rng = random.Random(10)
    for _ in range(10):
        target = rng.randbytes(20)
        seeds = rng.sample(network.nodes, 3)
        lookup = Lookup(target, [NodeInfo(b"", n.ip, n.port) for n in seeds], alpha=4)
        peak = drive(lookup, network)
        assert peak <= 4
        assert lookup.done
        best = sorted(network.nodes, key=lambda n: distance(n.id, target))[:K]
        found = [n for n, _token in lookup.closest()]
        assert {n.id for n in found} == {n.id for n in best}
        assert all(token == b"tok" for _n, token in lookup.closest())
        assert lookup.queries < 100


def test_lookup_survives_dead_nodes():
    network = FakeNetwork(300, seed=11)
    dead = frozenset(n.address for n in network.nodes[::3])
    target = bytes(20)
    lookup = Lookup(target, network.nodes[1:4])
    drive(lookup, network, drop=dead)
    assert lookup.done and len(lookup.closest()) == K
    assert not {n.address for n, _t in lookup.closest()} & dead


def test_a_hostile_network_cannot_keep_a_lookup_going():
    rng = random.Random(12)
    target = rng.randbytes(20)
    lookup = Lookup(target, [NodeInfo(b"", "192.0.2.1", 1)], max_queries=50)
    n = 0
    while True:
        queries = lookup.next_queries()
        if not queries:
            break
        for q in queries:
            # every answer names 8 brand-new nodes, each closer to the target than the last
            fresh = []
            for _ in range(8):
                n += 1
                closer = (int.from_bytes(target, "big") ^ (1 << max(0, 150 - n))).to_bytes(
                    20, "big"
                )
                fresh.append(NodeInfo(closer, ip(n), 1))
            lookup.on_reply(q.address, rng.randbytes(20), fresh, values=[(ip(n), 2)] * 3)
    assert lookup.done and lookup.queries == 50
    assert len(lookup.values) <= lookup.max_values


def test_lookup_candidates_and_values_are_bounded():
    lookup = Lookup(bytes(20), [NodeInfo(b"", "192.0.2.1", 1)], max_candidates=10, max_values=5)
    (first,) = lookup.next_queries()
    lookup.on_reply(
        first.address,
        bytes(20),
        [NodeInfo(os.urandom(20), ip(i), 1) for i in range(100)],
        values=[(ip(i), 1) for i in range(100)],
    )
    assert len(lookup.values) == 5
    assert len(lookup.next_queries()) <= lookup.alpha
    queued = sum(1 for c in lookup._candidates.values() if c.state == 0)
    assert queued <= 10


def test_lookup_skips_our_own_id():
    own = os.urandom(20)
    lookup = Lookup(bytes(20), [NodeInfo(own, "192.0.2.1", 1)], own_id=own)
    assert lookup.next_queries() == [] and lookup.done


# --- peer store ---------------------------------------------------------------------------------


def test_store_caps_per_hash_per_ip_hashes_and_total():
    store = PeerStore(max_hashes=10, max_per_hash=5, max_per_ip=2, max_total=30, ttl=100.0)
    h = b"h" * 20
    for port in range(1, 10):
        store.announce(h, ("192.0.2.1", port), now=float(port))
    assert sorted(store.get(h, now=10.0)) == [("192.0.2.1", 8), ("192.0.2.1", 9)]
    for i in range(20):
        store.announce(h, (ip(i), 1), now=20.0 + i)
    assert len(store.get(h, now=50.0, limit=100)) == 5
    for i in range(50):
        store.announce(i.to_bytes(20, "big"), (ip(i), 1), now=100.0 + i)
        assert store.hashes <= 10 and len(store) <= 30


def test_store_flood_keeps_the_newest_and_stays_bounded():
    store = PeerStore()
    rng = random.Random(13)
    for i in range(60_000):
        store.announce(rng.randbytes(20), (ip(i), 1 + i % 1000), now=float(i) / 100)
    assert store.hashes <= store.max_hashes
    assert len(store) <= store.max_total


def test_store_expires_and_refreshes():
    store = PeerStore(ttl=100.0)
    h = b"h" * 20
    store.announce(h, ("192.0.2.1", 1), now=0.0)
    store.announce(h, ("192.0.2.2", 1), now=50.0)
    store.announce(h, ("192.0.2.1", 1), now=90.0)  # refresh
    assert sorted(store.get(h, now=120.0)) == [("192.0.2.1", 1), ("192.0.2.2", 1)]
    store.expire(now=160.0)
    assert store.get(h, now=160.0) == [("192.0.2.1", 1)]
    store.expire(now=500.0)
    assert len(store) == 0 and store.hashes == 0


def test_store_returns_a_random_sample_when_asked_for_fewer():
    store = PeerStore(max_per_hash=100, max_per_ip=100)
    h = b"h" * 20
    for i in range(100):
        store.announce(h, (ip(i), 1), now=0.0)
    assert len(store.get(h, now=1.0, limit=50)) == 50


# --- tokens and rate limits -------------------------------------------------------------------


def test_tokens_are_per_address_and_survive_one_rotation_only():
    tokens = Tokens(interval=300.0)
    token = tokens.issue("192.0.2.1", now=0.0)
    assert tokens.check(token, "192.0.2.1", now=10.0)
    assert not tokens.check(token, "192.0.2.2", now=10.0)
    assert tokens.check(token, "192.0.2.1", now=310.0)  # previous secret
    assert not tokens.check(token, "192.0.2.1", now=620.0)  # two rotations later
    late = tokens.issue("192.0.2.1", now=620.0)
    assert not tokens.check(late, "192.0.2.1", now=2000.0)  # long gap: nothing carried over
    assert not tokens.check(b"", "192.0.2.1", now=2000.0)


def test_rate_limiter_per_source_and_global():
    limiter = RateLimiter(rate=1.0, burst=3.0, global_rate=0.01, global_burst=5.0, max_sources=4)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("a", 1.0)  # refilled one
    assert [limiter.allow("b", 1.0) for _ in range(2)] == [True, False]  # global empty
    for i in range(1000):
        limiter.allow(f"s{i}", 2.0)
    assert len(limiter) == 4
