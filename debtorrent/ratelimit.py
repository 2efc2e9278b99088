"""Token buckets for the rate limits, and a limiter for repetitive log lines.

Pure: no gevent, no sockets, no clock of its own (every call takes ``now``), so the
arithmetic is tested as plain functions. The callers sleep what :meth:`TokenBucket.take`
tells them to, on their own greenlet:

- ``--upload-rate``: the peer uploader, before it reads a block to send;
- ``--download-rate``: the peer reader, after each ``recv``, before the next one (the
  kernel's receive window then slows the sender: nothing is dropped);
- ``--mirror-rate``: the mirror body reader, after each chunk (HTTP seed and direct
  fetches alike).

A bucket holds at most ``burst`` bytes of credit and refills at ``rate`` bytes per
second. A caller takes what it moves at once, even more than the credit, and sleeps off
the debt: many greenlets sharing one bucket then move ``rate`` bytes per second
together, each waiting its turn in the order it asked, as libtorrent's bandwidth
manager queues its channels. A rate of 0 means no limit (``take`` returns 0 at once).

Each bucket also measures what went through it (bytes per second over the last few
seconds), limited or not: the status page shows that beside the limit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["LogLimiter", "RateLimits", "RateMeter", "TokenBucket"]

#: Seconds of credit a bucket may save up (at least :data:`MIN_BURST` bytes).
BURST_SECONDS = 0.25
#: Smallest burst: one 16 KiB block plus a 64 KiB read, so no single move waits twice.
MIN_BURST = 81920
#: Seconds over which :class:`RateMeter` averages.
METER_WINDOW = 5.0


class RateMeter:
    """Bytes per second over the last :data:`METER_WINDOW` seconds (exponential decay)."""

    __slots__ = ("_last", "_rate", "total")

    def __init__(self) -> None:
        self._rate = 0.0
        self._last: float | None = None
        self.total = 0

    def add(self, amount: int, now: float) -> None:
        self._decay(now)
        self._rate += amount / METER_WINDOW
        self.total += amount

    def _decay(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._rate *= max(0.0, 1.0 - (now - self._last) / METER_WINDOW)
        if self._last is None or now > self._last:
            self._last = now

    def rate(self, now: float) -> float:
        self._decay(now)
        return self._rate


@dataclass
class TokenBucket:
    """``rate`` bytes per second with up to ``burst`` bytes saved; 0 is no limit."""

    rate: float = 0.0
    burst: float = 0.0
    tokens: float = 0.0
    stamp: float | None = None
    meter: RateMeter = field(default_factory=RateMeter)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError("rate must be >= 0")
        if not self.burst:
            self.burst = max(self.rate * BURST_SECONDS, MIN_BURST)
        self.tokens = self.burst

    @property
    def limited(self) -> bool:
        return self.rate > 0

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now

    def take(self, amount: int, now: float) -> float:
        """Spend ``amount`` bytes now; the seconds to sleep before moving more."""
        self.meter.add(amount, now)
        if not self.limited:
            return 0.0
        self._refill(now)
        self.tokens -= amount
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def current(self, now: float) -> float:
        """Bytes per second that went through lately."""
        return self.meter.rate(now)


@dataclass
class RateLimits:
    """The three buckets of one daemon (``--upload-rate``, ``--download-rate``,
    ``--mirror-rate``), shared by every swarm and every download."""

    upload: TokenBucket = field(default_factory=TokenBucket)
    download: TokenBucket = field(default_factory=TokenBucket)
    mirror: TokenBucket = field(default_factory=TokenBucket)

    @classmethod
    def of(cls, upload: float = 0.0, download: float = 0.0, mirror: float = 0.0) -> RateLimits:
        return cls(TokenBucket(upload), TokenBucket(download), TokenBucket(mirror))

    def snapshot(self, now: float) -> dict[str, dict[str, float | None]]:
        """``{name: {"rate": bytes/s now, "limit": bytes/s or None}}`` for the status."""
        return {
            name: {
                "rate": round(bucket.current(now)),
                "limit": bucket.rate if bucket.limited else None,
            }
            for name, bucket in (
                ("upload", self.upload),
                ("download", self.download),
                ("mirror", self.mirror),
            )
        }


class LogLimiter:
    """One log line per key (a client address) per ``interval`` seconds.

    :meth:`allow` says whether to log now and how many were held back since the last
    line; the keys kept are bounded (least recently seen forgotten first), so a flood
    from many addresses costs memory for at most ``max_keys`` of them.
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. A number: log now, mentioning that many held back."""
        last = self._seen.pop(key, None)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        self._seen[key] = (now, 0)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return last[1] if last is not None else 0
