"""The peer list of one swarm: every address we could dial, and what became of it.

Addresses come from trackers, the DHT, local service discovery, PEX and ``--peer``
(the *source* of each is kept, and the connection made from it carries it). Without a
list, an address over the connection caps was forgotten until the next announce, up to
an hour later; with it, the next candidate is dialled as soon as a slot frees up. This
follows libtorrent's ``peer_list``:

- a candidate that cannot be reached gets a failure count and waits
  ``retry.delay(failures)`` before the next attempt; after ``max_failures`` failures in
  a row it is dropped, until a source names it again. Static peers (``--peer``) are
  never dropped, and back off less (``static_retry``);
- a connection that worked and ended may be dialled again after ``retry.base``;
- the list is bounded (``max_candidates``): when full, the candidate with the most
  failures (then the oldest) makes room; one being dialled, connected or static never;
- :meth:`PeerList.pick` hands out the candidates due, fewest failures first, then by
  source (static, then local discovery, then the rest), then least recently tried.

Pure: no sockets, no gevent; time is passed in by the caller (the session), so the
tests step a clock by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from debtorrent.policy import DialPolicy

__all__ = ["CANDIDATE_SOURCES", "Candidate", "PeerList"]

Address = tuple[str, int]

#: The sources a candidate may come from, in the order they are preferred.
CANDIDATE_SOURCES = ("static", "lsd", "tracker", "dht", "pex")
_RANK = {source: rank for rank, source in enumerate(CANDIDATE_SOURCES)}


@dataclass(slots=True)
class Candidate:
    """One address we may dial, with its history."""

    address: Address
    source: str
    added: float
    failures: int = 0
    next_try: float = 0.0  #: not dialled before this time
    last_try: float = float("-inf")
    dialing: bool = False
    connected: bool = False

    @property
    def static(self) -> bool:
        return self.source == "static"

    @property
    def busy(self) -> bool:
        return self.dialing or self.connected


class PeerList:
    """The candidates of one swarm (see the module docstring)."""

    def __init__(self, policy: DialPolicy | None = None) -> None:
        self.policy = policy or DialPolicy()
        self._candidates: dict[Address, Candidate] = {}
        #: candidates dropped after too many failures (for the status page)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._candidates)

    def __contains__(self, address: object) -> bool:
        return address in self._candidates

    def __iter__(self) -> Iterator[Candidate]:
        return iter(list(self._candidates.values()))

    def get(self, address: Address) -> Candidate | None:
        return self._candidates.get(address)

    def add(self, address: Address, source: str, now: float) -> bool:
        """A source named *address*; True if it is new to the list.

        A known address keeps its history (a tracker repeating a dead peer at every
        announce must not reset its back-off); only ``static`` upgrades its source.
        """
        if source not in _RANK:
            raise ValueError(f"unknown peer source {source!r}")
        known = self._candidates.get(address)
        if known is not None:
            if source == "static" and not known.static:
                known.source = source
            return False
        if len(self._candidates) >= self.policy.max_candidates and not self._make_room():
            return False
        self._candidates[address] = Candidate(address, source, now)
        return True

    def add_all(self, addresses: Iterable[Address], source: str, now: float) -> int:
        """Add several addresses from one source; how many were new."""
        return sum(self.add(address, source, now) for address in addresses)

    def _make_room(self) -> bool:
        evictable = [c for c in self._candidates.values() if not c.busy and not c.static]
        if not evictable:
            return False
        worst = max(evictable, key=lambda c: (c.failures, -c.added))
        del self._candidates[worst.address]
        return True

    def remove(self, address: Address) -> None:
        self._candidates.pop(address, None)

    def remove_ip(self, ip: str) -> None:
        """Forget every candidate at *ip* (it was banned)."""
        for address in [a for a in self._candidates if a[0] == ip]:
            del self._candidates[address]

    # --- dialling -------------------------------------------------------------------------

    def due(self, now: float) -> int:
        """How many candidates could be dialled now."""
        return sum(1 for c in self._candidates.values() if not c.busy and c.next_try <= now)

    def pick(
        self, n: int, now: float, skip: Callable[[Address], bool] | None = None
    ) -> list[Candidate]:
        """Up to *n* candidates to dial now, marked as being dialled.

        *skip* leaves out addresses the caller knows it cannot or must not dial now
        (banned, already connected by an incoming connection).
        """
        if n <= 0:
            return []
        ready = [
            c
            for c in self._candidates.values()
            if not c.busy and c.next_try <= now and (skip is None or not skip(c.address))
        ]
        ready.sort(key=lambda c: (c.failures, _RANK[c.source], c.last_try))
        chosen = ready[:n]
        for candidate in chosen:
            candidate.dialing = True
            candidate.last_try = now
        return chosen

    def failed(self, address: Address, now: float) -> None:
        """A dial (or the handshake after it) failed: back off, or drop the candidate."""
        candidate = self._candidates.get(address)
        if candidate is None:
            return
        candidate.dialing = candidate.connected = False
        candidate.failures += 1
        if not candidate.static and candidate.failures >= self.policy.max_failures:
            del self._candidates[address]
            self.dropped += 1
            return
        backoff = self.policy.static_retry if candidate.static else self.policy.retry
        candidate.next_try = now + backoff.delay(candidate.failures)

    def connected(self, address: Address) -> None:
        """A connection to *address* is up (dialled by us, or the peer dialled us and
        told us its listen port): not dialled while it lasts; its failures are forgiven."""
        candidate = self._candidates.get(address)
        if candidate is not None:
            candidate.dialing = False
            candidate.connected = True
            candidate.failures = 0

    def disconnected(self, address: Address, now: float) -> None:
        """A connection that worked ended: the address may be dialled again later."""
        candidate = self._candidates.get(address)
        if candidate is None:
            return
        candidate.dialing = candidate.connected = False
        backoff = self.policy.static_retry if candidate.static else self.policy.retry
        candidate.next_try = now + backoff.base

    def counts(self) -> dict[str, int]:
        """Candidates by source (for the status page)."""
        out: dict[str, int] = {}
        for candidate in self._candidates.values():
            out[candidate.source] = out.get(candidate.source, 0) + 1
        return out
