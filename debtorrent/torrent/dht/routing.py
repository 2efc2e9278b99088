"""The k-bucket routing table (BEP 5, Kademlia), as plain data: no socket, no clock.

Nodes sit in 160 buckets by the length of the prefix their id shares with ours
(bucket ``i`` holds ids that agree with ours on exactly ``i`` leading bits), at most
:data:`K` = 8 each, plus a small replacement cache per bucket. That bounds the table at
160 x (8 + 8) entries whatever arrives.

Only nodes that *answered* one of our queries enter the table (:meth:`RoutingTable.
confirmed`): a node named in someone's reply, or one that merely queried us, is a
candidate until it answers a ping, so a flood of spoofed datagrams cannot fill the
table. One entry per IP address (loopback excepted, for several nodes on one test
machine), so one host cannot take a bucket with many ids.

A node's state follows BEP 5: *good* if it answered within 15 minutes, *questionable*
after that, *bad* after :data:`MAX_FAILURES` queries in a row went unanswered. A full
bucket takes a new node only in place of a bad one; otherwise the newcomer waits in the
replacement cache and the table names the least recently seen questionable node for the
node to ping (:meth:`RoutingTable.confirmed` returns it): if that ping fails, the
newcomer replaces it.

The table is saved as compact node info and reloaded at start; reloaded nodes are
candidates again (pinged before trusted), and their answers rebuild the table.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from debtorrent.torrent.dht.compact import ID_LEN, NodeInfo

__all__ = [
    "BUCKETS",
    "GOOD_FOR",
    "MAX_FAILURES",
    "Entry",
    "K",
    "RoutingTable",
    "bucket_index",
    "distance",
    "random_id_in_bucket",
]

K = 8
BUCKETS = ID_LEN * 8
#: Seconds a node stays good after it last answered.
GOOD_FOR = 15 * 60.0
#: Unanswered queries in a row that make a node bad.
MAX_FAILURES = 2
#: Replacement candidates kept per bucket.
REPLACEMENTS = 8


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance of two ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: bytes, other: bytes) -> int:
    """Leading bits ``other`` shares with ``own`` (160 for ``own`` itself)."""
    d = distance(own, other)
    return BUCKETS - d.bit_length()


def random_id_in_bucket(own: bytes, index: int, rand: bytes | None = None) -> bytes:
    """A random id that falls into bucket ``index`` (to refresh it with a lookup)."""
    rand = rand if rand is not None else os.urandom(ID_LEN)
    own_int = int.from_bytes(own, "big")
    low_bits = BUCKETS - index - 1  # bits after the first differing one
    flip = 1 << low_bits
    mask = flip - 1
    value = (own_int ^ flip) & ~mask | (int.from_bytes(rand, "big") & mask)
    return value.to_bytes(ID_LEN, "big")


def _shareable_ip(ip: str) -> bool:
    """Addresses that may hold several nodes: loopback only (test machines)."""
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class Entry:
    """A node in the table and what we know of its liveness."""

    id: bytes
    ip: str
    port: int
    last_answer: float
    last_seen: float
    failures: int = 0

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(self.id, self.ip, self.port)

    def good(self, now: float) -> bool:
        return self.failures == 0 and now - self.last_answer < GOOD_FOR

    def bad(self) -> bool:
        return self.failures >= MAX_FAILURES


class RoutingTable:
    """The table of one node (see the module docstring)."""

    def __init__(
        self, own_id: bytes, k: int = K, replacements: int = REPLACEMENTS, now: float = 0.0
    ) -> None:
        if len(own_id) != ID_LEN:
            raise ValueError("a node id is 20 bytes")
        self.own_id = own_id
        self.k = k
        self.replacements_per_bucket = replacements
        self.buckets: list[list[Entry]] = [[] for _ in range(BUCKETS)]
        self.replacements: list[list[Entry]] = [[] for _ in range(BUCKETS)]
        self.changed: list[float] = [now] * BUCKETS
        self._by_ip: dict[str, Entry] = {}

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def __iter__(self):
        for bucket in self.buckets:
            yield from bucket

    def find(self, node_id: bytes) -> Entry | None:
        for entry in self.buckets[self._index(node_id)]:
            if entry.id == node_id:
                return entry
        return None

    def _index(self, node_id: bytes) -> int:
        return min(bucket_index(self.own_id, node_id), BUCKETS - 1)

    # --- what the node reports --------------------------------------------------------

    def confirmed(self, node: NodeInfo, now: float) -> Entry | None:
        """``node`` answered a query of ours: add or refresh it.

        Returns a node of the full bucket worth pinging (the least recently seen
        questionable one) when ``node`` had to wait in the replacement cache; else None.
        """
        if node.id == self.own_id:
            return None
        index = self._index(node.id)
        bucket = self.buckets[index]
        for entry in bucket:
            if entry.id == node.id:
                if (entry.ip, entry.port) != (node.ip, node.port):
                    return None  # an id answering from elsewhere: keep the one we know
                entry.last_answer = entry.last_seen = now
                entry.failures = 0
                return None
        holder = self._by_ip.get(node.ip)
        if holder is not None and not _shareable_ip(node.ip):
            if not holder.bad():
                return None  # one node per address
            self._remove(holder)
        entry = Entry(node.id, node.ip, node.port, now, now)
        if len(bucket) < self.k:
            self._insert(index, entry, now)
            return None
        bad = next((e for e in bucket if e.bad()), None)
        if bad is not None:
            self._remove(bad)
            self._insert(index, entry, now)
            return None
        self._add_replacement(index, entry)
        questionable = [e for e in bucket if not e.good(now)]
        return min(questionable, key=lambda e: e.last_seen) if questionable else None

    def seen(self, node_id: bytes, ip: str, port: int, now: float) -> bool:
        """A node in the table queried us: it is alive. Whether it is in the table."""
        entry = self.find(node_id)
        if entry is None or (entry.ip, entry.port) != (ip, port):
            return False
        entry.last_seen = now
        return True

    def failed(self, node_id: bytes, ip: str, port: int) -> None:
        """A query to the node went unanswered; a bad node gives way to a replacement."""
        entry = self.find(node_id)
        if entry is None or (entry.ip, entry.port) != (ip, port):
            return
        entry.failures += 1
        if entry.bad():
            index = self._index(node_id)
            waiting = self.replacements[index]
            if waiting:
                self._remove(entry)
                candidate = waiting.pop()  # the newest: it answered us most recently
                if candidate.ip not in self._by_ip or _shareable_ip(candidate.ip):
                    self._insert(index, candidate, candidate.last_answer)

    def would_take(self, node_id: bytes, ip: str, now: float) -> bool:
        """Whether an unknown node is worth a ping: its bucket has room or a bad entry."""
        if node_id == self.own_id or self.find(node_id) is not None:
            return False
        holder = self._by_ip.get(ip)
        if holder is not None and not holder.bad() and not _shareable_ip(ip):
            return False
        bucket = self.buckets[self._index(node_id)]
        return len(bucket) < self.k or any(e.bad() or not e.good(now) for e in bucket)

    # --- queries of the table ----------------------------------------------------------

    def closest(self, target: bytes, count: int = K) -> list[NodeInfo]:
        """The ``count`` known nodes nearest ``target``, bad ones left out."""
        t = int.from_bytes(target, "big")
        live = [e for e in self if not e.bad()]
        live.sort(key=lambda e: int.from_bytes(e.id, "big") ^ t)
        return [e.info for e in live[:count]]

    def stale_buckets(self, now: float, interval: float) -> list[int]:
        """Buckets not changed for ``interval`` s, up to the deepest one in use: refresh them."""
        used = [i for i, b in enumerate(self.buckets) if b]
        deepest = min(max(used, default=0) + 1, BUCKETS - 1)
        return [i for i in range(deepest + 1) if now - self.changed[i] >= interval]

    def good_count(self, now: float) -> int:
        return sum(1 for e in self if e.good(now))

    def nodes(self) -> list[NodeInfo]:
        return [e.info for e in self]

    def replacement_count(self) -> int:
        return sum(len(r) for r in self.replacements)

    # --- bookkeeping -------------------------------------------------------------------

    def _insert(self, index: int, entry: Entry, now: float) -> None:
        self.buckets[index].append(entry)
        self._by_ip[entry.ip] = entry
        self.changed[index] = now
        waiting = self.replacements[index]
        waiting[:] = [n for n in waiting if n.id != entry.id]

    def _remove(self, entry: Entry) -> None:
        index = self._index(entry.id)
        bucket = self.buckets[index]
        if entry in bucket:
            bucket.remove(entry)
        if self._by_ip.get(entry.ip) is entry:
            del self._by_ip[entry.ip]
            for other in self:  # a loopback address may hold several
                if other.ip == entry.ip:
                    self._by_ip[entry.ip] = other
                    break

    def _add_replacement(self, index: int, entry: Entry) -> None:
        waiting = self.replacements[index]
        waiting[:] = [n for n in waiting if n.id != entry.id and n.ip != entry.ip]
        waiting.append(entry)
        del waiting[: -self.replacements_per_bucket]
