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

__all__ = ["BUSY_WINDOW", "CLAIM_SETTLE", "Claim", "Claims", "winner"]

CLAIM_SETTLE = 0.05  # seconds a mirror fetch waits after its claim when peers may claim too
BUSY_WINDOW = 5.0  # seconds after a peer's last claim that the fleet counts as fetching


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

    def busy(self, within: float = BUSY_WINDOW) -> bool:
        """Whether a peer claimed some file in the last *within* seconds: the fleet is
        fetching from the mirror right now, so a claim of ours may meet one of theirs
        and is worth :data:`CLAIM_SETTLE` before the first byte (an idle fleet is not
        made to wait)."""
        return self._clock() - self._last_claim < within

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
