"""Token buckets per source address, in a bounded table: a node's defence against floods.

Each source may send :attr:`RateLimiter.rate` queries per second with bursts of
:attr:`RateLimiter.burst`; a query over the limit is dropped unanswered (and counted by
the caller). The table holds at most :attr:`RateLimiter.max_sources` sources; when a new
one arrives in a full table the least recently seen goes, so a flood from many spoofed
addresses costs bounded memory. A global bucket caps the total, whatever the number of
sources. Time is passed in.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RateLimiter"]


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp

    def take(self, rate: float, burst: float, now: float) -> bool:
        self.level = min(burst, self.level + (now - self.stamp) * rate)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False


class RateLimiter:
    """Per-source and global token buckets (see the module docstring)."""

    def __init__(
        self,
        rate: float = 20.0,
        burst: float = 40.0,
        *,
        global_rate: float = 1000.0,
        global_burst: float = 2000.0,
        max_sources: int = 4096,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.global_rate = global_rate
        self.global_burst = global_burst
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._global: _Bucket | None = None

    def __len__(self) -> int:
        return len(self._sources)

    def allow(self, source: str, now: float) -> bool:
        """Whether one more query from ``source`` may be answered now."""
        bucket = self._sources.get(source)
        if bucket is None:
            while len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
            bucket = self._sources[source] = _Bucket(self.burst, now)
        else:
            self._sources.move_to_end(source)
        if not bucket.take(self.rate, self.burst, now):
            return False
        if self._global is None:
            self._global = _Bucket(self.global_burst, now)
        return self._global.take(self.global_rate, self.global_burst, now)
