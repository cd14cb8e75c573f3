"""Address allocation: which IP a MAC gets, offered and then bound.

Every call names the :class:`~appliance.model.Subnet` the request belongs
to (default: the one ``[dhcp] pool`` describes); its pools are its ranges,
taken in address order as one sequence.  The order of preference (what ISC
dhcpd and dnsmasq users expect):

1. the host's reservation (``hosts.ip``), even outside the pools, **if it is
   inside the request's subnet**; otherwise the reservation is ignored for
   this request and the host is treated like any client of that subnet
   (ISC: a fixed-address not valid on the client's network segment does
   not apply there);
2. the address this MAC already holds (renewal, or a restart of the server);
3. the address the client asked for (option 50), if it is in a pool and free;
4. the next free address of the pools after the last one handed out in this
   subnet, wrapping at the end of the last range to the start of the first
   (next fit, as Kea's iterative allocator): each probe is one
   indexed lookup, so a new client costs O(1) however many leases exist.
   Only when :data:`PROBE_LIMIT` probes in a row find nothing free (a nearly
   full pool) is the whole busy map read once to find a free address or
   prove the pool exhausted.  The position is a hint, never a fact: every
   pick is checked against the store and the pending writes.

An OFFER holds its address for ``offer_hold`` seconds so that two clients in
the same storm are not offered the same address.

Writes go through a :class:`~appliance.groupcommit.GroupCommitter` when one
is attached (the running DHCP server attaches its own), else straight to the
store, one transaction each.  Hosts are read from :attr:`Allocator.hosts`:
the store, or while the DHCP server runs its
:class:`~appliance.indexes.HostIndex`.  Either way the decision and the write are
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
from .log_edges import Edges
from .model import Lease, Subnet
from .store import Store

log = logging.getLogger("plowshare.dhcp")

DECLINE_PROBATION = 600  # seconds an address stays out of the pool after DHCPDECLINE
PROBE_LIMIT = 64  # next-fit probes before one full read of the busy map


def _ip(n: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", n))


def _num(ip: str) -> int | None:
    try:
        return struct.unpack("!I", socket.inet_aton(ip))[0]
    except OSError:
        return None


class Pools:
    """A subnet's ranges as one ordered sequence of integers (next-fit walks it)."""

    def __init__(self, subnet: Subnet):
        self.network = ipaddress.IPv4Network(subnet.network)
        self.key = str(self.network)  # the next-fit position's key
        self.ranges = [(int(ipaddress.IPv4Address(a)), int(ipaddress.IPv4Address(b)))
                       for a, b in sorted(subnet.pools, key=lambda p: _num(p[0]))]
        self.size = sum(b - a + 1 for a, b in self.ranges)

    def __contains__(self, n: int | None) -> bool:
        if n is None:
            return False
        for a, b in self.ranges:
            if a <= n <= b:
                return True
        return False

    def after(self, n: int) -> int:
        """The pool address following ``n`` (wrapping); ``n`` must be in a pool."""
        for i, (a, b) in enumerate(self.ranges):
            if a <= n < b:
                return n + 1
            if n == b:
                return self.ranges[(i + 1) % len(self.ranges)][0]
        return self.ranges[0][0]

    def all(self):
        for a, b in self.ranges:
            yield from range(a, b + 1)


class Allocator:
    def __init__(self, store: Store, dhcp: DhcpConfig, server_ip: str, clock=time.time,
                 writer: GroupCommitter | None = None):
        self.store = store
        self.dhcp = dhcp
        self.server_ip = server_ip
        self.clock = clock
        self.writer = writer
        self.hosts = store  # host() / host_by_ip(): the store, or the server's HostIndex
        self._next: dict[str, int] = {}  # next-fit position per subnet (a hint)
        self._pools: dict[Subnet, Pools] = {}
        self._default: tuple[DhcpConfig, Subnet] | None = None
        self._exhausted = Edges()  # subnets whose pools refused a DISCOVER (log_edges)

    @property
    def view(self):
        """Where leases are read: the writer's pending view, else the store."""
        return self.writer if self.writer is not None else self.store

    def default_subnet(self) -> Subnet:
        """The subnet ``[dhcp] pool`` alone describes (callers without a table)."""
        d = self.dhcp
        if self._default is None or self._default[0] is not d:
            pools = ((d.pool_first, d.pool_last),) if d.pool_first and d.pool_last else ()
            net = ipaddress.IPv4Network(f"{self.server_ip}/{d.prefix}", strict=False)
            self._default = (d, Subnet(str(net), pools))
        return self._default[1]

    def pools(self, subnet: Subnet | None) -> Pools:
        subnet = subnet or self.default_subnet()
        found = self._pools.get(subnet)
        if found is None:
            if len(self._pools) > 1024:  # reloads and store edits make new subnets
                self._pools.clear()
            found = self._pools[subnet] = Pools(subnet)
        return found

    def in_pool(self, ip: str, subnet: Subnet | None = None) -> bool:
        return _num(ip) in self.pools(subnet)

    def reservation(self, host, subnet: Subnet | None) -> str | None:
        """The host's reserved address if it applies in ``subnet`` (see module doc)."""
        if host is None or not host.ip:
            return None
        if ipaddress.IPv4Address(host.ip) not in self.pools(subnet).network:
            log.info("%s reservation %s is outside subnet %s: not used here", host.mac,
                     host.ip, (subnet or self.default_subnet()).network)
            return None
        return host.ip

    def _allowed(self, mac: str | None, ip: str, now: float) -> bool:
        """``ip`` is not the server's and nobody but ``mac`` holds or reserves it."""
        if ip == self.server_ip:
            return False
        lease = self.view.lease_for_ip(ip)
        if lease is not None and lease.state in BUSY_STATES and lease.expires > now \
                and lease.mac != mac:
            return False
        host = self.hosts.host_by_ip(ip)
        return host is None or host.mac == mac

    def _next_free(self, pools: Pools, now: float) -> str | None:
        if not pools.ranges:
            return None
        key = pools.key
        n = self._next.get(key)
        n = n if n in pools else pools.ranges[0][0]
        for _probe in range(min(PROBE_LIMIT, pools.size)):
            if self._allowed(None, _ip(n), now):
                self._next[key] = pools.after(n)
                return self._free(key, _ip(n))
            n = pools.after(n)
        busy = self.view.busy_ips(now)  # nearly full: one full read decides
        for n in pools.all():
            ip = _ip(n)
            if ip not in busy and ip != self.server_ip:
                self._next[key] = pools.after(n)
                return self._free(key, ip)
        return None

    def _free(self, key: str, ip: str) -> str:
        """``ip`` was found free in the pools of subnet ``key``: log the end of exhaustion."""
        edge = self._exhausted.note(key, False)
        if edge is not None:
            log.warning("pool of %s has a free address again (%s): %d DISCOVERs were "
                        "refused while it was exhausted", key, ip, edge.count)
        return ip

    def candidate(self, mac: str, requested: str | None, host=False,
                  subnet: Subnet | None = None) -> str | None:
        """The address this MAC should be offered now, or ``None`` (pools exhausted).

        ``host`` is the caller's lookup of ``hosts.host(mac)`` for this
        request (``False``: look it up here).
        """
        host = self.hosts.host(mac) if host is False else host
        reserved = self.reservation(host, subnet)
        if reserved:
            return reserved
        pools, now = self.pools(subnet), self.clock()
        held = self.view.lease_for_mac(mac)
        if held and held.state != "declined" and _num(held.ip) in pools \
                and self._allowed(mac, held.ip, now):
            return held.ip
        if requested and _num(requested) in pools and self._allowed(mac, requested, now):
            return requested
        return self._next_free(pools, now)

    def _put(self, lease: Lease, check_free_at: float | None,
             wake: bool = True) -> Ticket | None:
        """Decide-and-write atomically; ``None`` when refused.  ``wake=False``: nobody
        waits for this write (it rides the next group commit)."""
        if self.writer is not None:
            ticket = self.writer.put_lease(lease, check_free_at, wake)
        else:
            ok = self.store.put_lease(lease, check_free_at)
            ticket = Ticket(done=True) if ok else None
        return ticket

    def offer(self, mac: str, requested: str | None, hostname: str | None = None,
              host=False, subnet: Subnet | None = None) -> str | None:
        """Pick and hold an address for ``mac`` in ``subnet``; ``None``: exhausted.

        The hold is queued, not awaited: an OFFER promises nothing durable.
        """
        for _attempt in range(3):  # a racing writer may take our pick; pick again
            ip = self.candidate(mac, requested, host, subnet)
            if ip is None:
                key = self.pools(subnet).key
                if self._exhausted.note(key, True) is not None:
                    log.warning("%s pool of %s exhausted, no offer (no more lines until an "
                                "address frees up)", mac, key)
                return None
            now = self.clock()
            held = self.view.lease_for_ip(ip)
            if held and held.mac == mac and held.state == "bound" and held.expires > now:
                return ip  # keep the bound lease as it is
            lease = Lease(mac, ip, now + self.dhcp.offer_hold, "offered", hostname)
            if self._put(lease, check_free_at=now, wake=False) is not None:
                return ip
            requested = None
        return None

    def bind_async(self, mac: str, ip: str, hostname: str | None = None,
                   host=False, subnet: Subnet | None = None,
                   lease_time: int | None = None) -> tuple[Lease, Ticket] | None:
        """Queue the binding of ``ip`` to ``mac``; ``None`` means NAK (not theirs).

        ``lease_time`` defaults to ``[dhcp] lease_time``.  The returned ticket
        is done once the lease is durable; an ACK for it must not leave
        before then (see :meth:`Ticket.then`).
        """
        host = self.hosts.host(mac) if host is False else host
        reserved = self.reservation(host, subnet)
        if reserved is not None and reserved != ip:
            return None  # the host has another reservation in this subnet
        if reserved is None and not self.in_pool(ip, subnet):
            return None
        if ip == self.server_ip:
            return None
        now = self.clock()
        lease = Lease(mac, ip, now + (lease_time or self.dhcp.lease_time), "bound", hostname)
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

    def pool_size(self, subnet: Subnet | None = None) -> int:
        return self.pools(subnet).size
