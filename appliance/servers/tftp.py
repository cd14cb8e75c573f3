"""Read-only TFTP server for the netboot tree (RFC 1350, 2347, 2348, 2349, 7440).

One thread runs an ``epoll`` loop (``poll`` where there is no epoll) over
non-blocking UDP sockets: the listener plus, per transfer, an ephemeral port
(the server TID) with two sockets: one connected to the client for the
transfer itself and an unconnected one that only sees foreign TIDs.  Decisions live in
:mod:`appliance.servers.tftp_engine` (pure, unit-tested), data sources in
:mod:`~appliance.servers.tftp_source`, the per-transfer window and
retransmission in :mod:`~appliance.servers.tftp_session`; this module moves
datagrams, keeps timers and reaps sessions.

With the optional C pump (``_tftp_pump.c``, see its header) the loop waits
in C without the GIL, and C sends the DATA that an in-window ACK of a started
transfer calls for, advancing the same window fields Python uses; it hands
everything else back (new requests, the OACK's ACK, the final ACK, client
ERRORs, foreign TIDs, timers, a truncated file).  Without it -- not built, or
``accelerate=False`` -- Python does those steps too; both loops pass the same
protocol suites.

Contracts and quirks:

- WRQ is refused with ERROR 2; unknown or misplaced opcodes get ERROR 4.
  ERRORs are never answered, nor are stray ACKs on the listener (tftp-hpa
  ACKs the ERROR it was refused with).  No exception escapes the loop: a
  handler that raises is logged and its session ends with ERROR 0.
- Refusals are sent from the listening socket (tftp-hpa, atftp and curl
  accept that); transfers run on their own socket.
- A duplicate RRQ (same client address and file) while its transfer still
  waits for the ACK of the OACK or of the first window is dropped; any
  other RRQ from that address replaces the old transfer.
- ``generate`` and ``on_event`` run on the loop thread: keep them fast.
- Retransmission: the negotiated ``timeout`` option or ``timeout`` seconds,
  doubled on each retry up to ``max_backoff``; after ``retries`` retries the
  session is reaped.  A timeout resends the whole unACKed window.  ACKs for
  blocks before the window are ignored (Sorcerer's Apprentice).  A datagram
  from a foreign TID gets ERROR 5 and the transfer continues.  A client
  ERROR ends the transfer without a reply.
- ``on_event(kind, client, path)``: ``tftp-start`` when DATA 1 first goes out
  (so OVMF's tsize probe, aborted with ERROR 8 after the OACK, yields no
  event), ``tftp-done`` on the final ACK, ``tftp-error`` on refusal, client
  abort after data started, or give-up.  Exceptions from it are logged.

Scale: per-packet work is O(1) in the number of sessions -- epoll reports
only ready sockets, sessions are found by file descriptor in a dict, and
each session has one live entry in the timer heap (its deadline moves in
place; a popped entry whose deadline has moved later is pushed back once).  Each
session holds two sockets and, for files above the in-memory cache limit,
one file descriptor: ``start()`` raises ``RLIMIT_NOFILE`` to its hard limit
when ``max_sessions`` needs more.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
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
    encode_error,
    opcode_of,
    parse_request,
)
from .tftp_loop import MAX_EVENTS, SPIN_MAX_SESSIONS, TftpLoop  # noqa: F401 - re-exported
from .tftp_poll import (
    NAP_MAX,
    SPIN_BACKOFF,
    SPIN_MISS_LIMIT,
    SPIN_SECONDS,
    _Poller,
    ensure_nofile,
    transfer_sockets,
    udp_socket,
)
from .tftp_session import Pump, PySession, Session

log = logging.getLogger("plowshare.tftp")
monotonic = time.monotonic

EventFn = Callable[[str, tuple[str, int], str], None]
RECV_SIZE = 65536  # bigger than any legal TFTP datagram
SEND_SIZE = 4 + te.BLKSIZE_MAX
LISTEN_RCVBUF = 4 << 20  # bytes; 1,000 PXE clients powered on at once
BURST = 64  # datagrams drained from the listener per readiness event
FDS_PER_SESSION = 3  # its two sockets and (large files) its file
FDS_SPARE = 64  # listener, wake pair, epoll, logging, the rest of the app

_Session = Session  # the old private name


class TftpServer(TftpLoop):
    """Serve files under ``root`` (and generated ones) read-only over TFTP.

    The constructor does no I/O.  ``start()`` binds ``bind`` (port 0 picks
    one; see :attr:`address`) and runs the loop in a daemon thread;
    ``stop()`` closes every socket and file and joins.  ``interface`` sets
    ``SO_BINDTODEVICE`` on the listener and every transfer socket.
    Beyond ``max_sessions`` concurrent transfers, requests get ERROR 0 "busy".
    ``busy_poll``: seconds the loop busy-polls for the next ACK after
    transfer traffic before it sleeps (see ``_Poller``; 0 turns it off).
    ``coalesce``: with the C pump, the longest nap in seconds before the
    loop waits while more than a few transfers run (``tftp_poll.nap_for``;
    0 never naps).
    ``accelerate``: let the optional C pump (``_tftp_pump.c``) send the DATA
    that in-window ACKs call for; where it is not built, or with False, the
    same steps run in Python.
    """

    def __init__(self, root: str, bind: tuple[str, int] = ("0.0.0.0", 69), *,
                 interface: str | None = None, generate: GenerateFn | None = None,
                 on_event: EventFn | None = None, timeout: float = 1.0,
                 retries: int = 5, max_backoff: float = 8.0, max_sessions: int = 1000,
                 busy_poll: float = SPIN_SECONDS, coalesce: float = NAP_MAX,
                 accelerate: bool = True):
        self.root, self.bind, self.interface = str(root), bind, interface
        self.busy_poll, self.coalesce = busy_poll, coalesce
        self.accelerated = accelerate and Pump is not None
        self._session_cls = Session if self.accelerated else PySession
        self._pump = None
        self.generate, self.on_event = generate, on_event
        self.timeout, self.retries, self.max_backoff = timeout, retries, max_backoff
        self.max_sessions = max_sessions
        self._sock: socket.socket | None = None
        self._poller: _Poller | None = None
        self._wake_r = self._wake_w = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._by_client: dict[tuple[str, int], Session] = {}
        self._by_fd: dict[int, Session] = {}  # connected socket -> session
        self._foreign_fd: dict[int, Session] = {}  # TID socket -> session
        self._timers: list = []
        self._seq = itertools.count()
        self.now = time.monotonic()  # loop time, refreshed once per poll
        self.recv_buf = bytearray(RECV_SIZE)
        self.send_view = memoryview(bytearray(SEND_SIZE))
        self.data_header = bytearray(4)  # DATA header for sendmsg, packed per block

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

    def _open(self) -> None:
        ensure_nofile(self.max_sessions * FDS_PER_SESSION + FDS_SPARE,
                      f"max_sessions {self.max_sessions}")
        self._sock = udp_socket(self.bind, self.interface, reuse=True)
        with contextlib.suppress(OSError):  # room for a burst of RRQs (capped by rmem_max)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTEN_RCVBUF)
        self._poller = _Poller(self.busy_poll)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._poller.register(self._sock.fileno())
        self._poller.register(self._wake_r.fileno())
        if self.accelerated:
            self._pump = Pump(self._poller.fileno(), SPIN_MISS_LIMIT, SPIN_BACKOFF)
        log.info("TFTP serving %s on %s:%d (%s loop)", self.root, *self.address,
                 "C-accelerated" if self.accelerated else "pure-Python")

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

    def _drain_listener(self) -> None:
        sock = self._sock
        for _ in range(BURST):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("recvfrom failed: %s", exc)
                return
            try:
                self._on_listener(data, addr[:2])
            except Exception:
                log.exception("TFTP request handler failed for %s", addr)

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
            if old.filename == req.filename and old.waiting_first:
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
            sock, conn = transfer_sockets(self.bind[0], client, self.interface)
        except OSError as exc:
            acc.close()
            return self._refuse(client, f"RRQ {req.filename!r}", Refuse(
                te.ERR_UNDEFINED, f"cannot open socket: {exc.strerror}"), req.filename)
        self.now = time.monotonic()
        session = self._session_cls(self, sock, conn, client, req, acc)
        if self._pump is not None:
            self._pump.add(session.fd, session)
        self._by_client[client] = session
        self._by_fd[session.fd] = session
        self._foreign_fd[session.tid_fd] = session
        self._poller.register(session.fd)
        self._poller.register(session.tid_fd)
        log.info("RRQ %r from %s:%d accepted: %s %d bytes, blksize %d, windowsize %d, "
                 "options %s", req.filename, *client, req.mode, acc.size, acc.blksize,
                 acc.windowsize, acc.options or "-")
        try:
            session.begin()
        except Exception:  # noqa: BLE001 - e.g. EIO reading block 1; logged by _failed
            self._failed(session)

    def _refuse(self, client, what: str, refusal: Refuse, path: str | None = None) -> None:
        """Answer ERROR from the listener; a named file also emits tftp-error."""
        log.info("%s from %s:%d refused: ERROR %d %s",
                 what, *client, refusal.code, refusal.message)
        self._sendto(self._sock, encode_error(refusal.code, refusal.message), client)
        if path is not None:
            self._emit("tftp-error", client, path)

    def _end(self, session: Session, event: str | None, reason: str | None) -> None:
        """Close a session once; log one line; emit ``event`` if given."""
        if session.sock is None:
            return
        if self._by_client.get(session.client) is session:
            del self._by_client[session.client]
        if self._by_fd.get(session.fd) is session:
            del self._by_fd[session.fd]
        if self._foreign_fd.get(session.tid_fd) is session:
            del self._foreign_fd[session.tid_fd]
        for fd in (session.fd, session.tid_fd):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._poller.unregister(fd)
        if self._pump is not None:
            self._pump.discard(session.fd)
        session.sock.close()
        session.conn.close()
        session.sock = None
        session.set_source(None)  # C's hold on the mapping, before it closes
        session.acc.close()
        secs = time.monotonic() - session.t0
        c, sent = session.client, session.sent_bytes()
        if reason is None:
            log.info("sent %r to %s:%d: %d bytes in %.3f s", session.acc.path, *c, sent, secs)
        else:
            log.info("transfer of %r to %s:%d ended: %s (%d bytes, %.3f s)",
                     session.acc.path, *c, reason, sent, secs)
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
        for session in list(self._by_fd.values()):
            self._end(session, None, "server stopping")
        self._timers.clear()
        self._pump = None
        for closable in (self._sock, self._wake_r, self._wake_w, self._poller):
            if closable is not None:
                closable.close()
        self._sock = self._wake_r = self._wake_w = self._poller = None
