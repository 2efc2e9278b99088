"""Swarm keys: a shared secret that scopes a fleet to itself (``--swarm-key FILE``).

Two things follow from the key:

1. every info hash changes (:func:`~debtorrent.torrent.metainfo.keyed_info_hash`), so
   daemons without the key never look for, announce or accept the same swarms;
2. a connection must *prove* the key before anything of the swarm is sent, since an
   info hash can be overheard (LSD announces are multicast on the LAN). Both sides put
   a fresh random nonce in their BEP 10 extension handshake (key ``dt_swarm_nonce``,
   and ``dt_swarmkey`` in ``m``); each answers the other's nonce with a
   ``dt_swarmkey`` message holding ``proof`` = HMAC-SHA256 over the info hash, the
   verifier's nonce, the prover's nonce, the verifier's peer id and the prover's peer
   id. The verifier checks it against its own nonce. Until the proof checks out, the
   connection carries nothing but the handshakes and the proof (no bitfield, no have,
   no request, no piece, no PEX), and a connection without a valid proof within the
   handshake time is closed.

Binding both nonces and both peer ids means a proof cannot be replayed on another
connection nor reflected back to the daemon that issued the nonce (a daemon refuses a
peer claiming its own peer id). The key authenticates members; it does not encrypt:
traffic between members can be read on the path, and someone able to relay a member's
connection live could pass for that member. The file holds any bytes (leading and
trailing white space ignored), at least 16 of them: for example
``head -c 32 /dev/urandom | base64 > /etc/debtorrent/swarm.key``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

from debtorrent.errors import ConfigError, PeerError
from debtorrent.torrent import wire
from debtorrent.torrent.metainfo import keyed_info_hash

__all__ = ["MIN_KEY_BYTES", "NONCE_LEN", "KeyGate", "SwarmKey", "load_swarm_key"]

MIN_KEY_BYTES = 16
NONCE_LEN = 16
NONCE_FIELD = "dt_swarm_nonce"
DT_SWARMKEY = wire.DT_SWARMKEY


def load_swarm_key(path: str) -> bytes:
    """The secret derived from the key file; :class:`ConfigError` if it cannot be used."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1 << 16).strip()
    except OSError as exc:
        raise ConfigError("swarm-key", f"{path}: {exc.strerror or exc}") from None
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigError(
            "swarm-key",
            f"{path} holds {len(raw)} bytes; use at least {MIN_KEY_BYTES} random ones "
            "(head -c 32 /dev/urandom | base64)",
        )
    return hashlib.sha256(b"debtorrent swarm key\0" + raw).digest()


class SwarmKey:
    """A loaded key: keyed info hashes, nonces and proofs."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def info_hash(self, info_hash: bytes) -> bytes:
        return keyed_info_hash(info_hash, self.secret)

    @staticmethod
    def nonce() -> bytes:
        return os.urandom(NONCE_LEN)

    def proof(
        self,
        info_hash: bytes,
        verifier_nonce: bytes,
        prover_nonce: bytes,
        verifier_id: bytes,
        prover_id: bytes,
    ) -> bytes:
        parts = (info_hash, verifier_nonce, prover_nonce, verifier_id, prover_id)
        data = b"debtorrent swarm proof\0" + b"".join(parts)
        return hmac.new(self.secret, data, hashlib.sha256).digest()


class KeyGate:
    """One connection's proof exchange (see the module docstring).

    The connection asks :meth:`may_send` / :meth:`may_receive` for each message while
    :attr:`proven` is false, adds :meth:`handshake_fields` to its extension handshake,
    hands the peer's handshake payload to :meth:`on_handshake` (which returns the proof
    payload to send) and the peer's ``dt_swarmkey`` payload to :meth:`on_proof`.
    """

    def __init__(self, key: SwarmKey, info_hash: bytes, own_id: bytes) -> None:
        self.key = key
        self.info_hash = info_hash
        self.own_id = own_id
        self.peer_id = b""
        self.nonce = key.nonce()
        self.peer_nonce: bytes | None = None
        self.proven = False

    def handshake_fields(self) -> dict[str, Any]:
        return {NONCE_FIELD: self.nonce}

    def on_handshake(self, payload: Mapping[bytes, Any], peer_id: bytes) -> dict[str, bytes]:
        """The peer's extension handshake: its nonce. Returns our proof's payload."""
        nonce = payload.get(NONCE_FIELD.encode())
        m = payload.get(b"m")
        if not isinstance(m, Mapping) or not m.get(DT_SWARMKEY.encode()):
            raise PeerError("peer does not use a swarm key")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN or nonce == self.nonce:
            raise PeerError("peer sent no usable swarm key nonce")
        if self.peer_nonce is not None:
            raise PeerError("second extension handshake during the swarm key exchange")
        self.peer_nonce = nonce
        self.peer_id = peer_id
        proof = self.key.proof(self.info_hash, nonce, self.nonce, peer_id, self.own_id)
        return {"proof": proof}

    def on_proof(self, payload: Mapping[bytes, Any]) -> None:
        """The peer's proof; :class:`PeerError` unless it matches our nonce."""
        if self.peer_nonce is None:
            raise PeerError("swarm key proof before the extension handshake")
        if not self.peer_id or self.peer_id == self.own_id:
            raise PeerError("swarm key proof from a peer claiming our own id")
        proof = payload.get(b"proof")
        expected = self.key.proof(
            self.info_hash, self.nonce, self.peer_nonce, self.own_id, self.peer_id
        )
        if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
            raise PeerError("wrong swarm key proof")
        self.proven = True

    @staticmethod
    def may_send(message: Any, proof_id: int | None) -> bool:
        """Before the proof: our extension handshake and our proof only (and keep-alives)."""
        if isinstance(message, wire.Extended):
            return message.ext_id == 0 or (proof_id is not None and message.ext_id == proof_id)
        return isinstance(message, wire.KeepAlive)

    @staticmethod
    def may_receive(message: Any, proof_id: int) -> bool:
        """Before the proof: the peer's extension handshake, its proof, keep-alives."""
        if isinstance(message, wire.Extended):
            return message.ext_id in (0, proof_id)
        return isinstance(message, wire.KeepAlive)
