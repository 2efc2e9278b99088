"""Other nodes' announces (BEP 5 ``announce_peer``), bounded: a DHT node is a citizen.

A node stores the peers announced to it and hands them out in ``get_peers`` replies.
What it stores is chosen by strangers, so every dimension has a cap and the oldest
entry gives way:

- at most :attr:`PeerStore.max_per_hash` peers per info hash, and at most
  :attr:`PeerStore.max_per_ip` of them from one IP address (so one host cannot push
  every other peer of a torrent out);
- at most :attr:`PeerStore.max_hashes` info hashes and :attr:`PeerStore.max_total`
  peers in all; when either is reached the least recently announced entry goes;
- an entry expires :attr:`PeerStore.ttl` seconds after its last announce (peers
  re-announce every 15 to 30 minutes).

Time is passed in, so the store is tested as plain data.
"""

from __future__ import annotations

import random
from collections import OrderedDict

__all__ = ["PeerStore"]

Peer = tuple[str, int]


class PeerStore:
    """Bounded announce storage (see the module docstring)."""

    def __init__(
        self,
        *,
        max_hashes: int = 2000,
        max_per_hash: int = 100,
        max_per_ip: int = 4,
        max_total: int = 20000,
        ttl: float = 45 * 60.0,
    ) -> None:
        self.max_hashes = max(1, max_hashes)
        self.max_per_hash = max_per_hash
        self.max_per_ip = max_per_ip
        self.max_total = max(1, max_total)
        self.ttl = ttl
        self._hashes: dict[bytes, dict[Peer, float]] = {}
        # every entry, least recently announced first: the order of eviction and expiry
        self._order: OrderedDict[tuple[bytes, Peer], float] = OrderedDict()
        #: entries dropped (expired or evicted by a cap)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._order)

    @property
    def hashes(self) -> int:
        return len(self._hashes)

    def announce(self, info_hash: bytes, peer: Peer, now: float) -> None:
        """Record (or refresh) ``peer`` for ``info_hash``, evicting what the caps demand."""
        self.expire(now)
        key = (info_hash, peer)
        peers = self._hashes.get(info_hash)
        if peers is not None and peer in peers:
            peers[peer] = now
            self._order[key] = now
            self._order.move_to_end(key)
            return
        if peers is None:
            while len(self._hashes) >= self.max_hashes:
                self._drop_hash(next(iter(self._order))[0])
            peers = self._hashes[info_hash] = {}
        same_ip = [p for p in peers if p[0] == peer[0]]
        if len(same_ip) >= self.max_per_ip:
            self._drop(info_hash, min(same_ip, key=peers.__getitem__))
        elif len(peers) >= self.max_per_hash:
            self._drop(info_hash, min(peers, key=peers.__getitem__))
        while len(self._order) >= self.max_total:
            old_hash, old_peer = next(iter(self._order))
            self._drop(old_hash, old_peer)
        if info_hash not in self._hashes:  # emptied by the evictions above
            self._hashes[info_hash] = peers
        peers[peer] = now
        self._order[key] = now

    def get(self, info_hash: bytes, now: float, limit: int = 50, rng=random) -> list[Peer]:
        """Up to ``limit`` live peers of ``info_hash``, a random choice when there are more."""
        peers = self._hashes.get(info_hash)
        if not peers:
            return []
        live = [p for p, t in peers.items() if now - t < self.ttl]
        if len(live) > limit:
            live = rng.sample(live, limit)
        return live

    def expire(self, now: float) -> None:
        """Drop entries whose last announce is older than the ttl (oldest first)."""
        while self._order:
            key, when = next(iter(self._order.items()))
            if now - when < self.ttl:
                break
            self._drop(*key)

    def _drop(self, info_hash: bytes, peer: Peer) -> None:
        self._order.pop((info_hash, peer), None)
        peers = self._hashes.get(info_hash)
        if peers is not None:
            peers.pop(peer, None)
            if not peers:
                del self._hashes[info_hash]
        self.dropped += 1

    def _drop_hash(self, info_hash: bytes) -> None:
        for peer in list(self._hashes.get(info_hash, ())):
            self._drop(info_hash, peer)
