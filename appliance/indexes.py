"""In-memory indexes of the store's hosts and leases, for the DHCP hot path.

The DHCP loop answers from these instead of reading SQLite for every packet
(before them: about six indexed reads per packet).  Neither is a second
source of truth -- each is the store's own rows, kept coherent by one rule:

* :class:`HostIndex` holds every ``hosts`` row by MAC and by reserved IP.
  Its owner calls :meth:`HostIndex.refresh` once per batch of packets with
  ``hosts_generation`` (:meth:`Store.generations`), a counter SQLite
  triggers bump on every change of a ``hosts`` row whoever writes it (this
  process, the CLI, an importer); when it moved, the hosts written since
  are re-read.  A host written before a batch started is seen by that batch.
* :class:`LeaseIndex` holds the *committed* ``leases`` table by IP and by
  MAC, with the store's rules (one row per IP; a MAC's write drops its row
  at any other IP; ownerless probation rows are found by IP only).  It is
  loaded from the store and then changed only by :meth:`LeaseIndex.apply`
  of writes the store reported committed -- the
  :class:`~appliance.groupcommit.GroupCommitter`, the one lease writer while
  the DHCP server runs, calls it after each commit returned, and reloads it
  when ``leases_generation`` says something else wrote leases or when a
  commit refused a write (the store knew better).

A stale index can cost a refused write (then a NAK instead of an ACK),
never a double allocation: the store re-checks every lease at commit.
"""

from __future__ import annotations

from .model import Host, Lease
from .store_changes import HOSTS_GENERATION

BUSY_STATES = ("offered", "bound", "declined", "conflict")


class HostIndex:
    """``store``'s hosts by MAC and by reserved IP.  ``refresh()`` does the I/O."""

    def __init__(self, store):
        self.store = store
        self.generation: int | None = None
        self._maps: tuple[dict[str, Host], dict[str, Host]] = ({}, {})
        self.loads = 0  # full reads so far (tests and benchmarks look)

    def refresh(self, generation: int | None = None) -> None:
        """Catch up with ``hosts_generation`` (default: read it now).

        Only the hosts written since the last refresh are re-read (their MACs
        are in ``host_changes``), so an install wave flipping netboot on one
        host at a time costs one indexed read each, not a read of every host.
        """
        if generation is None:
            generation = self.store.generations().get(HOSTS_GENERATION, 0)
        if generation == self.generation:
            return
        if self.generation is None or generation < self.generation:  # first, or a new store
            hosts = self.store.hosts()  # after the counter: a later write moves it again
            self._maps = ({h.mac: h for h in hosts}, {h.ip: h for h in hosts if h.ip})
            self.loads += 1
        else:
            macs = self.store.host_changes(self.generation)
            fresh = {h.mac: h for h in self.store.hosts_by_mac(macs)}
            by_mac, by_ip = dict(self._maps[0]), dict(self._maps[1])
            for mac in macs:
                old = by_mac.pop(mac, None)
                if old is not None and old.ip and by_ip.get(old.ip) is old:
                    del by_ip[old.ip]
            for host in fresh.values():
                by_mac[host.mac] = host
                if host.ip:
                    by_ip[host.ip] = host
            self._maps = (by_mac, by_ip)  # one assignment: readers see old or new
        self.generation = generation

    def host(self, mac: str) -> Host | None:
        return self._maps[0].get(mac)

    def host_by_ip(self, ip: str) -> Host | None:
        return self._maps[1].get(ip)

    def reserved_ips(self) -> dict[str, str]:
        """ip -> mac of every host reservation (as :meth:`Store.reserved_ips`)."""
        return {ip: h.mac for ip, h in self._maps[1].items()}


class LeaseIndex:
    """The committed ``leases`` rows by IP and by MAC (no locking: the owner locks)."""

    def __init__(self):
        self._ip: dict[str, Lease] = {}
        self._mac: dict[str, str] = {}  # mac -> ip of its row (the latest expiry wins)

    def load(self, leases: list[Lease]) -> None:
        """Replace the contents with ``leases`` (every row of the table)."""
        by_ip = {lease.ip: lease for lease in leases}
        by_mac: dict[str, str] = {}
        for lease in leases:
            cur = by_mac.get(lease.mac)
            if lease.mac and (cur is None or by_ip[cur].expires < lease.expires):
                by_mac[lease.mac] = lease.ip
        self._ip, self._mac = by_ip, by_mac

    def apply(self, lease: Lease) -> None:
        """``lease`` was committed: what :meth:`Store.put_lease` did to the table."""
        if lease.mac:
            old = self._mac.get(lease.mac)
            if old is not None and old != lease.ip:
                self._ip.pop(old, None)
        prev = self._ip.get(lease.ip)
        if prev is not None and prev.mac and prev.mac != lease.mac \
                and self._mac.get(prev.mac) == lease.ip:
            del self._mac[prev.mac]
        self._ip[lease.ip] = lease
        if lease.mac:
            self._mac[lease.mac] = lease.ip

    def for_ip(self, ip: str) -> Lease | None:
        return self._ip.get(ip)

    def for_mac(self, mac: str) -> Lease | None:
        ip = self._mac.get(mac)
        return self._ip.get(ip) if ip is not None else None

    def busy(self, now: float) -> dict[str, str]:
        """ip -> mac of every unexpired lease in a busy state (a full scan)."""
        return {ip: lease.mac for ip, lease in self._ip.items()
                if lease.state in BUSY_STATES and lease.expires > now}

    def __len__(self) -> int:
        return len(self._ip)
