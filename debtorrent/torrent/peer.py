"""One connection to one peer in one swarm: the BitTorrent wire protocol in motion.

A :class:`PeerConnection` runs two greenlets: a reader that decodes messages (with the
codec's hard limits) and acts on them, and a writer that drains an outgoing queue, so
two greenlets never interleave bytes on the socket. Everything the connection learns
goes to its swarm (availability, blocks, extension messages); everything it sends is
decided by the swarm (what to request) and the session's choker (whom to serve).
Violations of the protocol close the connection and are counted against the address.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
from gevent.queue import Queue

from debtorrent.errors import DebtorrentError, PeerError, ProtocolError
from debtorrent.torrent import wire
from debtorrent.torrent.picker import PieceSet
from debtorrent.torrent.swarmkey import KeyGate

if TYPE_CHECKING:
    from debtorrent.torrent.swarm import Swarm

__all__ = ["PeerConnection", "Rate"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
KEEPALIVE_INTERVAL = 60.0
SNUB_TIMEOUT = 30.0
PIPELINE = 64  # block requests in flight per peer: ~1 MiB, enough for loopback speed
MAX_QUEUED_REQUESTS = 500  # requests a peer may queue with us (BEP 10 reqq we announce)
RECV_SIZE = 262144
MAX_SEND_QUEUE = 2000  # messages waiting for a peer that does not read


class Rate:
    """Bytes per second over a sliding few seconds (for the choker and the status page)."""

    __slots__ = ("_last", "_rate", "total")

    def __init__(self) -> None:
        self._rate = 0.0
        self._last = time.monotonic()
        self.total = 0

    def add(self, amount: int) -> None:
        self._decay()
        self._rate += amount / 5.0
        self.total += amount

    def _decay(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last
        if elapsed > 0:
            self._rate *= max(0.0, 1.0 - elapsed / 5.0)
            self._last = now

    @property
    def rate(self) -> float:
        self._decay()
        return self._rate


class PeerConnection:
    """The state of one connection; :meth:`run` owns it until it closes."""

    def __init__(self, swarm: Swarm, sock: Any, address: tuple[str, int], *, outgoing: bool):
        self.swarm = swarm
        self.sock = sock
        self.address = address
        self.outgoing = outgoing
        self.peer_id = b""
        self.client = ""
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.optimistic = False
        self.snubbed = False
        self.fast = False
        self.extensions: dict[str, int] = {}
        #: where the address came from ("tracker", "dht", "lsd", "pex", "static"), or
        #: "incoming"; set by the session
        self.source = "incoming"
        #: the peer's listen port (its extension handshake's ``p``), for PEX
        self.listen_port: int | None = address[1] if outgoing else None
        key = swarm.session.swarm_key
        self.gate = KeyGate(key, swarm.info_hash, swarm.peer_id) if key is not None else None
        self.reqq = 250
        self.has = PieceSet(swarm.layout.num_pieces)
        self.seed = False
        self.requested: dict[tuple[int, int], int] = {}  # (piece, begin) -> length
        self.incoming: deque[wire.Request] = deque()
        self._refused = 0  # requests we could not serve since the last unchoke
        self.down = Rate()
        self.up = Rate()
        self.connected_at = time.monotonic()
        self.last_block = time.monotonic()
        self.closed = False
        self.close_reason = ""
        self._out: Queue = Queue()
        self._wakeup_upload = gevent.event.Event()
        self._decoder = wire.Decoder(
            swarm.layout.num_pieces, piece_size=swarm.layout.piece_size, handshake=True
        )
        self._greenlets: list[gevent.Greenlet] = []

    def __repr__(self) -> str:
        return f"<peer {self.address[0]}:{self.address[1]} {self.client or '?'}>"

    # --- life cycle ---------------------------------------------------------------

    def run(
        self, handshake: wire.Handshake | None = None, decoder: wire.Decoder | None = None
    ) -> None:
        """Handshake, then read until the connection ends; always cleans up.

        An incoming connection's handshake was already read by the session (to find
        the swarm); it passes the handshake and its decoder, which holds what followed.
        """
        try:
            self.sock.settimeout(HANDSHAKE_TIMEOUT)
            self._send_now(wire.encode(wire.Handshake(self.swarm.info_hash, self.swarm.peer_id)))
            early: list = []
            if handshake is None:
                handshake, early = self._read_handshake()
            elif decoder is not None:
                decoder.set_num_pieces(self.swarm.layout.num_pieces)
                decoder.piece_size = self.swarm.layout.piece_size
                self._decoder = decoder
            self._accept_handshake(handshake)
            if decoder is not None:
                early = self._decoder.feed(b"")
            self.sock.settimeout(IDLE_TIMEOUT)
            self._greenlets = [
                gevent.spawn(self._writer),
                gevent.spawn(self._uploader),
                gevent.spawn(self._keepalive),
            ]
            if self.gate is not None:
                self._greenlets.append(gevent.spawn_later(HANDSHAKE_TIMEOUT, self._need_proof))
            self._greet()
            self._handle_all(early)
            self._reader()
        except ProtocolError as exc:
            self.swarm.session.strike(self.address[0], str(exc))
            self.close(f"protocol error: {exc}")
        except (OSError, PeerError, gevent.Timeout) as exc:
            self.close(f"connection lost: {exc or type(exc).__name__}")
        except DebtorrentError as exc:
            self.close(f"closed: {exc}")
        finally:
            self.close(self.close_reason or "closed")

    def _read_handshake(self) -> tuple[wire.Handshake, list]:
        # one deadline for the whole handshake: a byte now and then must not extend it
        with gevent.Timeout(HANDSHAKE_TIMEOUT, PeerError("handshake not complete in time")):
            return self._read_handshake_messages()

    def _read_handshake_messages(self) -> tuple[wire.Handshake, list]:
        while True:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise PeerError("closed during handshake")
            messages = self._decoder.feed(data)
            if messages:
                first = messages[0]
                if not isinstance(first, wire.Handshake):
                    raise ProtocolError("expected a handshake")
                return first, messages[1:]

    def _accept_handshake(self, handshake: wire.Handshake) -> None:
        if handshake.info_hash != self.swarm.info_hash:
            raise ProtocolError("handshake for another torrent")
        if handshake.peer_id == self.swarm.peer_id:
            raise PeerError("connected to ourselves")
        self.peer_id = handshake.peer_id
        self.fast = handshake.supports_fast
        self._decoder.fast = self.fast
        self._decoder.extended = handshake.supports_extensions
        if not self.swarm.attach(self):
            raise PeerError("swarm full or duplicate peer")

    @property
    def proven(self) -> bool:
        """Whether the peer may see the swarm: no swarm key, or its proof checked out."""
        return self.gate is None or self.gate.proven

    def _greet(self) -> None:
        session = self.swarm.session
        if self._decoder.extended:
            extra = self.gate.handshake_fields() if self.gate is not None else None
            handshake = wire.ExtensionHandshake.local(
                session.listen_port or None,
                MAX_QUEUED_REQUESTS,
                session.optional_extensions,
                extra,
            )
            self.send(handshake.message())
        elif self.gate is not None:
            raise PeerError("peer cannot prove the swarm key (no extension protocol)")
        if self.proven:
            self._send_pieces()

    def _send_pieces(self) -> None:
        have = self.swarm.have
        if self.fast and len(have) == 0:
            self.send(wire.HaveNone())
        elif self.fast and have.complete:
            self.send(wire.HaveAll())
        elif len(have):
            self.send(wire.Bitfield(have.to_bytes()))

    def close(self, reason: str) -> None:
        """Close the socket and hand back what was requested; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.debug("%s: %s", self, reason)
        current = gevent.getcurrent()
        for greenlet in self._greenlets:
            if greenlet is not current:
                greenlet.kill(block=False)
        try:
            self.sock.close()
        except OSError:
            pass
        self.swarm.detach(self)

    # --- sending --------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Queue a message; the writer greenlet sends in order.

        A peer that does not read what we send (the queue only grows) is dropped: the
        queue is memory the peer controls.
        """
        if self.closed:
            return
        if self._out.qsize() >= MAX_SEND_QUEUE:
            self.close("peer does not read what we send")
            return
        if self.gate is not None and not self.gate.proven:
            if not self.gate.may_send(message, self.extensions.get(wire.DT_SWARMKEY)):
                return  # nothing of the swarm before the peer proved the key
        self._out.put(wire.encode(message))

    def _send_now(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _writer(self) -> None:
        try:
            for data in self._out:
                chunks = [data]
                while not self._out.empty() and len(chunks) < 64:
                    chunks.append(self._out.get_nowait())
                self.sock.sendall(b"".join(chunks))
        except OSError as exc:
            self.close(f"send failed: {exc}")

    def _keepalive(self) -> None:
        while not self.closed:
            gevent.sleep(KEEPALIVE_INTERVAL)
            self.send(wire.KeepAlive())

    def send_extended(self, name: str, payload: dict) -> bool:
        """Send one of our extension messages if the peer accepts it."""
        ext_id = self.extensions.get(name)
        if not ext_id:
            return False
        self.send(wire.Extended(ext_id, payload))
        return True

    # --- choking and interest (decided by the swarm and the choker) ------------

    def set_choking(self, choke: bool) -> None:
        if choke == self.am_choking:
            return
        self.am_choking = choke
        if choke:
            if self.fast:
                for request in self.incoming:
                    self.send(wire.RejectRequest(request.index, request.begin, request.length))
            self.incoming.clear()
            self.send(wire.Choke())
        else:
            self._refused = 0
            self.send(wire.Unchoke())

    def update_interest(self) -> None:
        interested = self.swarm.interesting(self)
        if interested != self.am_interested:
            self.am_interested = interested
            self.send(wire.Interested() if interested else wire.NotInterested())
        if interested:
            self.request_more()

    def request_more(self) -> None:
        """Fill the request pipeline with blocks the swarm's picker chooses."""
        if self.peer_choking or self.closed or self.snubbed:
            return
        room = min(PIPELINE, self.reqq) - len(self.requested)
        if room <= 0:
            return
        for piece, begin, length in self.swarm.pick(self, room):
            self.requested[(piece, begin)] = length
            self.send(wire.Request(piece, begin, length))

    def cancel(self, piece: int, begin: int) -> None:
        length = self.requested.pop((piece, begin), None)
        if length is not None:
            self.send(wire.Cancel(piece, begin, length))

    def have(self, piece: int) -> None:
        """Tell the peer we now have a verified piece."""
        self.send(wire.Have(piece))

    # --- receiving -------------------------------------------------------------------

    def _reader(self) -> None:
        while not self.closed:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise PeerError("closed by peer")
            self._handle_all(self._decoder.feed(data))
            # a peer sending faster than we decode would otherwise keep this greenlet
            # running (gevent's recv only yields on an empty socket) and starve apt
            gevent.sleep(0)

    def _handle_all(self, messages: list) -> None:
        for message in messages:
            if self.closed:
                return
            self._handle(message)

    def _handle(self, msg: Any) -> None:
        if self.gate is not None and not self.gate.proven:
            if not self.gate.may_receive(msg, wire.LOCAL_EXTENSIONS[wire.DT_SWARMKEY]):
                raise PeerError(f"{type(msg).__name__} before proving the swarm key")
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg)

    def _on_choke(self, msg: wire.Choke) -> None:
        self.peer_choking = True
        if not self.fast:  # BEP 6 peers reject explicitly; others drop them all
            self._drop_requests()

    def _on_unchoke(self, msg: wire.Unchoke) -> None:
        self.peer_choking = False
        self.request_more()

    def _on_interested(self, msg: wire.Interested) -> None:
        self.peer_interested = True
        self.swarm.session.interest_changed(self)

    def _on_not_interested(self, msg: wire.NotInterested) -> None:
        self.peer_interested = False
        self.swarm.session.interest_changed(self)

    def _on_have(self, msg: wire.Have) -> None:
        if self.has.add(msg.index):
            self.swarm.on_have(self, msg.index)
            self.update_interest()

    def _on_bitfield(self, msg: wire.Bitfield) -> None:
        self.has = PieceSet.from_bytes(msg.bits, self.swarm.layout.num_pieces)
        self.swarm.on_bitfield(self)
        self.update_interest()

    def _on_have_all(self, msg: wire.HaveAll) -> None:
        self.has = PieceSet.full(self.swarm.layout.num_pieces)
        self.swarm.on_bitfield(self)
        self.update_interest()

    def _on_have_none(self, msg: wire.HaveNone) -> None:
        self.update_interest()

    def _on_request(self, msg: wire.Request) -> None:
        if self.am_choking or msg.index not in self.swarm.have:
            self._refused += 1
            if self._refused > 2 * MAX_QUEUED_REQUESTS:  # more than any pipeline holds
                raise ProtocolError("a flood of requests we cannot serve")
            if self.fast:
                self.send(wire.RejectRequest(msg.index, msg.begin, msg.length))
            return
        if len(self.incoming) >= MAX_QUEUED_REQUESTS:
            raise ProtocolError(f"more than {MAX_QUEUED_REQUESTS} queued requests")
        self.incoming.append(msg)
        self._wakeup_upload.set()

    def _on_cancel(self, msg: wire.Cancel) -> None:
        try:
            self.incoming.remove(wire.Request(msg.index, msg.begin, msg.length))
        except ValueError:
            pass

    def _on_reject(self, msg: wire.RejectRequest) -> None:
        if self.requested.pop((msg.index, msg.begin), None) is not None:
            self.swarm.on_block_lost(self, msg.index, msg.begin)

    def _on_piece(self, msg: wire.Piece) -> None:
        length = self.requested.pop((msg.index, msg.begin), None)
        if length is None or length != len(msg.block):
            return  # cancelled or endgame duplicate: not an error (BEP 3 allows it)
        self.last_block = time.monotonic()
        self.snubbed = False
        self.down.add(len(msg.block))
        self.swarm.on_block(self, msg.index, msg.begin, msg.block)
        if len(self.requested) <= min(PIPELINE, self.reqq) // 2:
            self.request_more()  # in batches: each pick ranks every wanted piece

    def _on_extended(self, msg: wire.Extended) -> None:
        if msg.ext_id == 0:
            handshake = wire.ExtensionHandshake.parse(msg.payload)
            self.extensions = dict(handshake.m)
            self.client = (handshake.v or "")[:64]
            if handshake.reqq:
                self.reqq = min(handshake.reqq, 1000)
            if handshake.p and not self.outgoing:
                self.listen_port = handshake.p
            if self.gate is not None and not self.gate.proven:
                self.send_extended(
                    wire.DT_SWARMKEY, self.gate.on_handshake(msg.payload, self.peer_id)
                )
                return  # the swarm hears of the peer once it proved the key
            self.swarm.on_extension_handshake(self)
            return
        for name, local_id in wire.LOCAL_EXTENSIONS.items():
            if local_id == msg.ext_id:
                if name == wire.DT_SWARMKEY:
                    self._on_proof(msg.payload)
                elif name == wire.UT_PEX:
                    self.swarm.session.on_pex(self, msg.payload)
                else:
                    self.swarm.on_extended(self, name, msg.payload)
                return

    def _on_proof(self, payload: Any) -> None:
        if self.gate is None or self.gate.proven:
            return  # a repeated proof changes nothing
        self.gate.on_proof(payload)
        log.debug("%s: swarm key proven", self)
        # what was decided while the peer was unproven never reached it: start afresh
        self.am_choking, self.am_interested = True, False
        self._send_pieces()
        self.swarm.on_extension_handshake(self)
        self.update_interest()

    def _need_proof(self) -> None:
        if not self.proven:
            self.close("no swarm key proof in time")

    # --- uploading -------------------------------------------------------------------

    def _uploader(self) -> None:
        while not self.closed:
            if not self.incoming:
                self._wakeup_upload.clear()
                self._wakeup_upload.wait()
                continue
            request = self.incoming.popleft()
            if self.am_choking:
                continue
            data = self.swarm.read_block(request.index, request.begin, request.length)
            if data is None:
                if self.fast:
                    self.send(wire.RejectRequest(request.index, request.begin, request.length))
                continue
            self.up.add(len(data))
            self.swarm.on_upload(self, len(data))
            self.send(wire.Piece(request.index, request.begin, data))
            if self._out.qsize() > 32:
                gevent.sleep(0)  # let the writer drain before reading more blocks

    def _drop_requests(self) -> None:
        dropped = list(self.requested)
        self.requested.clear()
        for piece, begin in dropped:
            self.swarm.on_block_lost(self, piece, begin)

    def check_snubbed(self, now: float) -> None:
        """No block for a while despite requests: hand them to other peers."""
        if self.requested and now - self.last_block > SNUB_TIMEOUT:
            self.snubbed = True
            self._drop_requests()


_HANDLERS = {
    wire.Choke: PeerConnection._on_choke,
    wire.Unchoke: PeerConnection._on_unchoke,
    wire.Interested: PeerConnection._on_interested,
    wire.NotInterested: PeerConnection._on_not_interested,
    wire.Have: PeerConnection._on_have,
    wire.Bitfield: PeerConnection._on_bitfield,
    wire.HaveAll: PeerConnection._on_have_all,
    wire.HaveNone: PeerConnection._on_have_none,
    wire.Request: PeerConnection._on_request,
    wire.Cancel: PeerConnection._on_cancel,
    wire.RejectRequest: PeerConnection._on_reject,
    wire.Piece: PeerConnection._on_piece,
    wire.Extended: PeerConnection._on_extended,
}
