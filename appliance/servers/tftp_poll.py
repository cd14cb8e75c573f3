"""OS plumbing for the TFTP loop: the poller (epoll, with adaptive busy
polling), the transfer sockets and the file-descriptor limit.  No TFTP here."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux
    resource = None

log = logging.getLogger("plowshare.tftp")
monotonic = time.monotonic

SPIN_SECONDS = 20e-6  # default busy-poll budget (see _Poller)
SPIN_MISS_LIMIT = 16  # empty spins in a row before spinning pauses
SPIN_BACKOFF = 1.0  # seconds spinning stays off after that
NAP_PER_TRANSFER = 2.5e-6  # seconds of nap per running transfer (see nap_for)
NAP_MAX = 100e-6  # the longest nap, seconds


def nap_for(transfers: int, limit: float = NAP_MAX) -> float:
    """How long the loop naps before waiting when many transfers run.

    With n lock-step transfers, each ACK calls for one DATA.  A loop that
    sleeps in ``epoll_wait`` whenever it has caught up is woken once per ACK,
    and on a loaded machine those wakeups (the client's ``sendto`` waking the
    loop, often across CPUs) cost more than the DATA itself.  Napping first
    lets the ACKs that arrive meanwhile be handled as one batch: interrupt
    moderation, in software.  The nap grows with the number of transfers (the
    more there are, the more ACKs one nap collects and the less each waits
    relative to its share of the loop), capped at ``limit`` (0: never nap).

    Only the C pump naps (it sets the loop thread's timer slack to 1 us, so
    a nap lasts about what it asks): bench/tftp_bench.py, 20 atftp clients
    on 2 cores, ~1.15x the aggregate and ~30 % less server CPU per GiB.
    The pure-Python loop does not: ``time.sleep`` there adds the default
    50 us of timer slack, and the same policy measured 0.9x its aggregate
    (docs/bench-tftp.md)."""
    return min(limit, transfers * NAP_PER_TRANSFER) if limit > 0 else 0.0


class _Poller:
    """epoll where available, else poll; with adaptive busy polling.

    ``poll(seconds, maxevents)`` -> [(fd, events)]; ``maxevents`` bounds the
    array CPython allocates per epoll call (default 1023); level-triggered
    epoll reports the rest on the next call, in turn.

    ``wait(seconds, maxevents)`` is ``poll`` with busy polling: when the loop
    has just handled transfer traffic (it sets ``spin_armed``) it first polls
    without sleeping for up to ``spin_seconds`` (default :data:`SPIN_SECONDS`;
    0 never spins).  In a lock-step transfer
    the next ACK comes back within microseconds on a fast path (loopback, a
    rack's switch); sleeping in ``epoll_wait`` for it costs a context switch
    here and a wakeup on the client's send (perf on this loop: ~15 % of the
    server's time, and most of a round trip's latency), which is what Linux's
    ``SO_BUSY_POLL`` avoids for NIC queues.  Where spins keep coming back
    empty (a slow path: the ACK takes longer than the budget)
    :data:`SPIN_MISS_LIMIT` times in a row, spinning stops for
    :data:`SPIN_BACKOFF` seconds, so a slow network costs at most
    ``SPIN_MISS_LIMIT * spin_seconds`` of CPU per backoff period."""

    def __init__(self, spin_seconds: float = SPIN_SECONDS):
        self.spin_seconds = spin_seconds
        self.spin_armed = False
        self._misses = 0
        self._spin_off_until = 0.0
        if hasattr(select, "epoll"):
            self._p = select.epoll()
            self.poll = self._p.poll
            self.IN = select.EPOLLIN
        else:  # pragma: no cover - not on Linux
            self._p = select.poll()
            self.poll = lambda t, maxevents=-1: self._p.poll(t * 1000.0)
            self.IN = select.POLLIN

    def wait(self, seconds: float, maxevents: int) -> list:
        if self.spin_armed:
            self.spin_armed = False
            start = monotonic()
            if self.spin_seconds > 0 and start >= self._spin_off_until:
                poll, end = self.poll, start + self.spin_seconds
                while True:
                    ready = poll(0.0, maxevents)
                    if ready:
                        self._misses = 0
                        return ready
                    if monotonic() >= end:
                        break
                self._misses += 1
                if self._misses >= SPIN_MISS_LIMIT:
                    self._misses = 0
                    self._spin_off_until = monotonic() + SPIN_BACKOFF
        return self.poll(seconds, maxevents)

    def register(self, fd: int) -> None:
        self._p.register(fd, self.IN)

    def unregister(self, fd: int) -> None:
        self._p.unregister(fd)

    def fileno(self) -> int:
        """The epoll descriptor (the C pump waits on it)."""
        return self._p.fileno()

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._p.close()


def raise_nofile(needed: int) -> tuple[int, int] | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit if below ``needed``.

    Returns (old, new) when it changed something, else None."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = hard if hard != resource.RLIM_INFINITY else needed
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            return soft, new
    return None


def ensure_nofile(needed: int, why: str) -> None:
    """Raise ``RLIMIT_NOFILE`` towards ``needed``; log what changed, or a
    warning naming ``why`` when the hard limit is lower."""
    try:
        changed = raise_nofile(needed)
    except (OSError, ValueError) as exc:
        log.warning("cannot raise RLIMIT_NOFILE to %d: %s", needed, exc)
    else:
        if changed:
            log.info("RLIMIT_NOFILE soft limit raised from %d to %d (%s needs about %d)",
                     *changed, why, needed)
    if resource is not None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and soft < needed:
            log.warning("RLIMIT_NOFILE is %d, below the %d that %s needs: requests "
                        "beyond it get ERROR 0", soft, needed, why)


def udp_socket(addr: tuple[str, int], interface: str | None,
               reuse: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket (``SO_BINDTODEVICE`` when ``interface``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def transfer_sockets(host: str, client: tuple[str, int], interface: str | None
                     ) -> tuple[socket.socket, socket.socket]:
    """A transfer's TID: an unconnected socket on a fresh ephemeral port
    (bound without SO_REUSEADDR, so the port is unique) and a second socket
    on the same port connected to the client.  Linux delivers the client's
    datagrams to the connected one (exact match wins), which needs no
    address per packet (``recv_into``/``send``, cached route); the
    unconnected one sees only foreign TIDs, answered with ERROR 5."""
    sock = udp_socket((host, 0), interface)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        conn = udp_socket(sock.getsockname()[:2], interface, reuse=True)
        try:
            conn.connect(client)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        sock.close()
        raise
    return sock, conn
