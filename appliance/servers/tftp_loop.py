"""The TFTP server's loop: waiting, dispatching ready sockets to sessions,
and timers -- in Python, or with the optional C pump (``_tftp_pump.c``)
doing the waiting and the steady-state ACK -> DATA step.

A mixin of :class:`appliance.servers.tftp.TftpServer`, which owns the
sockets, sessions and requests this loop dispatches to.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time

from .tftp_engine import ERR_UNDEFINED, encode_error
from .tftp_poll import nap_for
from .tftp_session import INF, Session

log = logging.getLogger("plowshare.tftp")
monotonic = time.monotonic

MAX_EVENTS = 256  # ready sockets handled per poll
SPIN_MAX_SESSIONS = 4  # busy polling only while at most this many transfers run
PUMP_READY, PUMP_DATAGRAM, PUMP_REARM, PUMP_FAULT = 0, 1, 2, 3  # as in _tftp_pump.c


class TftpLoop:
    """Run the loop of a ``TftpServer`` (see the module doc)."""

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
        if self._pump is not None:
            return self._run_pumped(max_wait)
        timers, wait = self._timers, max_wait
        if timers:
            wait = timers[0][0] - self.now  # self.now: taken after the last poll
            if wait > max_wait:
                wait = max_wait
            elif wait < 0.0:
                wait = 0.0
        poller, by_fd, buf = self._poller, self._by_fd, self.recv_buf
        ready = poller.wait(wait, MAX_EVENTS)
        self.now = now = monotonic()
        # transfer traffic arms the busy poll -- only with few transfers: with
        # many, the next datagram is usually queued already, and spinning
        # would take CPU from whatever shares the machine
        spin = len(by_fd) <= SPIN_MAX_SESSIONS
        for fd, _ in ready:
            session = by_fd.get(fd)
            if session is not None:
                poller.spin_armed = spin
                try:
                    session.on_readable(buf)
                except Exception:  # noqa: BLE001 - logged by _failed
                    self._failed(session)
            else:
                self._on_other_fd(fd)
        if timers and timers[0][0] <= now:
            self._fire_timers(now)

    def _run_pumped(self, max_wait: float) -> None:
        """``run_once`` with the C pump: it waits (GIL released) and serves
        in-window ACKs of started transfers until the next timer or until
        something needs Python, which it hands back (see ``_tftp_pump.c``)."""
        timers, until = self._timers, monotonic() + max_wait
        if timers and timers[0][0] < until:
            until = timers[0][0]
        outcomes = self._pump.run(until, MAX_EVENTS, self._poller.spin_seconds,
                                  SPIN_MAX_SESSIONS, nap_for(len(self._by_fd), self.coalesce))
        self.now = now = monotonic()
        for fd, kind, data, session in outcomes:
            if kind == PUMP_READY:
                if (session := self._by_fd.get(fd)) is not None:
                    try:
                        session.on_readable(self.recv_buf)
                    except Exception:  # noqa: BLE001 - logged by _failed
                        self._failed(session)
                else:
                    self._on_other_fd(fd)
            elif session.sock is not None:  # (it may have ended in this batch)
                try:
                    if kind == PUMP_DATAGRAM:
                        session.on_datagram(data, len(data))
                    elif kind == PUMP_REARM:
                        if session.deadline < session.armed_at:
                            self._arm(session)
                    else:  # PUMP_FAULT
                        session.on_fault()
                except Exception:  # noqa: BLE001 - logged by _failed
                    self._failed(session)
        if timers and timers[0][0] <= now:
            self._fire_timers(now)

    def _on_other_fd(self, fd: int) -> None:
        """A readable fd that is not a transfer's connected socket."""
        if (session := self._foreign_fd.get(fd)) is not None:
            try:
                session.on_tid_readable(self.recv_buf)
            except Exception:  # noqa: BLE001 - logged by _failed
                self._failed(session)
        elif self._sock is not None and fd == self._sock.fileno():
            self._drain_listener()
        elif self._wake_r is not None and fd == self._wake_r.fileno():
            with contextlib.suppress(OSError):
                self._wake_r.recv(64)

    def _failed(self, session: Session) -> None:
        log.exception("TFTP session for %s:%d failed", *session.client)
        if session.sock is not None:
            session._send_packet(encode_error(ERR_UNDEFINED, "internal error"))
        self._end(session, "tftp-error", "internal error")

    def _arm(self, session: Session) -> None:
        """Queue the session's deadline; its older heap entries become stale."""
        tid = next(self._seq)
        session.armed_at, session.timer_id = session.deadline, tid
        heapq.heappush(self._timers, (session.deadline, tid, session))

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, tid, session = heapq.heappop(timers)
            if session.timer_id != tid or session.sock is None:
                continue  # stale entry, or the session ended since
            session.armed_at = INF
            if session.deadline > now:  # progress was made: wait again
                self._arm(session)
                continue
            try:
                session.on_timer()
            except Exception:  # noqa: BLE001 - logged by _failed
                self._failed(session)
                continue
            if session.sock is not None:
                self._arm(session)
