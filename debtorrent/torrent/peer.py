"""One connection to one peer in one swarm: the BitTorrent wire protocol in motion.

A :class:`PeerConnection` runs two greenlets: a reader that decodes messages (with the
codec's hard limits) and acts on them, and a writer that drains an outgoing queue, so
two greenlets never interleave bytes on the socket. Everything the connection learns
goes to its swarm (availability, blocks, extension messages); everything it sends is
decided by the swarm (what to request) and the session's choker (whom to serve).
Violations of the protocol close the connection and are counted against the address.

Memory a peer controls is bounded in bytes, not messages: the uploader reads the next
block only while fewer than :attr:`~debtorrent.policy.PeerLimits.send_watermark` bytes
wait for the socket (libtorrent's send-buffer watermark), so a peer that requests and
never reads holds about a megabyte, and anything else piling up past
:attr:`~debtorrent.policy.PeerLimits.max_send_bytes` drops the connection.

A snubbed peer (requests, but no block for
:attr:`~debtorrent.policy.PeerTimeouts.snub` seconds) keeps one request outstanding, so
a block from it, any block, clears the flag and it can earn its regular unchoke back.
A bitfield, have-all or have-none after the first one (aria2 sends them when they are
shorter than the ``have`` messages they replace) replaces what the peer has. BEP 6:
a cancel from a fast peer is answered with a reject; allowed-fast pieces are requested
while the peer chokes us (we send no allowed-fast set of our own, which BEP 6 allows).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from debtorrent.errors import DebtorrentError, PeerError, ProtocolError
from debtorrent.policy import Policy
from debtorrent.torrent import filewire as fw
from debtorrent.torrent import wire
from debtorrent.torrent.layout import BLOCK_SIZE
from debtorrent.torrent.picker import PieceSet
from debtorrent.torrent.swarmkey import KeyGate

if TYPE_CHECKING:
    from debtorrent.torrent.swarm import Swarm

__all__ = ["SOURCES", "PeerConnection", "Rate"]

log = logging.getLogger(__name__)

#: Where a peer's address came from (``PeerConnection.source``); "incoming" for a peer
#: that dialled us.
SOURCES = ("tracker", "dht", "lsd", "pex", "static", "incoming")
#: The most allowed-fast pieces kept per peer (BEP 6 suggests sets of about 10).
MAX_ALLOWED_FAST = 64


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
    """The state of one connection; :meth:`run` owns it until it closes.

    *source* says where the address came from (one of :data:`SOURCES`).
    """

    def __init__(
        self,
        swarm: Swarm,
        sock: Any,
        address: tuple[str, int],
        *,
        outgoing: bool,
        source: str = "",
        policy: Policy | None = None,
    ):
        self.swarm = swarm
        self.sock = sock
        self.address = address
        self.outgoing = outgoing
        self.source = source or ("static" if outgoing else "incoming")
        self.policy = policy if policy is not None else swarm.session.policy
        self.peer_id = b""
        self.client = ""
        # from the extension handshake's ``p``; an outgoing peer listens where we dialled
        self.listen_port: int | None = address[1] if outgoing else None
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.optimistic = False
        self.snubbed = False
        self.fast = False
        self.extensions: dict[str, int] = {}
        key = swarm.session.swarm_key
        self.gate = KeyGate(key, swarm.info_hash, swarm.peer_id) if key is not None else None
        self.reqq = 250
        self.max_run = BLOCK_SIZE  # longest request the peer serves (file plane: its dt_run)
        self.has = PieceSet(swarm.layout.num_pieces)
        self.seed = False
        self.allowed_fast: set[int] = set()
        self.requested: dict[tuple[int, int], int] = {}  # (piece, begin) -> length
        self.incoming: deque[wire.Request] = deque()
        self._refused = 0  # requests we could not serve since the last unchoke
        self.down = Rate()
        self.up = Rate()
        self.connected_at = time.monotonic()
        self.last_block = time.monotonic()  # last block received, or the last snub
        self.attached = False  # handshaken and admitted to the swarm
        self.closed = False
        self.close_reason = ""
        #: bytes queued for the socket, the batch being sent included
        self.queued_bytes = 0
        #: whether the uploader waits for the socket to drain (a peer that does not read)
        self.waiting_for_drain = False
        self._out: deque[bytes] = deque()
        self._out_ready = Event()
        self._drained = Event()
        self._last_send = time.monotonic()
        self._wakeup_upload = Event()
        self._decoder = wire.Decoder(
            swarm.wire_pieces, piece_size=swarm.layout.piece_size, handshake=True
        )
        self._greenlets: list[gevent.Greenlet] = []
        #: a suite swarm's translation to files named by SHA256 (None: BEP 3 pieces)
        self.plane = swarm.new_plane(self)

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
        timeouts = self.policy.timeouts
        try:
            self.sock.settimeout(timeouts.handshake)
            self._send_now(wire.encode(wire.Handshake(self.swarm.info_hash, self.swarm.peer_id)))
            early: list = []
            if handshake is None:
                handshake, early = self._read_handshake()
            elif decoder is not None:
                decoder.set_num_pieces(self.swarm.wire_pieces)
                decoder.piece_size = self.swarm.layout.piece_size
                self._decoder = decoder
            self._accept_handshake(handshake)
            if decoder is not None:
                early = self._decoder.feed(b"")
            self.sock.settimeout(timeouts.idle)
            self._greenlets = [
                gevent.spawn(self._writer),
                gevent.spawn(self._uploader),
                gevent.spawn(self._keepalive),
            ]
            if self.gate is not None:
                self._greenlets.append(gevent.spawn_later(timeouts.handshake, self._need_proof))
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
        timeout = self.policy.timeouts.handshake
        with gevent.Timeout(timeout, PeerError("handshake not complete in time")):
            return self._read_handshake_messages()

    def _read_handshake_messages(self) -> tuple[wire.Handshake, list]:
        while True:
            data = self.sock.recv(self.policy.limits.recv_size)
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
        self.attached = True

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
                self.policy.limits.max_queued_requests,
                session.optional_extensions,
                extra,
                run=fw.MAX_RUN if self.plane is not None else None,
            )
            self.send(handshake.message())
        elif self.gate is not None:
            raise PeerError("peer cannot prove the swarm key (no extension protocol)")
        if self.proven:
            self._send_pieces()

    def _send_pieces(self) -> None:
        have = self.swarm.have
        if self.plane is not None:  # files travel in dt_files, after the peer's ids
            if self.fast:
                self.send(wire.HaveNone())
            return
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
        self._out.clear()
        self.queued_bytes = 0
        try:
            self.sock.close()
        except OSError:
            pass
        self.swarm.detach(self)

    # --- sending --------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Queue a message; the writer greenlet sends in order (a suite swarm's piece
        messages first become file messages: :mod:`~debtorrent.torrent.fileplane`)."""
        if self.closed:
            return
        if self.gate is not None and not self.gate.proven:
            if not self.gate.may_send(message, self.extensions.get(wire.DT_SWARMKEY)):
                return  # nothing of the swarm before the peer proved the key
        if self.plane is not None:
            message = self.plane.outgoing(message)
            if message is None:
                return
        self._enqueue(wire.encode(message))

    def _enqueue(self, data: bytes) -> None:
        """Queue bytes for the writer, within the byte limit.

        The queue is memory the peer controls: blocks wait below the watermark (see
        :meth:`_uploader`); what else piles up past ``max_send_bytes`` means the peer
        does not read, and it is dropped.
        """
        if self.queued_bytes + len(data) > self.policy.limits.max_send_bytes:
            self.close("peer does not read what we send")
            return
        self._out.append(data)
        self.queued_bytes += len(data)
        self._out_ready.set()

    def _send_now(self, data: bytes) -> None:
        self.sock.sendall(data)
        self._last_send = time.monotonic()

    def _writer(self) -> None:
        limits = self.policy.limits
        try:
            while not self.closed:
                if not self._out:
                    self._out_ready.clear()
                    self._out_ready.wait()
                    continue
                chunks: list[bytes] = []
                size = 0
                while self._out and size < limits.writer_batch:
                    data = self._out.popleft()
                    chunks.append(data)
                    size += len(data)
                self._send_now(b"".join(chunks) if len(chunks) > 1 else chunks[0])
                del chunks
                self.queued_bytes = max(0, self.queued_bytes - size)
                if self.queued_bytes < limits.send_watermark:
                    self._drained.set()
        except OSError as exc:
            self.close(f"send failed: {exc}")

    def _keepalive(self) -> None:
        """A keep-alive after ``keepalive`` seconds in which we sent nothing."""
        interval = self.policy.timeouts.keepalive
        while not self.closed:
            due = self._last_send + interval - time.monotonic()
            if due > 0:
                gevent.sleep(due)
                continue
            if not self._out:  # else the writer is stuck on a full socket anyway
                self.send(wire.KeepAlive())
            gevent.sleep(interval)

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

    def _pipeline(self) -> int:
        """Requests to keep in flight: one while snubbed (libtorrent does the same),
        so the peer can prove itself again; else the full pipeline."""
        if self.snubbed:
            return 1
        return min(self.policy.limits.pipeline, self.reqq)

    def request_more(self) -> None:
        """Fill the request pipeline with blocks the swarm's picker chooses.

        While the peer chokes us, only its allowed-fast pieces may be asked for (BEP 6).
        """
        if self.closed or (self.peer_choking and not self.allowed_fast):
            return
        room = self._pipeline() - len(self.requested)
        if room <= 0:
            return
        allowed = self.allowed_fast if self.peer_choking else None
        picked = self.swarm.pick(self, room, allowed=allowed)
        for piece, begin, length in picked:
            self.requested[(piece, begin)] = length
        for piece, begin, length in _runs(picked, self.max_run):
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
        recv_size = self.policy.limits.recv_size
        while not self.closed:
            data = self.sock.recv(recv_size)
            if not data:
                raise PeerError("closed by peer")
            self._handle_all(self._decoder.feed(data))
            pause = self.swarm.session.rate_limits.download.take(len(data), time.monotonic())
            if pause:
                gevent.sleep(pause)  # --download-rate: the peer waits on our TCP window
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
        if self.plane is not None and type(msg) in _PIECE_MESSAGES:
            raise ProtocolError(f"{type(msg).__name__} in a suite swarm (files go by SHA256)")
        self.handle(msg)

    def handle(self, msg: Any) -> None:
        """Act on one message, in the swarm's own piece numbers (the file plane hands
        translated ones here)."""
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

    def _replace_has(self, has: PieceSet) -> None:
        """What the peer has is now *has*: a first bitfield, or a later one (aria2 sends
        one when it is shorter than the haves it replaces, and have-all once complete),
        which replaces the old set in the picker's availability."""
        self.swarm.drop_availability(self)
        self.has = has
        self.swarm.on_bitfield(self)
        self.update_interest()

    def _on_bitfield(self, msg: wire.Bitfield) -> None:
        self._replace_has(PieceSet.from_bytes(msg.bits, self.swarm.layout.num_pieces))

    def _on_have_all(self, msg: wire.HaveAll) -> None:
        self._replace_has(PieceSet.full(self.swarm.layout.num_pieces))

    def _on_have_none(self, msg: wire.HaveNone) -> None:
        self._replace_has(PieceSet(self.swarm.layout.num_pieces))

    def _on_allowed_fast(self, msg: wire.AllowedFast) -> None:
        if len(self.allowed_fast) < MAX_ALLOWED_FAST:
            self.allowed_fast.add(msg.index)
            if self.peer_choking and msg.index in self.has:
                self.update_interest()

    def _on_request(self, msg: wire.Request) -> None:
        limits = self.policy.limits
        if self.am_choking or msg.index not in self.swarm.have:
            self._refused += 1
            if self._refused > 2 * limits.max_queued_requests:  # more than any pipeline
                raise ProtocolError("a flood of requests we cannot serve")
            if self.fast:
                self.send(wire.RejectRequest(msg.index, msg.begin, msg.length))
            return
        if len(self.incoming) >= limits.max_queued_requests:
            raise ProtocolError(f"more than {limits.max_queued_requests} queued requests")
        self.incoming.append(msg)
        self._wakeup_upload.set()

    def _on_cancel(self, msg: wire.Cancel) -> None:
        request = wire.Request(msg.index, msg.begin, msg.length)
        try:
            self.incoming.remove(request)
        except ValueError:
            # a block of a queued run (file plane): the run goes, rejected whole, and
            # the peer asks again for what it still wants
            request = self._queued_run_of(msg)
            if request is None or not self.fast:
                return  # already sent (or never queued): the piece message answers it
            self.incoming.remove(request)
        if self.fast:  # BEP 6: a cancelled request is answered, with a reject
            self.send(wire.RejectRequest(request.index, request.begin, request.length))

    def _queued_run_of(self, msg: wire.Cancel) -> wire.Request | None:
        for queued in self.incoming:
            if (
                queued.index == msg.index
                and queued.begin <= msg.begin
                and msg.begin + msg.length <= queued.begin + queued.length
            ):
                return queued
        return None

    def _on_reject(self, msg: wire.RejectRequest) -> None:
        if self.requested.pop((msg.index, msg.begin), None) is not None:
            self.swarm.on_block_lost(self, msg.index, msg.begin)

    def _on_piece(self, msg: wire.Piece) -> None:
        # any block proves the peer sends: it is no longer snubbed, whether we still
        # wanted this block from it or had given the request up (libtorrent does the same)
        self.last_block = time.monotonic()
        was_snubbed, self.snubbed = self.snubbed, False
        length = self.requested.pop((msg.index, msg.begin), None)
        if length is None:
            if not self._unrequested_block_fits(msg):
                return
        elif length != len(msg.block):
            self.swarm.on_block_lost(self, msg.index, msg.begin)
            return
        self.down.add(len(msg.block))
        self.swarm.on_block(self, msg.index, msg.begin, msg.block)
        if was_snubbed or len(self.requested) <= self._pipeline() // 2:
            self.request_more()  # in batches: each pick ranks every wanted piece

    def _unrequested_block_fits(self, msg: wire.Piece) -> bool:
        """A block we no longer asked for (dropped at a snub or a choke, cancelled) is
        still used when it is a whole block of a piece we want; else it is ignored."""
        if msg.begin % BLOCK_SIZE:
            return False
        size = self.swarm.layout.piece_size(msg.index)
        return len(msg.block) == min(BLOCK_SIZE, size - msg.begin)

    def _on_extended(self, msg: wire.Extended) -> None:
        if msg.ext_id == 0:
            handshake = wire.ExtensionHandshake.parse(msg.payload)
            self.extensions = dict(handshake.m)
            self.client = (handshake.v or "")[:64]
            if handshake.p:
                self.listen_port = handshake.p
                self.swarm.session.peer_listens(self)
            if handshake.reqq:
                self.reqq = min(handshake.reqq, self.policy.limits.max_peer_reqq)
            if handshake.run and self.plane is not None:
                cap = min(handshake.run, fw.MAX_RUN, self.policy.limits.file_run)
                self.max_run = max(BLOCK_SIZE, cap - cap % BLOCK_SIZE)
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
                elif self.plane is not None and name in fw.NAMES:
                    self.plane.incoming(name, msg.payload, msg.trailing)
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
        """Serve queued requests, one block at a time, never above the watermark."""
        watermark = self.policy.limits.send_watermark
        while not self.closed:
            if not self.incoming:
                self._wakeup_upload.clear()
                self._wakeup_upload.wait()
                continue
            if self.queued_bytes >= watermark:
                # the peer reads slower than we read the disk: wait for its socket
                self.waiting_for_drain = True
                self._drained.clear()
                self._drained.wait()
                self.waiting_for_drain = False
                continue
            request = self.incoming.popleft()
            if self.am_choking:
                continue
            pause = self.swarm.session.rate_limits.upload.take(request.length, time.monotonic())
            if pause:
                gevent.sleep(pause)  # --upload-rate
                if self.am_choking or self.closed:
                    continue
            data = self.swarm.read_block(request.index, request.begin, request.length)
            if data is None:
                if self.fast:
                    self.send(wire.RejectRequest(request.index, request.begin, request.length))
                continue
            if self.closed:
                return
            self.up.add(len(data))
            self.swarm.on_upload(self, len(data))
            if self.plane is None:
                header = wire.encode_piece_header(request.index, request.begin, len(data))
            else:
                header = self.plane.piece_header(request.index, request.begin, len(data))
                if header is None:
                    continue  # the peer asked in a language it did not announce
            self._enqueue(header)
            self._enqueue(data)
            if self.queued_bytes >= self.policy.limits.writer_batch:
                gevent.sleep(0)  # let the writer send a batch before reading more

    def _drop_requests(self) -> None:
        dropped = list(self.requested)
        self.requested.clear()
        for piece, begin in dropped:
            self.swarm.on_block_lost(self, piece, begin)

    def check_snubbed(self, now: float) -> None:
        """No block for a while despite requests: hand them to other peers, keep one.

        The one request left lets the peer prove itself; it gets a full period again.
        """
        if self.requested and now - self.last_block > self.policy.timeouts.snub:
            self.snubbed = True
            self.last_block = now
            self._drop_requests()
            self.request_more()


# what a suite swarm's peers say in file messages instead (HaveNone is harmless)
def _runs(blocks: list[tuple[int, int, int]], longest: int) -> list[tuple[int, int, int]]:
    """Consecutive blocks of one piece joined into requests of at most ``longest`` bytes
    (in the order picked); with ``longest`` one block, the blocks as they are."""
    if longest <= BLOCK_SIZE:
        return blocks
    runs: list[tuple[int, int, int]] = []
    for piece, begin, length in blocks:
        if runs:
            last_piece, last_begin, last_length = runs[-1]
            if (
                last_piece == piece
                and last_begin + last_length == begin
                and last_length % BLOCK_SIZE == 0
                and last_length + length <= longest
            ):
                runs[-1] = (piece, last_begin, last_length + length)
                continue
        runs.append((piece, begin, length))
    return runs


_PIECE_MESSAGES = frozenset(
    {
        wire.Have,
        wire.Bitfield,
        wire.HaveAll,
        wire.AllowedFast,
        wire.Request,
        wire.Cancel,
        wire.RejectRequest,
        wire.Piece,
    }
)

_HANDLERS = {
    wire.Choke: PeerConnection._on_choke,
    wire.Unchoke: PeerConnection._on_unchoke,
    wire.Interested: PeerConnection._on_interested,
    wire.NotInterested: PeerConnection._on_not_interested,
    wire.Have: PeerConnection._on_have,
    wire.Bitfield: PeerConnection._on_bitfield,
    wire.HaveAll: PeerConnection._on_have_all,
    wire.HaveNone: PeerConnection._on_have_none,
    wire.AllowedFast: PeerConnection._on_allowed_fast,
    wire.Request: PeerConnection._on_request,
    wire.Cancel: PeerConnection._on_cancel,
    wire.RejectRequest: PeerConnection._on_reject,
    wire.Piece: PeerConnection._on_piece,
    wire.Extended: PeerConnection._on_extended,
}
