"""CLI commands for DHCP subnets kept in the store: ``subnet add|list|delete``.

A stored subnet obeys the same rules as a ``[[dhcp.subnet]]`` table
(:func:`appliance.config.subnet_from`) and may not overlap any subnet of the
configuration (the served one included) or another stored one.  The running
server sees a change with its next batch of packets (no reload needed).
"""

from __future__ import annotations

import json

from .config import Config, ConfigError, check_subnets, subnet_from
from .store import Store


def add_parser(sub) -> None:
    s = sub.add_parser("subnet", help="DHCP subnets kept in the state (besides the config's)")
    ss = s.add_subparsers(dest="action", required=True)
    a = ss.add_parser("add", help="add or replace a subnet")
    a.add_argument("network", help="e.g. 10.2.0.0/24")
    a.add_argument("--pool", action="append", default=[], metavar="FIRST-LAST",
                   help="dynamic range (repeatable)")
    a.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="DHCP option by ISC name (repeatable), e.g. routers=10.2.0.1")
    a.add_argument("--lease-time", type=int)
    a.add_argument("--max-lease-time", type=int)
    lst = ss.add_parser("list")
    lst.add_argument("--json", action="store_true")
    d = ss.add_parser("delete")
    d.add_argument("network")


def _options(pairs: list[str]) -> dict:
    out = {}
    for text in pairs:
        name, sep, value = text.partition("=")
        if not sep:
            raise ConfigError(f"--option {text!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def cmd_subnet(store: Store, cfg: Config, args) -> int:
    if args.action == "list":
        rows = [{"network": s.network, "pools": [list(p) for p in s.pools],
                 "options": s.options, "lease_time": s.lease_time,
                 "max_lease_time": s.max_lease_time} for s in store.subnets()]
        if args.json:
            print(json.dumps(rows, indent=2))
        for row in [] if args.json else rows:
            pools = ",".join("-".join(p) for p in row["pools"]) or "-"
            print(f"{row['network']}\t{pools}\t{json.dumps(row['options'])}")
        return 0
    if args.action == "delete":
        if not store.delete_subnet(args.network):
            raise ConfigError(f"no stored subnet {args.network}")
        print(f"subnet {args.network} deleted")
        return 0
    raw = {"network": args.network, "pools": args.pool, "options": _options(args.option)}
    if args.lease_time is not None:
        raw["lease_time"] = args.lease_time
    if args.max_lease_time is not None:
        raw["max_lease_time"] = args.max_lease_time
    subnet = subnet_from(raw, "subnet", source="store")
    from .subnets import served_subnet
    others = [s for s in store.subnets() if s.network != subnet.network]
    configured = [served_subnet(cfg), *(s for s in cfg.dhcp.subnets if s != served_subnet(cfg))]
    check_subnets([*configured, *others, subnet])
    store.put_subnet(subnet)
    print(f"subnet {subnet.network} saved")
    return 0
