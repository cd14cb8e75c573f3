"""The store written back as an ISC dhcpd.conf (``dhcpd -t -cf FILE`` accepts it).

Contract: :func:`export` is pure (hosts and subnets in, text out).  Subnets
become ``subnet``/``range``/``option``/lease-time statements; hosts become
``host`` blocks with ``hardware ethernet``, ``fixed-address``, ``option
host-name`` and their options.  Boot rules are written in reverse order,
each as ``if WHEN { ... }`` (or bare statements when unconditional):
dhcpd's "a later statement overrides" then picks, per field, the first rule
of the list that matches -- the same choice :mod:`appliance.boot_rules`
makes, and what the importer reads back.  The condition is always
parenthesised whole: dhcpd reads ``if (A) and B {`` as ``if (A)`` followed
by junk.  When a rule names
``system-arch`` the Cobbler declaration of option 93 is written first.
Option kinds dhcpd has no native syntax for (``classless-static-routes``)
are left out with a comment naming them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .. import dhcp_options
from ..model import BootRule, Host, Subnet

SYSTEM_ARCH_DECL = "option system-arch code 93 = unsigned integer 16;"  # RFC 4578 2.1
_NO_ISC_SYNTAX = ("routes",)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def option_text(name: str, value) -> str | None:
    """``option NAME VALUE;`` for a canonical value, or None (no ISC syntax)."""
    kind = dhcp_options.spec(name).kind
    if kind in _NO_ISC_SYNTAX:
        return None
    if kind == "text":
        text = quote(value)
    elif kind == "domains":
        text = ", ".join(quote(v) for v in value)
    elif kind in ("ip-array", "ip-pairs"):
        text = ", ".join(value)
    elif kind == "bool":
        text = "true" if value else "false"
    else:
        text = str(value)
    return f"option {name} {text};"


def _rule_lines(rule: BootRule) -> list[str]:
    out = []
    if rule.filename is not None:
        out.append(f"filename {quote(rule.filename)};")
    if rule.next_server is not None:
        out.append(f"next-server {rule.next_server};")
    if rule.server_name is not None:
        out.append(f"server-name {quote(rule.server_name)};")
    return out


def _options(options: dict, indent: str) -> list[str]:
    lines = []
    for name, value in sorted(options.items()):
        text = option_text(name, value)
        lines.append(indent + (text or f"# option {name}: no dhcpd.conf syntax, not exported"))
    return lines


def subnet_lines(subnet: Subnet) -> list[str]:
    net = ipaddress.IPv4Network(subnet.network)
    lines = [f"subnet {net.network_address} netmask {net.netmask} {{"]
    lines += [f"  range {a} {b};" for a, b in subnet.pools]
    lines += _options(subnet.options, "  ")
    if subnet.lease_time is not None:
        lines.append(f"  default-lease-time {subnet.lease_time};")
    if subnet.max_lease_time is not None:
        lines.append(f"  max-lease-time {subnet.max_lease_time};")
    return [*lines, "}"]


def host_lines(host: Host) -> list[str]:
    lines = [f"host h-{host.mac.replace(':', '')} {{", f"  hardware ethernet {host.mac};"]
    if host.ip:
        lines.append(f"  fixed-address {host.ip};")
    if host.name:
        lines.append(f"  option host-name {quote(host.name)};")
    lines += _options(host.options, "  ")
    for rule in reversed(host.boot_rules):
        body = _rule_lines(rule)
        if rule.when is None:
            lines += ["  " + b for b in body]
        else:
            lines += [f"  if ({rule.when}) {{", *("    " + b for b in body), "  }"]
    return [*lines, "}"]


def export(hosts: Iterable[Host], subnets: Iterable[Subnet], title: str = "plowshare") -> str:
    hosts, subnets = list(hosts), list(subnets)
    lines = [f"# dhcpd.conf exported by {title}", ""]
    if any(r.when and "system-arch" in r.when for h in hosts for r in h.boot_rules):
        lines += [SYSTEM_ARCH_DECL, ""]
    for subnet in subnets:
        lines += [*subnet_lines(subnet), ""]
    for host in hosts:
        lines += [*host_lines(host), ""]
    return "\n".join(lines)
