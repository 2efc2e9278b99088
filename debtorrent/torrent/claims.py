"""Who fetches a file from the mirror: claims announced with ``dt_fetching``.

A fleet should pull each file from the mirror once, even when every machine asks for
it at the same moment. A daemon that starts a mirror fetch tells its peers (``started``
with its clock in milliseconds); peers wanting the same file wait for its pieces instead
of fetching it too. Two daemons that start at once both see both claims and keep the
same one, the earliest start, then the lowest peer id, with no further round trip; the
other stops (or, when it waited :data:`CLAIM_SETTLE` before its first request, never
fetched a byte). Files are the swarm's numbers; peers any hashable object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple

__all__ = ["BUSY_WINDOW", "CLAIM_SETTLE", "CLAIM_SETTLE_BUSY", "Claim", "Claims", "winner"]

#: seconds a mirror fetch waits after its claim, when peers are connected, for a claim
#: sent at the same moment to cross it: a LAN's round trip many times over, or longer
#: while the fleet is fetching (a peer claimed a file in the last BUSY_WINDOW seconds)
CLAIM_SETTLE = 0.01
CLAIM_SETTLE_BUSY = 0.05
BUSY_WINDOW = 5.0


class Claim(NamedTuple):
    """One daemon's claim to fetch a file from the mirror."""

    started_ms: int
    peer_id: bytes


def winner(claims: Iterable[Claim]) -> Claim:
    """The claim that keeps fetching: the earliest start, then the lowest peer id."""
    try:
        return min(claims)
    except ValueError:
        raise ValueError("winner() needs at least one claim") from None


class Claims:
    """The peers that said they fetch a file from the mirror, per file."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_file: dict[int, dict[Hashable, int]] = {}
        self._clock = clock
        self._last_claim = float("-inf")

    def started(self, file: int, peer: Hashable, started_ms: int) -> None:
        self._by_file.setdefault(file, {})[peer] = started_ms
        self._last_claim = self._clock()

    def settle(self) -> float:
        """Seconds a new fetch of ours waits after its claim: longer while the fleet is
        fetching from the mirror (a peer claimed a file in the last
        :data:`BUSY_WINDOW` seconds), when claims of ours are most likely to meet one of
        theirs and the machines are busiest; short otherwise, so a lone install is
        hardly slowed."""
        if self._clock() - self._last_claim < BUSY_WINDOW:
            return CLAIM_SETTLE_BUSY
        return CLAIM_SETTLE

    def ended(self, file: int, peer: Hashable) -> None:
        fetching = self._by_file.get(file)
        if fetching is not None:
            fetching.pop(peer, None)
            if not fetching:
                del self._by_file[file]

    def fetching(self, file: int) -> bool:
        """Whether some connected peer fetches *file* from the mirror now."""
        return bool(self._by_file.get(file))

    def peer_gone(self, peer: Hashable) -> None:
        for file in list(self._by_file):
            self.ended(file, peer)

    def we_yield(self, ours: Claim, theirs: Claim) -> bool:
        """Whether our fetch stops for theirs."""
        return winner([ours, theirs]) is not ours
