"""One TFTP read transfer: the send window, ACK handling and retransmission.

Block numbers are tracked as absolute sequence numbers (``seq``; 0 is the
OACK, 1 the first DATA) and only reduced mod 65536 on the wire, so rollover
past block 65535 needs no special case.  The window is ``base..sent``: every
block below ``base`` is ACKed, ``sent`` is the highest block sent so far,
and at most ``windowsize`` blocks are outstanding (RFC 7440; windowsize 1 is
RFC 1350 lock-step).

- An ACK for block n inside the window (mod 65536) starts a new window at
  n+1 and sends it (RFC 7440 section 4): normally n is the window's last
  block; an earlier n means the receiver lost n+1 and dropped the rest, so
  the blocks after n are sent again at once instead of after a timeout (as
  FreeBSD's tftpd does).  An ACK for anything else -- the block before the
  window (a duplicate), an older one or one not sent yet -- sends nothing
  (Sorcerer's Apprentice, RFC 1123 4.2.3.1).
- On timeout the whole unacknowledged window ``base..sent`` is sent again
  (or the OACK), with the timeout doubled each retry up to ``max_backoff``.
- The transfer ends when the short (final) block is ACKed.

Window state lives in a window base class: ``_tftp_pump.Window`` (C) where
the accelerator is built, so the C pump can advance a transfer without
Python, else :class:`PyWindow` with the same fields.  :class:`CSession` and
:class:`PySession` are the two concrete sessions; the server picks one.

Hot path in Python (ACK in -> DATA out): one ``recv_into`` on the socket connected to
the client (no source address to build, no route lookup on send) into the
server's receive buffer, ``struct.unpack_from``, ``os.preadv`` (or a memory
copy) into the server's shared send buffer behind a header packed in place,
one ``send`` of a memoryview slice.  No per-packet logging, events,
allocation of packet bytes or timer-heap operations: the session's single
``deadline`` is a float updated in place and checked lazily by the server's
heap (a new heap entry only when the deadline moves earlier, i.e. progress
after a backoff).  Foreign TIDs arrive on the session's unconnected socket
(same port) and get ERROR 5.
"""

from __future__ import annotations

import errno
import logging
import os

from . import tftp_engine as te
from .tftp_engine import ACK_DATA, DATA_HEADER, Accept, encode_error, encode_oack, parse_error
from .tftp_source import FileSource

log = logging.getLogger("plowshare.tftp")

OP_ACK, OP_DATA, OP_ERROR = te.OP_ACK, te.OP_DATA, te.OP_ERROR
NO_END = 1 << 62  # ``last`` before the short block has been read
INF = float("inf")
pack_into = DATA_HEADER.pack_into
unpack_from = ACK_DATA.unpack_from
preadv = os.preadv


class PyWindow:
    """The hot state of one transfer, in pure Python: the same fields as the
    C accelerator's ``_tftp_pump.Window`` (see that file's header), used where
    it is not built or the server runs without it."""

    __slots__ = ("armed_at", "base", "base_timeout", "blksize", "deadline", "last",
                 "retries", "sent", "started", "timeout", "ws")

    def set_source(self, buffer) -> None:
        """The C window keeps a buffer of the source to send from; nothing here."""


SESSION_SLOTS = (
    "acc",
    "client",
    "conn",
    "fd",
    "filename",
    "full",
    "hdr",
    "iov",
    "payload",
    "pread",
    "recv_into",
    "sbuf",
    "send",
    "sendmsg",
    "server",
    "sock",
    "src",
    "src_fd",
    "t0",
    "tid_fd",
    "timer_id",
    "view",
)


class _SessionCore:
    """One transfer on its own port (the server TID): ``conn`` connected to the
    client carries the transfer, ``sock`` (unconnected) sees foreign TIDs.
    The window fields (``base``, ``sent``, ``last``, ``deadline`` ...) come
    from the window base class; with the accelerator, C advances them for
    in-window ACKs of a started transfer and Python does everything else."""

    __slots__ = ()

    def __init__(self, server, sock, conn, client, req, acc: Accept):
        self.server, self.sock, self.conn = server, sock, conn
        self.client, self.acc = client, acc
        self.fd, self.tid_fd = conn.fileno(), sock.fileno()
        self.filename = req.filename  # as asked, to spot duplicate RRQs
        self.blksize, self.ws, self.src = acc.blksize, acc.windowsize, acc.source
        self.base = 0  # lowest unACKed seq (0: the OACK)
        self.sent = -1  # highest seq sent
        self.last = NO_END  # seq of the short final block, once read
        self.started = False  # DATA 1 has gone out
        self.retries = 0
        self.base_timeout = float(acc.timeout or server.timeout)
        self.timeout = self.base_timeout
        self.deadline = 0.0
        self.armed_at = INF  # deadline of this session's live timer-heap entry
        self.timer_id = -1  # and its id: older entries for the session are stale
        self.t0 = server.now
        self.sbuf = server.send_view  # shared: send() copies before returning
        self.payload = self.sbuf[4:4 + self.blksize]
        self.full = self.sbuf[:4 + self.blksize]
        self.pread = self.src.pread_into
        self.iov = [self.payload]
        self.src_fd = self.src.fileno() if isinstance(self.src, FileSource) else -1
        self.view = self.src.view()  # None: netascii, or a file we could not map
        if self.view is not None:  # the end is known: C needs it, Python agrees
            self.last = len(self.view) // self.blksize + 1
            self.set_source(self.view)
        self.hdr = server.data_header  # shared: sendmsg copies before returning
        self.send, self.sendmsg, self.recv_into = conn.send, conn.sendmsg, conn.recv_into

    # -------------------------------------------------------------- sending

    def begin(self) -> None:
        if self.acc.options:
            self.sent = 0
            self._send_packet(encode_oack(self.acc.options))
        else:
            self.base, self.sent = 1, 0  # no OACK: DATA 1 goes out at once
            self._fill()
        self._rearm()

    def _send_packet(self, packet: bytes) -> None:
        try:
            self.send(packet)
        except OSError as exc:  # lost like any datagram: the timer retries
            log.debug("send to %s failed: %s", self.client, exc)

    def _send_block(self, seq: int) -> None:
        """Send block ``seq``: header + a slice of the source's view in one
        ``sendmsg`` when there is a view, else read it into the shared buffer
        behind its header and ``send`` that."""
        view = self.view
        if view is not None:
            bs = self.blksize
            off = (seq - 1) * bs
            chunk = view[off:off + bs]
            pack_into(self.hdr, 0, OP_DATA, seq & 0xFFFF)
            if len(chunk) < bs:
                self.last = min(self.last, seq)
            try:
                self.sendmsg((self.hdr, chunk))
            except OSError as exc:
                if exc.errno == errno.EFAULT:  # truncated in place: see FileSource
                    chunk.release()  # the mapping cannot close while exported
                    return self.on_fault()
                log.debug("send to %s failed: %s", self.client, exc)  # e.g. ENOBUFS:
            return  # lost like any datagram, the timer resends the window
        if self.src_fd >= 0:  # a file: straight into the send buffer, no method call
            n = preadv(self.src_fd, self.iov, (seq - 1) * self.blksize)
        else:
            n = self.pread((seq - 1) * self.blksize, self.payload)
        pack_into(self.sbuf, 0, OP_DATA, seq & 0xFFFF)
        if n == self.blksize:
            packet = self.full
        else:
            packet = self.sbuf[:4 + n]
            self.last = min(self.last, seq)
        try:
            self.send(packet)
        except OSError as exc:  # e.g. ENOBUFS: lost, the timer resends the window
            log.debug("send to %s failed: %s", self.client, exc)

    def _fill(self) -> None:
        """Send new blocks until ``windowsize`` are outstanding or the last is out."""
        if not self.started:
            self.started = True
            self.server._emit("tftp-start", self.client, self.acc.path)
        seq, end = self.sent + 1, self.base + self.ws
        while seq < end and seq <= self.last and self.sock is not None:
            self._send_block(seq)  # (sock None: the transfer ended in there)
            self.sent = seq
            seq += 1

    def _rearm(self) -> None:
        self.retries, self.timeout = 0, self.base_timeout
        self.deadline = self.server.now + self.timeout
        if self.deadline < self.armed_at:
            self.server._arm(self)

    # ------------------------------------------------------------ receiving

    def on_tid_readable(self, buf) -> None:
        """A datagram on the unconnected TID socket: from a foreign TID."""
        try:
            n, addr = self.sock.recvfrom_into(buf)
        except OSError:
            return
        if addr[:2] == self.client:  # not expected (the connected socket wins)
            return self.on_datagram(buf, n)
        self._foreign(buf, n, addr)

    def on_readable(self, buf) -> None:
        """Handle one datagram waiting on the connected socket (level-triggered:
        anything else still queued is reported by the next poll)."""
        try:
            n = self.recv_into(buf)
        except OSError:  # BlockingIOError, or ECONNREFUSED from an ICMP error
            return
        self.on_datagram(buf, n)

    def on_datagram(self, buf, n: int) -> None:
        """One datagram of ``n`` bytes in ``buf`` from the client.

        The hot path of every transfer: kept to plain attribute arithmetic
        (``bench/tftp_hotpath.py`` times it)."""
        if n < 4:
            return self._other(buf, n)
        op, block = unpack_from(buf)
        if op != OP_ACK:
            return self._other(buf, n)
        # Offset of the ACKed block past base-1, mod 65536: 1..outstanding is
        # inside the window; 0 (a duplicate) and anything else is ignored.
        base = self.base
        d = (block - base + 1) & 0xFFFF
        if not 0 < d <= self.sent - base + 1:
            return
        acked = base - 1 + d
        if acked >= self.last:
            return self.server._end(self, "tftp-done", None)
        self.base = acked + 1
        if self.retries:  # progress after a timeout: back to the base timeout
            self.retries, self.timeout = 0, self.base_timeout
        deadline = self.deadline = self.server.now + self.base_timeout
        if deadline < self.armed_at:  # only after a backoff
            self.server._arm(self)
        if self.ws == 1 and self.started:  # lock-step: exactly one block
            self.sent = acked + 1
            self._send_block(acked + 1)
        else:
            # acked < sent: the receiver lost acked+1, so that and the rest
            # are sent again as the new window (no-op at window end).
            self.sent = acked
            self._fill()

    def on_fault(self) -> None:
        """Sending from the mapping failed with EFAULT: the file was truncated
        in place (see ``FileSource``).  End with ERROR 0 rather than send a
        silently short file."""
        self._send_packet(encode_error(te.ERR_UNDEFINED, "file changed"))
        self.server._end(self, "tftp-error", f"{self.acc.path!r} shrank while being sent")

    def _foreign(self, buf, n: int, addr) -> None:
        if n < 2 or buf[0] != 0 or buf[1] != OP_ERROR:
            self._send_to(encode_error(te.ERR_UNKNOWN_TID, "unknown transfer ID"), addr)
        log.info("datagram from foreign TID %s:%d on transfer to %s:%d", *addr[:2],
                 *self.client)

    def _other(self, buf, n: int) -> None:
        """Not an ACK: a client ERROR ends quietly, anything else gets ERROR 4."""
        if n >= 2 and buf[0] == 0 and buf[1] == OP_ERROR:
            code, msg = parse_error(bytes(buf[:n]))
            self.server._end(self, "tftp-error" if self.started else None,
                             f"client sent ERROR {code} {msg!r}")
            return
        op = (buf[0] << 8 | buf[1]) if n >= 2 else None
        self._send_packet(encode_error(te.ERR_ILLEGAL_OP, "illegal TFTP operation"))
        self.server._end(self, "tftp-error", f"illegal packet (opcode {op})")

    def _send_to(self, packet: bytes, addr) -> None:
        try:
            self.sock.sendto(packet, addr)
        except OSError as exc:
            log.debug("send to %s failed: %s", addr, exc)

    # ---------------------------------------------------------------- timer

    def on_timer(self) -> None:
        """The deadline passed: resend the unACKed window with backoff, or give up."""
        if self.retries >= self.server.retries:
            self.server._end(self, "tftp-error", f"no ACK after {self.retries} retries")
            return
        self.retries += 1
        self.timeout = min(self.timeout * 2,
                           max(self.base_timeout, self.server.max_backoff))
        if self.base == 0:
            self._send_packet(encode_oack(self.acc.options))
        else:
            for seq in range(self.base, self.sent + 1):
                if self.sock is None:
                    return
                self._send_block(seq)
        self.deadline = self.server.now + self.timeout

    # ---------------------------------------------------------------- state

    @property
    def waiting_first(self) -> bool:
        """Still waiting for the ACK of the OACK or of the first window."""
        return self.base <= 1

    def sent_bytes(self) -> int:
        """Bytes of DATA sent so far (the highest block's end; for the log)."""
        if self.sent <= 0:
            return 0
        end = self.sent * self.blksize
        size = self.src.size
        return min(end, size) if size is not None else end


try:  # the optional C accelerator (setup.py builds it; see _tftp_pump.c)
    from ._tftp_pump import Pump, Window
except ImportError:  # pragma: no cover - exercised where it is not built
    Pump = Window = None


class PySession(_SessionCore, PyWindow):
    """A session whose window is pure Python (no accelerator)."""

    __slots__ = SESSION_SLOTS


if Window is not None:
    class CSession(_SessionCore, Window):
        """A session whose window the C pump can advance."""

        __slots__ = SESSION_SLOTS
else:  # pragma: no cover
    CSession = None

Session = CSession or PySession
