"""Address allocation: which IP a MAC gets, offered and then bound.

The order of preference (what ISC dhcpd and dnsmasq users expect):

1. the host's reservation (``hosts.ip``), even outside the pool;
2. the address this MAC already holds (renewal, or a restart of the server);
3. the address the client asked for (option 50), if it is in the pool and free;
4. the next free address of the pool after the last one handed out, wrapping
   at the end (next fit, as Kea's iterative allocator): each probe is one
   indexed lookup, so a new client costs O(1) however many leases exist.
   Only when :data:`PROBE_LIMIT` probes in a row find nothing free (a nearly
   full pool) is the whole busy map read once to find a free address or
   prove the pool exhausted.  The position is a hint, never a fact: every
   pick is checked against the store and the pending writes.

An OFFER holds its address for ``offer_hold`` seconds so that two clients in
the same storm are not offered the same address.

Writes go through a :class:`~appliance.groupcommit.GroupCommitter` when one
is attached (the running DHCP server attaches its own), else straight to the
store, one transaction each.  Either way the decision and the write are
atomic, and every read sees the writes still waiting for their commit, so
two clients are never given one address.  :meth:`Allocator.bind_async` is
the only path to an ACK: it returns the lease with the :class:`Ticket` of
its write, and **the ACK may leave only once that ticket is done** (the
server sends it from :meth:`Ticket.then`).  :meth:`Allocator.bind` is the
blocking form.

"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time

from .config import DhcpConfig
from .groupcommit import BUSY_STATES, GroupCommitter, Ticket
from .model import Lease
from .store import Store

log = logging.getLogger("plowshare.dhcp")

DECLINE_PROBATION = 600  # seconds an address stays out of the pool after DHCPDECLINE
PROBE_LIMIT = 64  # next-fit probes before one full read of the busy map


def _ip(n: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", n))


class Allocator:
    def __init__(self, store: Store, dhcp: DhcpConfig, server_ip: str, clock=time.time,
                 writer: GroupCommitter | None = None):
        self.store = store
        self.dhcp = dhcp
        self.server_ip = server_ip
        self.clock = clock
        self.writer = writer
        self._next: int | None = None  # next-fit position (a hint)

    @property
    def view(self):
        """Where leases are read: the writer's pending view, else the store."""
        return self.writer if self.writer is not None else self.store

    def _pool_range(self) -> tuple[int, int] | None:
        if not self.dhcp.pool_first or not self.dhcp.pool_last:
            return None
        return (int(ipaddress.IPv4Address(self.dhcp.pool_first)),
                int(ipaddress.IPv4Address(self.dhcp.pool_last)))

    def in_pool(self, ip: str) -> bool:
        bounds = self._pool_range()
        try:
            n = struct.unpack("!I", socket.inet_aton(ip))[0]
        except OSError:
            return False
        return bounds is not None and bounds[0] <= n <= bounds[1]

    def _allowed(self, mac: str | None, ip: str, now: float) -> bool:
        """``ip`` is not the server's and nobody but ``mac`` holds or reserves it."""
        if ip == self.server_ip:
            return False
        lease = self.view.lease_for_ip(ip)
        if lease is not None and lease.state in BUSY_STATES and lease.expires > now \
                and lease.mac != mac:
            return False
        host = self.store.host_by_ip(ip)
        return host is None or host.mac == mac

    def _next_free(self, now: float) -> str | None:
        bounds = self._pool_range()
        if bounds is None:
            return None
        first, last = bounds
        n = self._next if self._next is not None and first <= self._next <= last else first
        for _probe in range(min(PROBE_LIMIT, last - first + 1)):
            if self._allowed(None, _ip(n), now):
                self._next = n + 1
                return _ip(n)
            n = n + 1 if n < last else first
        busy = self.view.busy_ips(now)  # nearly full: one full read decides
        for n in range(first, last + 1):
            ip = _ip(n)
            if ip not in busy and ip != self.server_ip:
                self._next = n + 1
                return ip
        return None

    def candidate(self, mac: str, requested: str | None, host=False) -> str | None:
        """The address this MAC should be offered now, or ``None`` (pool exhausted).

        ``host`` is the caller's lookup of ``store.host(mac)`` for this
        request (``False``: look it up here).
        """
        host = self.store.host(mac) if host is False else host
        if host is not None and host.ip:
            return host.ip
        now = self.clock()
        held = self.view.lease_for_mac(mac)
        if held and held.state != "declined" and self.in_pool(held.ip) \
                and self._allowed(mac, held.ip, now):
            return held.ip
        if requested and self.in_pool(requested) and self._allowed(mac, requested, now):
            return requested
        return self._next_free(now)

    def _put(self, lease: Lease, check_free_at: float | None) -> Ticket | None:
        """Decide-and-write atomically; ``None`` when refused."""
        if self.writer is not None:
            ticket = self.writer.put_lease(lease, check_free_at)
        else:
            ok = self.store.put_lease(lease, check_free_at)
            ticket = Ticket(done=True) if ok else None
        return ticket

    def offer(self, mac: str, requested: str | None, hostname: str | None = None,
              host=False) -> str | None:
        """Pick and hold an address for ``mac``; ``None`` means exhausted.

        The hold is queued, not awaited: an OFFER promises nothing durable.
        """
        for _attempt in range(3):  # a racing writer may take our pick; pick again
            ip = self.candidate(mac, requested, host)
            if ip is None:
                log.warning("%s pool exhausted, no offer", mac)
                return None
            now = self.clock()
            held = self.view.lease_for_ip(ip)
            if held and held.mac == mac and held.state == "bound" and held.expires > now:
                return ip  # keep the bound lease as it is
            lease = Lease(mac, ip, now + self.dhcp.offer_hold, "offered", hostname)
            if self._put(lease, check_free_at=now) is not None:
                return ip
            requested = None
        return None

    def bind_async(self, mac: str, ip: str, hostname: str | None = None,
                   host=False) -> tuple[Lease, Ticket] | None:
        """Queue the binding of ``ip`` to ``mac``; ``None`` means NAK (not theirs).

        The returned ticket is done once the lease is durable; an ACK for it
        must not leave before then (see :meth:`Ticket.then`).
        """
        host = self.store.host(mac) if host is False else host
        reserved = host is not None and host.ip == ip
        if not reserved and (host is not None and host.ip):
            return None  # the host has another reservation
        if not reserved and not self.in_pool(ip):
            return None
        if ip == self.server_ip:
            return None
        now = self.clock()
        lease = Lease(mac, ip, now + self.dhcp.lease_time, "bound", hostname)
        ticket = self._put(lease, check_free_at=now)
        return None if ticket is None else (lease, ticket)

    def bind(self, mac: str, ip: str, hostname: str | None = None) -> Lease | None:
        """Commit ``ip`` to ``mac`` durably (blocks for the commit); ``None``: NAK."""
        bound = self.bind_async(mac, ip, hostname)
        if bound is None or not bound[1].wait(timeout=30):
            return None
        return bound[0]

    def release(self, mac: str, ip: str) -> None:
        held = self.view.lease_for_ip(ip)
        if held and held.mac == mac:
            self._put(Lease(mac, ip, self.clock(), "released", held.hostname), None)

    def decline(self, mac: str, ip: str) -> bool:
        """The client found ``ip`` in use (RFC 2131 4.3.3): probation, if it is theirs.

        Accepted only from the MAC ``ip`` is offered to or bound by, so a
        forged DECLINE cannot take addresses out of the pool.  The probation
        entry is owned by nobody: not even the declining MAC is offered it again.
        """
        held = self.view.lease_for_ip(ip)
        if held is None or held.mac != mac or held.state not in ("offered", "bound"):
            return False
        self.probation(ip, "declined", DECLINE_PROBATION)
        return True

    def probation(self, ip: str, state: str, seconds: float) -> None:
        """Take ``ip`` out of the pool for ``seconds`` (``state``: declined | conflict)."""
        self._put(Lease("", ip, self.clock() + seconds, state), None)

    def end_probation(self, ip: str) -> bool:
        """Return a probation address to the pool early; False if it is not on probation."""
        held = self.view.lease_for_ip(ip)
        if held is None or held.mac or held.state not in ("declined", "conflict"):
            return False
        self._put(Lease("", ip, self.clock(), "released"), None)
        return True

    def pool_size(self) -> int:
        bounds = self._pool_range()
        return 0 if bounds is None else bounds[1] - bounds[0] + 1
