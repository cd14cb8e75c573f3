"""Read-only TFTP server for the netboot tree (RFC 1350, 2347, 2348, 2349).

One thread runs a ``selectors`` loop over non-blocking UDP sockets: the
listener plus one ephemeral-port socket per transfer (the server TID).
Decisions live in :mod:`appliance.servers.tftp_engine` (pure, unit-tested);
this module only moves datagrams, keeps timers and reaps sessions.

Contracts and quirks:

- WRQ is refused with ERROR 2; unknown or misplaced opcodes get ERROR 4.
  ERRORs are never answered, nor are stray ACKs on the listener (tftp-hpa
  ACKs the ERROR it was refused with).  No exception escapes the loop: a
  handler that raises is logged and its session ends with ERROR 0.
- Refusals are sent from the listening socket (tftp-hpa, atftp and curl
  accept that); transfers run on their own socket.
- A duplicate RRQ (same client address and file) while its transfer still
  waits for the ACK of the OACK or of DATA 1 is dropped; any other RRQ from
  that address replaces the old transfer.
- ``generate`` and ``on_event`` run on the loop thread: keep them fast.
- Retransmission: the negotiated ``timeout`` option or ``timeout`` seconds,
  doubled on each retry up to ``max_backoff``; after ``retries`` retries the
  session is reaped.  ACKs for older blocks are ignored (Sorcerer's
  Apprentice).  A datagram from a foreign TID gets ERROR 5 and the transfer
  continues.  A client ERROR ends the transfer without a reply.
- ``on_event(kind, client, path)``: ``tftp-start`` when DATA 1 first goes out
  (so OVMF's tsize probe, aborted with ERROR 8 after the OACK, yields no
  event), ``tftp-done`` on the final ACK, ``tftp-error`` on refusal, client
  abort after data started, or give-up.  Exceptions from it are logged.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from . import tftp_engine as te
from .tftp_engine import (
    Accept,
    GenerateFn,
    Refuse,
    decide_rrq,
    encode_data,
    encode_error,
    encode_oack,
    opcode_of,
    parse_ack,
    parse_error,
    parse_request,
)

log = logging.getLogger("plowshare.tftp")

EventFn = Callable[[str, tuple[str, int], str], None]
RECV_SIZE = 65536  # bigger than any legal TFTP datagram
BURST = 64  # datagrams drained per readiness event, for fairness


class _Session:
    """One transfer: its socket, source, the last packet sent and a timer."""

    def __init__(self, server: TftpServer, sock: socket.socket, client, req, acc: Accept):
        self.server, self.sock, self.client, self.acc = server, sock, client, acc
        self.filename = req.filename  # as asked, to spot duplicate RRQs
        self.armed = False  # has an entry in the server's timer heap
        self.base_timeout = float(acc.timeout or server.timeout)
        self.timeout = self.base_timeout
        self.block = 0  # block number (mod 65536) of the packet awaiting ACK
        self.last = b""  # that packet, for retransmission
        self.final = False  # the last packet sent was the final DATA
        self.started = False  # DATA 1 has gone out
        self.retries = 0
        self.deadline = 0.0
        self.sent_bytes = 0
        self.t0 = time.monotonic()

    def begin(self) -> None:
        if self.acc.options:
            self._send(encode_oack(self.acc.options))
        else:
            self._next_data()

    def _next_data(self) -> None:
        data = self.acc.source.read(self.acc.blksize)
        self.block = (self.block + 1) % te.BLOCK_MODULO
        self.final = len(data) < self.acc.blksize
        self.sent_bytes += len(data)
        if not self.started:
            self.started = True
            self.server._emit("tftp-start", self.client, self.acc.path)
        self._send(encode_data(self.block, data))

    def _send(self, packet: bytes) -> None:
        self.last, self.retries, self.timeout = packet, 0, self.base_timeout
        self._transmit()

    def _transmit(self) -> None:
        self.server._sendto(self.sock, self.last, self.client)  # lost: the timer retries
        self.deadline = time.monotonic() + self.timeout
        self.server._arm(self)

    def on_datagram(self, data: bytes, addr) -> None:
        """Handle one datagram that arrived on this transfer's socket."""
        op = opcode_of(data)
        if addr != self.client:
            if op != te.OP_ERROR:
                self.server._sendto(self.sock, encode_error(
                    te.ERR_UNKNOWN_TID, "unknown transfer ID"), addr)
            log.info("datagram from foreign TID %s:%d on transfer to %s:%d",
                     *addr, *self.client)
            return
        if op == te.OP_ERROR:
            code, msg = parse_error(data)
            self.server._end(self, "tftp-error" if self.started else None,
                             f"client sent ERROR {code} {msg!r}")
            return
        block = parse_ack(data) if op == te.OP_ACK else None
        if block is None:
            self.server._sendto(self.sock, encode_error(
                te.ERR_ILLEGAL_OP, "illegal TFTP operation"), addr)
            self.server._end(self, "tftp-error", f"illegal packet (opcode {op})")
        elif block == self.block:
            if self.final:
                self.server._end(self, "tftp-done", None)
            else:
                self._next_data()
        # else: an ACK for an older block - send nothing (Sorcerer's Apprentice)

    def on_timer(self) -> None:
        """The deadline passed: retransmit with backoff, or give up."""
        if self.retries >= self.server.retries:
            self.server._end(self, "tftp-error", f"no ACK after {self.retries} retries")
            return
        self.retries += 1
        self.timeout = min(self.timeout * 2, max(self.base_timeout, self.server.max_backoff))
        self._transmit()


class TftpServer:
    """Serve files under ``root`` (and generated ones) read-only over TFTP.

    The constructor does no I/O.  ``start()`` binds ``bind`` (port 0 picks
    one; see :attr:`address`) and runs the loop in a daemon thread;
    ``stop()`` closes every socket and file and joins.  ``interface`` sets
    ``SO_BINDTODEVICE`` on the listener and every transfer socket.
    Beyond ``max_sessions`` concurrent transfers, requests get ERROR 0 "busy".
    """

    def __init__(self, root: str, bind: tuple[str, int] = ("0.0.0.0", 69), *,
                 interface: str | None = None, generate: GenerateFn | None = None,
                 on_event: EventFn | None = None, timeout: float = 1.0,
                 retries: int = 5, max_backoff: float = 8.0, max_sessions: int = 1000):
        self.root, self.bind, self.interface = str(root), bind, interface
        self.generate, self.on_event = generate, on_event
        self.timeout, self.retries, self.max_backoff = timeout, retries, max_backoff
        self.max_sessions = max_sessions
        self._sock: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._by_client: dict[tuple[str, int], _Session] = {}
        self._timers: list = []
        self._seq = itertools.count()

    # ------------------------------------------------------------ lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); only valid after :meth:`start`."""
        if self._sock is None:
            raise RuntimeError("TftpServer not started")
        return self._sock.getsockname()[:2]

    @property
    def sessions(self) -> int:
        """Number of transfers in progress."""
        return len(self._by_client)

    def _new_socket(self, addr: tuple[str, int], reuse: bool = False) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                self.interface.encode())
            sock.bind(addr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _open(self) -> None:
        self._sock = self._new_socket(self.bind, reuse=True)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        log.info("TFTP serving %s on %s:%d", self.root, *self.address)

    def start(self) -> None:
        """Bind and run the loop in a daemon thread."""
        self._stopping.clear()
        self._open()
        self._thread = threading.Thread(target=self._loop, name="tftp", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        """Bind (unless started) and run the loop in the calling thread."""
        if self._sock is None:
            self._open()
        self._loop()

    def stop(self) -> None:
        """Stop the loop, close every socket and file, join the thread."""
        self._stopping.set()
        with contextlib.suppress(OSError, AttributeError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def is_alive(self) -> bool:
        """True while the loop thread runs (the app's supervisor polls this)."""
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        """Run until stopped; 100 failed iterations in a row end the thread
        (its supervisor restarts it) instead of spinning."""
        failures = 0
        try:
            while not self._stopping.is_set() and failures < 100:
                try:
                    self.run_once()
                    failures = 0
                except Exception:  # never let one bad datagram end serving
                    failures += 1
                    log.exception("TFTP loop iteration failed (%d in a row)", failures)
                    self._stopping.wait(0.01)
        finally:
            self._close_all()

    def run_once(self, max_wait: float = 1.0) -> None:
        """Wait for traffic or the next timer (at most ``max_wait`` s), handle it."""
        wait = max_wait
        if self._timers:
            wait = min(max_wait, max(0.0, self._timers[0][0] - time.monotonic()))
        for key, _ in self._sel.select(wait):
            if key.data == "wake":
                self._wake_r.recv(64)
            elif key.data is None:
                self._drain(self._sock, self._on_listener)
            else:
                self._drain(key.fileobj, key.data.on_datagram, key.data)
        self._fire_timers(time.monotonic())

    def _drain(self, sock, handler, session: _Session | None = None) -> None:
        for _ in range(BURST):
            if session is not None and session.sock is None:
                return  # ended by the previous datagram
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("recvfrom failed: %s", exc)
                return
            try:
                handler(data, addr[:2])
            except Exception:
                log.exception("TFTP handler failed for %s", addr)
                if session is not None:
                    self._sendto(sock, encode_error(te.ERR_UNDEFINED, "internal error"), addr)
                    self._end(session, "tftp-error", "internal error")
                    return

    def _arm(self, session: _Session) -> None:
        """Keep one heap entry per session; a moved deadline is re-queued lazily."""
        if not session.armed:
            session.armed = True
            heapq.heappush(self._timers, (session.deadline, next(self._seq), session))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, session = heapq.heappop(self._timers)
            session.armed = False
            if session.sock is None:
                continue  # ended since
            if session.deadline > now:  # progress was made: wait again
                self._arm(session)
                continue
            try:
                session.on_timer()
            except Exception:
                log.exception("TFTP timer failed for %s", session.client)
                self._end(session, "tftp-error", "internal error")

    # ------------------------------------------------------------- requests

    def _on_listener(self, data: bytes, client: tuple[str, int]) -> None:
        op = opcode_of(data)
        if op in (te.OP_ERROR, te.OP_ACK):  # see the module doc
            log.debug("opcode %s from %s:%d on the listener ignored", op, *client)
            return
        if op == te.OP_WRQ:
            return self._refuse(client, "WRQ", Refuse(te.ERR_ACCESS, "read-only server"))
        if op != te.OP_RRQ:
            return self._refuse(client, f"opcode {op}",
                                Refuse(te.ERR_ILLEGAL_OP, "illegal TFTP operation"))
        req = parse_request(data)
        if isinstance(req, Refuse):
            return self._refuse(client, "RRQ", req)
        old = self._by_client.get(client)
        if old is not None:
            if old.filename == req.filename and old.sent_bytes <= old.acc.blksize:
                log.debug("duplicate RRQ %r from %s:%d dropped", req.filename, *client)
                return
            self._end(old, None, "replaced by a new request")
        what = f"RRQ {req.filename!r}"
        if len(self._by_client) >= self.max_sessions:
            return self._refuse(client, what, Refuse(te.ERR_UNDEFINED, "busy"), req.filename)
        decision = decide_rrq(req.filename, req.mode, req.options, self.root,
                              self.generate, client)
        if isinstance(decision, Refuse):
            return self._refuse(client, what, decision, req.filename)
        self._begin(client, req, decision)

    def _begin(self, client, req, acc: Accept) -> None:
        try:
            sock = self._new_socket((self.bind[0], 0))
        except OSError as exc:
            acc.close()
            return self._refuse(client, f"RRQ {req.filename!r}", Refuse(
                te.ERR_UNDEFINED, f"cannot open socket: {exc.strerror}"), req.filename)
        session = _Session(self, sock, client, req, acc)
        self._by_client[client] = session
        self._sel.register(sock, selectors.EVENT_READ, session)
        log.info("RRQ %r from %s:%d accepted: %s %d bytes, blksize %d, options %s",
                 req.filename, *client, req.mode, acc.size, acc.blksize, acc.options or "-")
        try:
            session.begin()
        except Exception:  # e.g. EIO reading the first block
            log.exception("starting %r for %s:%d failed", req.filename, *client)
            self._sendto(sock, encode_error(te.ERR_UNDEFINED, "internal error"), client)
            self._end(session, "tftp-error", "internal error")

    def _refuse(self, client, what: str, refusal: Refuse, path: str | None = None) -> None:
        """Answer ERROR from the listener; a named file also emits tftp-error."""
        log.info("%s from %s:%d refused: ERROR %d %s",
                 what, *client, refusal.code, refusal.message)
        self._sendto(self._sock, encode_error(refusal.code, refusal.message), client)
        if path is not None:
            self._emit("tftp-error", client, path)

    def _end(self, session: _Session, event: str | None, reason: str | None) -> None:
        """Close a session once; log one line; emit ``event`` if given."""
        if session.sock is None:
            return
        if self._by_client.get(session.client) is session:
            del self._by_client[session.client]
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(session.sock)
        session.sock.close()
        session.sock = None
        session.acc.close()
        secs = time.monotonic() - session.t0
        c = session.client
        if reason is None:
            log.info("sent %r to %s:%d: %d bytes in %.3f s",
                     session.acc.path, *c, session.sent_bytes, secs)
        else:
            log.info("transfer of %r to %s:%d ended: %s (%d bytes, %.3f s)",
                     session.acc.path, *c, reason, session.sent_bytes, secs)
        if event:
            self._emit(event, c, session.acc.path)

    @staticmethod
    def _sendto(sock, packet: bytes, addr) -> None:
        try:
            sock.sendto(packet, addr)
        except OSError as exc:  # lost like any datagram
            log.debug("send to %s failed: %s", addr, exc)

    def _emit(self, kind: str, client, path: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, client, path)
        except Exception:
            log.exception("on_event(%r, %s, %r) raised", kind, client, path)

    def _close_all(self) -> None:
        for session in list(self._by_client.values()):
            self._end(session, None, "server stopping")
        self._timers.clear()
        for closable in (self._sock, self._wake_r, self._wake_w, self._sel):
            if closable is not None:
                closable.close()
        self._sock = self._wake_r = self._wake_w = self._sel = None
