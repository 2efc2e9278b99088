"""The checkpoint: what must survive a restart that the cache itself does not say.

Complete files need no checkpoint (a file is in the cache only once verified, and
swarms rescan the cache at start). What the cache cannot tell is history: the
all-time byte counters the status page shows. They are written atomically (temporary
file, fsync, rename) every minute and at shutdown; a file that does not parse or does
not hold what it should is logged, set aside, and replaced, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from debtorrent import offload

__all__ = ["State"]

log = logging.getLogger(__name__)

FORMAT = 1


class State:
    """All-time counters kept in ``<state_dir>/state.json``."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "state.json"
        self.base: Counter[str] = Counter()

    def load(self) -> None:
        """Read the last checkpoint; a missing file is a first start, a bad one is set aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s; counters start from zero", self.path, exc)
            return
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("unknown format")
            counters = data["counters"]
            if not isinstance(counters, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in counters.items()
            ):
                raise ValueError("counters are not non-negative integers")
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_suffix(".corrupt")
            log.warning(
                "%s is corrupt (%s); moved to %s, counters start from zero",
                self.path,
                exc,
                aside.name,
            )
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            return
        self.base = Counter(counters)

    def totals(self, current: Counter[str]) -> Counter[str]:
        """All-time counters: the checkpointed ones plus this run's."""
        return self.base + current

    def save(self, current: Counter[str]) -> None:
        """Write the all-time counters atomically; failures are logged, not raised."""
        data = {"format": FORMAT, "saved": int(time.time()), "counters": dict(self.totals(current))}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(data, handle, sort_keys=True)
                    handle.flush()
                    offload.fsync(handle.fileno())  # a slow disk must not stall the hub
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
