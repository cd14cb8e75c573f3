"""Which subnet a DHCP request belongs to, and what its reply carries.

:class:`SubnetTable` is the DHCP path's one view of config subnets (the
served one plus ``[[dhcp.subnet]]``) and store subnets (added at runtime).
Per packet it costs a scan of a few integer ranges; the store is consulted
once per batch (:meth:`SubnetTable.refresh` compares one generation counter)
and re-read only when that counter moved.  Its constructor does no I/O.

Subnet choice follows ISC dhcpd:

* ``giaddr`` set: the subnet containing the relay's address; none -> the
  request is ignored (one log line per relay address);
* else ``ciaddr`` set and inside a known subnet: that subnet (a client of a
  relayed subnet renews by unicast, without a relay in between);
* else the served subnet (the one holding ``[server] address``).

Options are layered ``[dhcp.options]`` < subnet < host, by ISC name; the
subnet mask and broadcast address come from the network unless a layer
sets them.  Lease time: the host's ``dhcp-lease-time`` option, else the
subnet's (option or ``lease_time``), else ``[dhcp] lease_time``; a client's
own request (option 51) replaces it, clamped to ``max_lease_time`` and to
at least :data:`MIN_LEASE_TIME`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct

from . import dhcp_options as opts
from .config import Config, ConfigError, check_subnets
from .model import Host, Subnet

log = logging.getLogger("plowshare.dhcp")

MIN_LEASE_TIME = 60  # seconds; shorter client requests are raised to this


def served_subnet(config: Config) -> Subnet:
    """The subnet of ``[server] address``: a ``[[dhcp.subnet]]`` or the [dhcp] keys."""
    here = ipaddress.IPv4Address(config.address)
    for subnet in config.dhcp.subnets:
        if here in ipaddress.IPv4Network(subnet.network):
            return subnet
    d = config.dhcp
    net = ipaddress.IPv4Network(f"{config.address}/{d.prefix}", strict=False)
    options: dict = {}
    if d.router:
        options["routers"] = [d.router]
    if d.dns:
        options["domain-name-servers"] = list(d.dns)
    if d.domain:
        options["domain-name"] = d.domain
    pools = ((d.pool_first, d.pool_last),) if d.pool_first and d.pool_last else ()
    return Subnet(str(net), pools, options)


def _int(ip: str) -> int:
    return struct.unpack("!I", socket.inet_aton(ip))[0]


class SubnetTable:
    """config ∪ store subnets, looked up per request.  ``refresh()`` does the I/O."""

    def __init__(self, config: Config, store):
        self.config = config
        self.store = store
        self.served: Subnet = served_subnet(config)
        self._generation: int | None = None
        self._ranges: list[tuple[int, int, Subnet]] = []
        self._memo: dict[tuple[str, int | None], tuple] = {}
        self._ignored: set[str] = set()

    # -- contents ---------------------------------------------------------------
    def subnets(self) -> list[Subnet]:
        return [s for _lo, _hi, s in self._ranges]

    def refresh(self) -> None:
        """Re-read store subnets if their generation changed (one query otherwise).

        A store subnet that clashes with a config subnet raises
        :class:`ConfigError` on the first refresh (the server does not start);
        later, the clash is logged and the previous table stays.
        """
        generation = self.store.subnets_generation()
        if generation == self._generation:
            return
        subnets = [self.served, *(s for s in self.config.dhcp.subnets if s != self.served)]
        subnets += self.store.subnets()
        try:
            check_subnets(subnets)
        except ConfigError as exc:
            if self._generation is None:
                raise
            log.error("store subnets not taken, keeping the previous table: %s", exc)
            self._generation = generation
            return
        ranges = []
        for subnet in subnets:
            net = ipaddress.IPv4Network(subnet.network)
            ranges.append((int(net.network_address), int(net.broadcast_address), subnet))
        self._ranges, self._memo, self._generation = ranges, {}, generation
        log.info("subnets: %s", ", ".join(f"{s.network} ({s.source})" for s in subnets))

    def containing(self, ip: str) -> Subnet | None:
        if self._generation is None:
            self.refresh()
        n = _int(ip)
        for low, high, subnet in self._ranges:
            if low <= n <= high:
                return subnet
        return None

    def select(self, giaddr: str, ciaddr: str, mac: str) -> Subnet | None:
        """The subnet a request with these addresses is answered for (see module doc)."""
        if giaddr != "0.0.0.0":
            subnet = self.containing(giaddr)
            if subnet is None and giaddr not in self._ignored:
                self._ignored.add(giaddr)
                log.info("%s relayed via %s, which is in no subnet we serve: ignored "
                         "(logged once per relay)", mac, giaddr)
            return subnet
        if ciaddr != "0.0.0.0":
            subnet = self.containing(ciaddr)
            if subnet is not None:
                return subnet
        if self._generation is None:
            self.refresh()
        return self.served

    # -- what a reply carries -----------------------------------------------------
    def lease_time(self, subnet: Subnet, host: Host | None, requested: int | None) -> int:
        d = self.config.dhcp
        if requested is not None:
            most = subnet.max_lease_time or d.max_lease_time
            return max(MIN_LEASE_TIME, min(requested, most))
        for layer in ((host.options if host else {}), subnet.options):
            if opts.LEASE_TIME in layer:
                return layer[opts.LEASE_TIME]
        return subnet.lease_time or d.options.get(opts.LEASE_TIME) or d.lease_time

    def options(self, subnet: Subnet, host: Host | None, lease_time: int | None) -> list:
        """Reply option items (codec form) for ``subnet`` and ``host``.

        Memoised per subnet and lease time for hosts without options of
        their own (the common case, and the only one on the hot path).
        """
        own = host.options if host is not None else {}
        key = (subnet.network, lease_time)
        if not own and key in self._memo:
            return list(self._memo[key])
        net = ipaddress.IPv4Network(subnet.network)
        merged = {"subnet-mask": str(net.netmask),
                  "broadcast-address": str(net.broadcast_address),
                  **self.config.dhcp.options, **subnet.options, **own}
        merged.pop(opts.LEASE_TIME, None)
        items: list = []
        if lease_time is not None:
            items += [("lease_time", lease_time), ("renewal_time", lease_time // 2),
                      ("rebinding_time", lease_time * 7 // 8)]
        items += [opts.encode(name, value) for name, value in merged.items()]
        if not own:
            self._memo[key] = tuple(items)
        return items
