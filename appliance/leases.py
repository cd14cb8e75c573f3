"""Address allocation: which IP a MAC gets, offered and then bound.

The order of preference (what ISC dhcpd and dnsmasq users expect):

1. the host's reservation (``hosts.ip``), even outside the pool;
2. the address this MAC already holds (renewal, or a restart of the server);
3. the address the client asked for (option 50), if it is in the pool and free;
4. the lowest free address of the pool.

An OFFER holds its address for ``offer_hold`` seconds so that two clients in
the same storm are not offered the same address.  :meth:`Allocator.bind`
is the only path to an ACK; it re-checks the address and commits the lease
durably in the same transaction before it returns.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from .config import DhcpConfig
from .model import Lease
from .store import Store

log = logging.getLogger("plowshare.dhcp")

DECLINE_PROBATION = 600  # seconds an address stays out of the pool after DHCPDECLINE


class Allocator:
    def __init__(self, store: Store, dhcp: DhcpConfig, server_ip: str, clock=time.time):
        self.store = store
        self.dhcp = dhcp
        self.server_ip = server_ip
        self.clock = clock

    def _pool(self):
        if not self.dhcp.pool_first or not self.dhcp.pool_last:
            return
        first = int(ipaddress.IPv4Address(self.dhcp.pool_first))
        last = int(ipaddress.IPv4Address(self.dhcp.pool_last))
        for n in range(first, last + 1):
            yield str(ipaddress.IPv4Address(n))

    def in_pool(self, ip: str) -> bool:
        if not self.dhcp.pool_first or not self.dhcp.pool_last:
            return False
        n = ipaddress.IPv4Address(ip)
        return (ipaddress.IPv4Address(self.dhcp.pool_first) <= n
                <= ipaddress.IPv4Address(self.dhcp.pool_last))

    def _allowed(self, mac: str, ip: str, busy: dict[str, str]) -> bool:
        if ip == self.server_ip:
            return False
        owner = busy.get(ip)
        return owner is None or owner == mac

    def candidate(self, mac: str, requested: str | None) -> str | None:
        """The address this MAC should be offered now, or ``None`` (pool exhausted)."""
        host = self.store.host(mac)
        if host is not None and host.ip:
            return host.ip
        now = self.clock()
        busy = self.store.busy_ips(now)
        held = self.store.lease_for_mac(mac)
        if held and held.state != "declined" and self.in_pool(held.ip) \
                and self._allowed(mac, held.ip, busy):
            return held.ip
        if requested and self.in_pool(requested) and self._allowed(mac, requested, busy):
            return requested
        for ip in self._pool():
            if ip not in busy and ip != self.server_ip:
                return ip
        return None

    def offer(self, mac: str, requested: str | None, hostname: str | None = None) -> str | None:
        """Pick and hold an address for ``mac``; ``None`` means exhausted."""
        for _attempt in range(3):  # a racing writer may take our pick; pick again
            ip = self.candidate(mac, requested)
            if ip is None:
                log.warning("%s pool exhausted, no offer", mac)
                return None
            now = self.clock()
            held = self.store.lease_for_ip(ip)
            if held and held.mac == mac and held.state == "bound" and held.expires > now:
                return ip  # keep the bound lease as it is
            lease = Lease(mac, ip, now + self.dhcp.offer_hold, "offered", hostname)
            if self.store.put_lease(lease, check_free_at=now):
                return ip
            requested = None
        return None

    def bind(self, mac: str, ip: str, hostname: str | None = None) -> Lease | None:
        """Commit ``ip`` to ``mac`` durably; ``None`` means NAK (not theirs)."""
        host = self.store.host(mac)
        reserved = host is not None and host.ip == ip
        if not reserved and (host is not None and host.ip):
            return None  # the host has another reservation
        if not reserved and not self.in_pool(ip):
            return None
        if ip == self.server_ip:
            return None
        now = self.clock()
        lease = Lease(mac, ip, now + self.dhcp.lease_time, "bound", hostname)
        if not self.store.put_lease(lease, check_free_at=now):
            return None
        return lease

    def release(self, mac: str, ip: str) -> None:
        held = self.store.lease_for_ip(ip)
        if held and held.mac == mac:
            self.store.put_lease(Lease(mac, ip, self.clock(), "released", held.hostname))

    def decline(self, mac: str, ip: str) -> None:
        """The client found ``ip`` in use: keep it out of the pool for a while."""
        held = self.store.lease_for_ip(ip)
        if held is None or held.mac == mac:
            # owned by nobody, so not even the declining MAC is offered it again
            self.store.put_lease(Lease("", ip, self.clock() + DECLINE_PROBATION, "declined"))
