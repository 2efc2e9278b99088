"""An iterative lookup (Kademlia, BEP 5) as a state machine: the node drives it, no I/O here.

A lookup of ``target`` starts from the closest nodes we know (or the bootstrap nodes,
whose ids we do not know yet) and repeatedly queries the closest candidates it has not
asked, at most ``alpha`` at a time, adding the nodes every reply names. It ends when no
unasked candidate is closer than the ``k``-th closest node that answered, and nothing
is in flight; or after ``max_queries`` queries, so a hostile network that keeps naming
fresh nodes cannot keep it going. A ``get_peers`` lookup also gathers the peers
(``values``) replies carry (bounded) and the token each answering node gave, which
``announce_peer`` needs.

Candidates are keyed by address: a reply names a node by id and address, and a node
answering with another id than we were told is taken at its word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from debtorrent.torrent.dht.compact import NodeInfo
from debtorrent.torrent.dht.routing import K, distance

__all__ = ["ALPHA", "Lookup"]

#: Queries in flight at once (libtorrent uses 3 to 5).
ALPHA = 4

_QUEUED, _IN_FLIGHT, _ANSWERED, _FAILED = range(4)


@dataclass(slots=True)
class _Candidate:
    node: NodeInfo
    state: int = _QUEUED
    token: bytes | None = None
    key: int = 0  # XOR distance to the target (0 while the id is unknown: ask first)


class Lookup:
    """One lookup (see the module docstring)."""

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[NodeInfo],
        *,
        own_id: bytes = b"",
        k: int = K,
        alpha: int = ALPHA,
        max_candidates: int = 64,
        max_queries: int = 100,
        max_values: int = 1000,
    ) -> None:
        self.target = target
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.max_candidates = max_candidates
        self.max_queries = max_queries
        self.max_values = max_values
        self.queries = 0
        self.values: dict[tuple[str, int], None] = {}
        self._candidates: dict[tuple[str, int], _Candidate] = {}
        for node in seeds:
            self._add(node)

    # --- what to do next ---------------------------------------------------------------

    def next_queries(self) -> list[NodeInfo]:
        """Nodes to query now, closest first; marks them in flight."""
        out: list[NodeInfo] = []
        in_flight = sum(1 for c in self._candidates.values() if c.state == _IN_FLIGHT)
        while in_flight < self.alpha and self.queries < self.max_queries:
            candidate = self._closest_worth_asking()
            if candidate is None:
                break
            candidate.state = _IN_FLIGHT
            self.queries += 1
            in_flight += 1
            out.append(candidate.node)
        return out

    @property
    def done(self) -> bool:
        if any(c.state == _IN_FLIGHT for c in self._candidates.values()):
            return False
        return self.queries >= self.max_queries or self._closest_worth_asking() is None

    def _closest_worth_asking(self) -> _Candidate | None:
        answered = sorted(c.key for c in self._candidates.values() if c.state == _ANSWERED)
        bound = answered[self.k - 1] if len(answered) >= self.k else None
        queued = [c for c in self._candidates.values() if c.state == _QUEUED]
        if not queued:
            return None
        best = min(queued, key=lambda c: c.key)
        if bound is not None and best.key >= bound:
            return None
        return best

    # --- what the network said ---------------------------------------------------------

    def on_reply(
        self,
        address: tuple[str, int],
        node_id: bytes,
        nodes: Iterable[NodeInfo] = (),
        values: Iterable[tuple[str, int]] = (),
        token: bytes | None = None,
    ) -> None:
        """The node at ``address`` answered with its id, nodes, peers and a token."""
        candidate = self._candidates.get(address)
        if candidate is None or candidate.state != _IN_FLIGHT:
            return
        candidate.state = _ANSWERED
        candidate.node = NodeInfo(node_id, address[0], address[1])
        candidate.key = distance(node_id, self.target)
        candidate.token = token
        for peer in values:
            if len(self.values) >= self.max_values:
                break
            self.values[peer] = None
        for node in nodes:
            self._add(node)

    def on_failure(self, address: tuple[str, int]) -> None:
        """The node at ``address`` did not answer (or answered with an error)."""
        candidate = self._candidates.get(address)
        if candidate is not None and candidate.state == _IN_FLIGHT:
            candidate.state = _FAILED

    # --- results ---------------------------------------------------------------------------

    def closest(self, count: int | None = None) -> list[tuple[NodeInfo, bytes | None]]:
        """The closest nodes that answered, with the token each gave."""
        answered = [c for c in self._candidates.values() if c.state == _ANSWERED]
        answered.sort(key=lambda c: c.key)
        return [(c.node, c.token) for c in answered[: count or self.k]]

    @property
    def peers(self) -> list[tuple[str, int]]:
        return list(self.values)

    # --- bookkeeping ----------------------------------------------------------------------

    def _add(self, node: NodeInfo) -> None:
        if node.id and node.id == self.own_id:
            return
        address = (node.ip, node.port)
        if address in self._candidates:
            return
        key = distance(node.id, self.target) if len(node.id) == len(self.target) else 0
        self._candidates[address] = _Candidate(node, key=key)
        queued = [c for c in self._candidates.values() if c.state == _QUEUED]
        if len(queued) > self.max_candidates:
            farthest = max(queued, key=lambda c: c.key)
            del self._candidates[(farthest.node.ip, farthest.node.port)]
