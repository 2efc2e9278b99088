"""The choker: ranking by rate, the optimistic slot and its rotation."""

from __future__ import annotations

import random
from collections import Counter

from debtorrent.config import option
from debtorrent.torrent.choker import (
    ChokerSettings,
    OptimisticUnchoke,
    PeerSnapshot,
    free_slot_unchokes,
    unchoke,
)


def peer(name: str, down: float = 0, up: float = 0, **kw: bool) -> PeerSnapshot:
    return PeerSnapshot(
        name, interested=kw.pop("interested", True), download_rate=down, upload_rate=up, **kw
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: the rankings below are written for four slots
FOUR = ChokerSettings(upload_slots=4)

PEERS = [
    peer("a", down=50, up=1),
    peer("b", down=40, up=2),
    peer("c", down=30, up=30),
    peer("d", down=20, up=40),
    peer("e", down=10, up=50),
    peer("f", down=99, up=99, interested=False),
]


def test_leeching_ranks_by_download_rate() -> None:
    assert unchoke(PEERS, seeding=False, settings=FOUR) == {"a", "b", "c", "d"}
    assert unchoke(PEERS, seeding=False, settings=FOUR, optimistic="e") == {"a", "b", "c", "e"}


def test_seeding_ranks_by_upload_rate() -> None:
    assert unchoke(PEERS, seeding=True, settings=FOUR) == {"e", "d", "c", "b"}
    assert unchoke(PEERS, seeding=True, settings=FOUR, optimistic="a") == {"e", "d", "c", "a"}


def test_uninterested_peers_are_never_unchoked() -> None:
    assert "f" not in unchoke(PEERS, seeding=False, settings=FOUR, optimistic="f")
    assert unchoke([peer("x", interested=False)], seeding=False) == set()


def test_snubbed_peers_lose_their_regular_slot_but_not_when_seeding() -> None:
    peers = [peer("fast", down=100, snubbed=True), peer("slow", down=1)]
    assert unchoke(peers, seeding=False) == {"slow"}
    assert unchoke(peers, seeding=False, optimistic="fast") == {"fast", "slow"}
    assert unchoke(peers, seeding=True) == {"fast", "slow"}


def test_slots_setting() -> None:
    assert unchoke(PEERS, seeding=False, settings=ChokerSettings(upload_slots=2)) == {"a", "b"}
    assert unchoke(
        PEERS, seeding=False, settings=ChokerSettings(upload_slots=2), optimistic="e"
    ) == {"a", "e"}
    # One slot: no optimistic unchoke at all.
    assert unchoke(
        PEERS, seeding=False, settings=ChokerSettings(upload_slots=1), optimistic="e"
    ) == {"a"}
    assert unchoke(PEERS, seeding=False, settings=ChokerSettings(upload_slots=0)) == set()


def test_ties_keep_unchoked_peers_unchoked() -> None:
    peers = [peer(n, down=10, choked=n != "z") for n in "vwxyz"]
    assert "z" in unchoke(peers, seeding=False, settings=ChokerSettings(upload_slots=1))
    assert unchoke(peers, seeding=False, settings=ChokerSettings(upload_slots=1)) == {"z"}


def test_optimistic_rotates_every_interval() -> None:
    clock = Clock()
    opt = OptimisticUnchoke(FOUR, clock=clock, rng=random.Random(3))
    peers = [peer(n, down=100 - i) for i, n in enumerate("abcdefgh")]
    first = opt.update(peers, seeding=False)
    # Never one of the three that get regular slots anyway.
    assert first in set("defgh")
    clock.now += 29
    assert opt.update(peers, seeding=False) == first
    clock.now += 1
    second = opt.update(peers, seeding=False)
    assert second in set("defgh") - {first}
    unchoked = opt.run(peers, seeding=False)
    assert unchoked == {"a", "b", "c", second}


def test_optimistic_moves_when_its_peer_leaves_or_loses_interest() -> None:
    clock = Clock()
    opt = OptimisticUnchoke(FOUR, clock=clock, rng=random.Random(0))
    peers = [peer(n) for n in "abcdef"]
    first = opt.update(peers, seeding=False)
    rest = [p for p in peers if p.peer != first]
    assert opt.update(rest, seeding=False) not in (first, None)
    bored = [peer(p.peer, interested=p.peer != opt.current) for p in peers]
    previous = opt.current
    assert opt.update(bored, seeding=False) != previous


def test_optimistic_prefers_choked_peers_and_may_be_none() -> None:
    opt = OptimisticUnchoke(FOUR, clock=Clock(), rng=random.Random(0))
    peers = [peer("a", down=9), peer("b", down=8), peer("c", down=7)]
    peers += [peer("d", choked=False), peer("e")]
    assert opt.update(peers, seeding=False) == "e"
    assert OptimisticUnchoke(FOUR, clock=Clock()).update([], seeding=False) is None
    lonely = OptimisticUnchoke(FOUR, clock=Clock())
    assert lonely.update([peer("x", interested=False)], seeding=False) is None


def test_new_peers_are_three_times_as_likely() -> None:
    counts: Counter[str] = Counter()
    rng = random.Random(42)
    settings = ChokerSettings(upload_slots=1)  # no regular slots to exclude anyone
    peers = [peer("old1"), peer("old2"), peer("new", new=True)]
    for _ in range(3000):
        opt = OptimisticUnchoke(settings, clock=Clock(), rng=rng)
        counts[opt.update(peers, seeding=False)] += 1
    share = counts["new"] / 3000
    assert 0.5 < share < 0.7  # 3 / (1 + 1 + 3) = 0.6


def test_default_upload_slots_come_from_the_option_table() -> None:
    """One default, in the table: the choker once said 4 while --upload-slots said 8."""
    table = int(option("upload-slots").default)
    assert ChokerSettings().upload_slots == table
    assert OptimisticUnchoke().settings.upload_slots == table
    many = [peer(f"p{i}", down=i) for i in range(table + 3)]
    assert len(unchoke(many, seeding=False)) == table


def test_free_slots_go_to_waiting_interested_peers_between_rounds() -> None:
    """A peer that becomes interested is unchoked at once while slots are free,
    best-ranked first; with every slot taken it waits for the next round."""
    settings = ChokerSettings(upload_slots=3)
    peers = [
        peer("busy", down=5, choked=False),
        peer("slow", down=1),
        peer("fast", down=9),
        peer("idle", down=99, interested=False),
    ]
    assert free_slot_unchokes(peers, seeding=False, settings=settings) == ["fast", "slow"]
    full = [peer("u1", choked=False), peer("u2", choked=False), peer("u3", choked=False)]
    assert free_slot_unchokes([*full, peer("new")], seeding=False, settings=settings) == []


def test_free_slots_rank_by_upload_rate_when_seeding_and_take_snubbed_peers_last() -> None:
    settings = ChokerSettings(upload_slots=2)
    peers = [peer("a", up=1), peer("b", up=7), peer("s", down=50, snubbed=True)]
    assert free_slot_unchokes(peers, seeding=True, settings=settings) == ["b", "a"]
    assert free_slot_unchokes(peers, seeding=False, settings=settings) == ["a", "b"]
    only_snubbed = [peer("s", snubbed=True)]
    assert free_slot_unchokes(only_snubbed, seeding=False, settings=settings) == ["s"]
