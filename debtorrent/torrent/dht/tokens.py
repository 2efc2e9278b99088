"""Announce tokens (BEP 5): proof that an announcing node asked us first, from its address.

A ``get_peers`` reply carries a token; ``announce_peer`` must bring it back from the
same IP address. The token is a keyed hash of the address under a secret that
rotates every :attr:`Tokens.interval` seconds; a token of the current or the previous
secret is accepted, so a token stays good for 5 to 10 minutes and no per-node state is
kept. Time and randomness are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

__all__ = ["TOKEN_LEN", "Tokens"]

TOKEN_LEN = 8


class Tokens:
    """Issue and check announce tokens (see the module docstring)."""

    def __init__(
        self, interval: float = 300.0, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.interval = interval
        self._random = random_bytes
        self._current = random_bytes(16)
        self._previous = random_bytes(16)
        self._rotated = float("-inf")

    def _rotate(self, now: float) -> None:
        if self._rotated == float("-inf"):
            self._rotated = now
        elif now - self._rotated >= self.interval:
            # a gap of two intervals or more leaves no valid previous secret
            stale = now - self._rotated >= 2 * self.interval
            self._previous = self._random(16) if stale else self._current
            self._current = self._random(16)
            self._rotated = now

    @staticmethod
    def _make(secret: bytes, ip: str) -> bytes:
        return hmac.new(secret, ip.encode("ascii", "replace"), hashlib.sha1).digest()[:TOKEN_LEN]

    def issue(self, ip: str, now: float) -> bytes:
        """The token for a node at ``ip``."""
        self._rotate(now)
        return self._make(self._current, ip)

    def check(self, token: bytes, ip: str, now: float) -> bool:
        """Whether ``token`` was issued to ``ip`` under the current or previous secret."""
        self._rotate(now)
        return any(
            hmac.compare_digest(token, self._make(secret, ip))
            for secret in (self._current, self._previous)
        )
