"""Who may download from us: the choker, a pure function over peer snapshots.

Tit-for-tat as BitTorrent clients have done it since BEP 3: every round (the swarm runs
it every 10 s) the interested peers are ranked and the best ``slots - 1`` are unchoked,
plus one *optimistic* unchoke, a peer given a chance regardless of rate so that new
peers can prove themselves and better partners can be found.

- **Leeching** (we still want pieces): ranked by how fast they send to us; snubbed peers
  (nothing received from them for a while, as the connection decides) get no regular slot.
- **Seeding** (every enabled file complete): ranked by how fast we send to them, which
  spreads our upload to those who take it fastest rather than rewarding nothing.

Ties keep currently unchoked peers unchoked (fewer choke/unchoke flips), then follow the
input order, so a given input always gives the same answer.

The optimistic slot is kept by :class:`OptimisticUnchoke`, a small state object with an
injectable clock and RNG: it moves every :attr:`OptimisticUnchoke.interval` seconds
(30 s) or as soon as its peer leaves or loses interest, to a random choked interested
peer, newly connected peers weighted three times, as mainline BitTorrent did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from random import Random

from debtorrent.config import default

__all__ = ["ChokerSettings", "OptimisticUnchoke", "PeerSnapshot", "free_slot_unchokes", "unchoke"]


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """What the choker needs to know of one peer, taken at the start of a round.

    Rates are bytes per second, averaged by the caller (20 s is customary).
    """

    peer: Hashable
    interested: bool  #: the peer wants something we have
    download_rate: float = 0.0  #: from the peer to us
    upload_rate: float = 0.0  #: from us to the peer
    choked: bool = True  #: we currently choke it
    snubbed: bool = False  #: it has sent us nothing for a while despite requests
    new: bool = False  #: connected recently (weighted up for the optimistic slot)


@dataclass(frozen=True, slots=True)
class ChokerSettings:
    """Tunables of the choker; the upload slots default to the option table's."""

    #: peers unchoked at once, the optimistic one included (``--upload-slots``)
    upload_slots: int = field(default_factory=lambda: default("upload-slots"))
    #: seconds between optimistic unchoke rotations
    optimistic_interval: float = 30.0
    #: weight of a newly connected peer when drawing the optimistic unchoke
    new_peer_weight: int = 3


def _ranked(peers: Sequence[PeerSnapshot], seeding: bool) -> list[PeerSnapshot]:
    eligible = [p for p in peers if p.interested and (seeding or not p.snubbed)]
    if seeding:
        return sorted(eligible, key=lambda p: (-p.upload_rate, p.choked))
    return sorted(eligible, key=lambda p: (-p.download_rate, p.choked))


def unchoke(
    peers: Sequence[PeerSnapshot],
    *,
    seeding: bool,
    settings: ChokerSettings | None = None,
    optimistic: Hashable | None = None,
) -> set[Hashable]:
    """The set of peers to unchoke this round; every other peer is choked.

    The ``upload_slots - 1`` best-ranked interested peers, plus *optimistic* if it is an
    interested peer. When there is no optimistic peer, or it already ranks among the
    best, its slot goes to the next in the ranking instead of staying empty. With one
    slot there is no optimistic unchoke.
    """
    slots = (settings or ChokerSettings()).upload_slots
    chosen: set[Hashable] = set()
    if slots <= 0:
        return chosen
    if slots > 1 and optimistic is not None:
        opt = next((p for p in peers if p.peer == optimistic), None)
        if opt is not None and opt.interested:
            chosen.add(optimistic)
    for p in _ranked(peers, seeding):
        if len(chosen) >= slots:
            break
        chosen.add(p.peer)
    return chosen


def free_slot_unchokes(
    peers: Sequence[PeerSnapshot], *, seeding: bool, settings: ChokerSettings | None = None
) -> list[Hashable]:
    """Choked interested peers to unchoke now, between rounds, because slots are free.

    A peer that becomes interested should not wait up to a whole round for data while
    upload slots stand empty (libtorrent unchokes it at once too): apt is waiting on
    the other side. Free slots go to the best-ranked choked interested peers; the next
    round re-ranks everyone as usual.
    """
    slots = (settings or ChokerSettings()).upload_slots
    free = slots - sum(1 for p in peers if not p.choked)
    if free <= 0:
        return []
    ranked = [p.peer for p in _ranked(peers, seeding) if p.choked]
    # snubbed peers rank nowhere, but an empty slot is theirs rather than nobody's
    ranked += [p.peer for p in peers if p.choked and p.interested and p.peer not in ranked]
    return ranked[:free]


class OptimisticUnchoke:
    """Holds the optimistic unchoke and decides when it moves on."""

    def __init__(
        self,
        settings: ChokerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Random | None = None,
    ) -> None:
        self.settings = settings or ChokerSettings()
        self.clock = clock
        self.rng = rng if rng is not None else Random()
        #: the peer holding the optimistic slot, or None
        self.current: Hashable | None = None
        self._since = 0.0

    def update(self, peers: Sequence[PeerSnapshot], *, seeding: bool) -> Hashable | None:
        """Return the optimistic peer for this round, rotating it when due.

        It stays for :attr:`ChokerSettings.optimistic_interval` seconds unless it left
        or lost interest. The next one is drawn among interested peers that would not
        get a regular slot anyway, preferring choked ones, newcomers weighted up.
        """
        now = self.clock()
        by_id = {p.peer: p for p in peers}
        current = by_id.get(self.current) if self.current is not None else None
        due = now - self._since >= self.settings.optimistic_interval
        if current is not None and current.interested and not due:
            return self.current
        regular = self.settings.upload_slots - 1
        top = {p.peer for p in _ranked(peers, seeding)[: max(regular, 0)]}
        pool = [p for p in peers if p.interested and p.peer not in top and p.peer != self.current]
        if not pool and current is not None and current.interested:
            pool = [current]  # nobody else to try: keep it
        choked = [p for p in pool if p.choked]
        pool = choked or pool
        if not pool:
            self.current = None
            return None
        weights = [self.settings.new_peer_weight if p.new else 1 for p in pool]
        self.current = self.rng.choices(pool, weights=weights)[0].peer
        self._since = now
        return self.current

    def run(self, peers: Sequence[PeerSnapshot], *, seeding: bool) -> set[Hashable]:
        """One choking round: rotate the optimistic slot if due, then :func:`unchoke`."""
        optimistic = self.update(peers, seeding=seeding)
        return unchoke(peers, seeding=seeding, settings=self.settings, optimistic=optimistic)
