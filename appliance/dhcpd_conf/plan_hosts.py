"""Hosts of an import plan: mapping host declarations, tenant checks, diff.

Helpers of :mod:`appliance.dhcpd_conf.plan` (see its docstring for the
mapping); each takes the planner, which holds the file, the snapshot, the
ledger and the result.  Tenant rules: a tenant's entry is applied only when
the tenant owns its MAC, its address lies in one of the tenant's ranges
(when it has any) and no host of someone else reserves that address;
global statements of a tenant upload are rejected one by one, while the
boot logic the tenant's hosts inherit from them is still flattened into
those hosts' rules (it affects nobody else).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from ..model import Host, norm_mac
from . import ast
from .scope import HostInScope, iter_hosts

_ON = ("on", "true", "yes", "1")
_GLOBAL_SCOPES = (ast.Subnet, ast.SharedNetwork, ast.Pool)
_HOSTED = (ast.Host, ast.Group, ast.Class, ast.Subclass, ast.OptionDecl, ast.If)


def _split(p, hs: HostInScope, ip: str | None) -> tuple[tuple, tuple]:
    """(scopes below the subnet, file -> subnet): the subnet chain is the
    lexical one, else the one of the subnet holding the host's address."""
    scopes = hs.scopes
    subnets = [i for i, s in enumerate(scopes) if isinstance(s, ast.Subnet)]
    if subnets:
        return scopes[subnets[-1] + 1:], scopes[:subnets[-1] + 1]
    outer: tuple = (scopes[0],)
    if ip is not None:
        addr = ipaddress.IPv4Address(ip)
        outer = next((chain for net, chain in p.subnet_chains if addr in net), outer)
    return scopes[1:], outer


def _address(p, host: ast.Host) -> str | None:
    fixed = [n for n in host.body if isinstance(n, ast.FixedAddress)]
    if not fixed:
        return None
    node = fixed[-1]
    p.ledger.used.update(id(n) for n in fixed)
    first = node.addresses[0]
    if len(node.addresses) > 1:
        p._warn(node.pos, f"fixed-address: only the first address ({first.text}) is kept")
    if first.kind == ast.IP:
        return first.text
    p._warn(node.pos, f"fixed-address {first.text} is a DNS name: not resolved (import is "
                      "pure); host imported without an address")
    return None


def _last(p, scope, test) -> ast.Statement | None:
    """The last statement of ``scope``'s own body passing ``test`` (cached per
    scope: a group of 10,000 hosts is scanned once, not once per host)."""
    key = (id(scope), test)
    if key not in p.scope_cache:
        p.scope_cache[key] = next((n for n in reversed(scope.body) if test(n)), None)
    return p.scope_cache[key]


def _is_host_name(node) -> bool:
    return isinstance(node, ast.Option) and node.name == "host-name" and bool(node.items)


def _is_decl_names(node) -> bool:
    return isinstance(node, ast.Parameter) and node.name == "use-host-decl-names"


def _is_lease_time(node) -> bool:
    return isinstance(node, ast.Parameter) and node.name == "default-lease-time" \
        and (node.text or "").isdigit()


def _name(p, hs: HostInScope, inner: tuple, outer: tuple) -> str | None:
    for scope in (hs.host, *reversed(inner)):
        node = _last(p, scope, _is_host_name)
        if node is not None:
            p.ledger.used.add(id(node))
            return node.items[0][0].text
    for scope in (hs.host, *reversed(inner), *reversed(outer)):
        node = _last(p, scope, _is_decl_names)
        if node is not None:
            p.ledger.used.add(id(node))
            return hs.host.name if (node.text or "").lower() in _ON else None
    return None


def _map_one(p, hs: HostInScope) -> Host | None:
    host = hs.host
    hw = next((n for n in host.body if isinstance(n, ast.Hardware)), None)
    if hw is None or hw.hw_type != "ethernet":
        p._reject(host, f'host "{host.name}": no `hardware ethernet` (Plowshare keys hosts '
                        "by MAC); not imported")
        return None
    try:  # dhcpd writes octets without leading zeros (0:c0:c3:49:2b:8)
        mac = norm_mac(hw.octets.hex())
    except ValueError as exc:
        p._reject(host, f'host "{host.name}": {exc}')
        return None
    p.ledger.used.update((id(host), id(hw)))
    ip = _address(p, host)
    inner, outer = _split(p, hs, ip)
    options: dict = {}
    for scope in (*inner, host):
        options.update(p.scope_options(scope))
        node = _last(p, scope, _is_lease_time)  # a host's default lease time (dhcp_options)
        if node is not None:
            p.ledger.used.add(id(node))
            options["dhcp-lease-time"] = int(node.text)
    return Host(mac=mac, profile=None, name=_name(p, hs, inner, outer), ip=ip, netboot=True,
                options=options, boot_rules=p.flat.host_rules(host, inner, outer),
                tenant=p.tenant, source=p.out.source)


def map_hosts(p) -> list[tuple[ast.Host, Host]]:
    """Every host declaration mapped (or rejected with its line), file order."""
    macs: dict[str, str] = {}
    ips: dict[str, str] = {}
    out = []
    for hs in iter_hosts(p.config):
        host = _map_one(p, hs)
        if host is None:
            continue
        here = f"{hs.host.pos.file}:{hs.host.pos.line}"
        if host.mac in macs:
            p._reject(hs.host, f"declared again (first at {macs[host.mac]}); ignored", host.mac)
            continue
        if host.ip is not None and host.ip in ips:
            p._reject(hs.host, f"address {host.ip} already given to the host at "
                               f"{ips[host.ip]}; ignored", host.mac)
            continue
        macs[host.mac] = here
        if host.ip is not None:
            ips[host.ip] = here
        out.append((hs.host, host))
    return out


def reject_globals(p) -> None:
    """Tenant uploads: every statement outside hosts, groups and classes is
    rejected with a reason (unless it is boot logic the tenant's hosts use)."""
    stack: list = [p.config]
    while stack:
        scope = stack.pop()
        for node in scope.body:
            if isinstance(node, _GLOBAL_SCOPES):
                p.ledger.used.add(id(node))
                p.out.rejections.append(p.issue(node, f"{type(node).__name__.lower()} "
                                                "declaration: only the operator declares "
                                                "networks; its hosts are still considered"))
                stack.append(node)
            elif isinstance(node, ast.Group):
                stack.append(node)
            elif not isinstance(node, _HOSTED) and id(node) not in p.ledger.used \
                    and not isinstance(scope, ast.Group):
                p._reject(node, "global statement: a tenant upload may only declare hosts "
                                "(and the groups and classes they use)")


def _in_ranges(ip: str, ranges: list) -> bool:
    addr = ipaddress.IPv4Address(ip)
    return any(ipaddress.IPv4Address(a) <= addr <= ipaddress.IPv4Address(b) for a, b in ranges)


def _refusal(p, host: Host) -> str | None:
    """Why this entry may not be applied (tenant ownership, address holders)."""
    snap, tenant = p.snap, p.tenant
    if tenant is not None:
        owner = snap.tenant_macs.get(host.mac)
        if owner != tenant:
            return f"MAC is not assigned to tenant {tenant}" + \
                (" (another tenant owns it)" if owner else "")
        ranges = snap.tenant_ranges.get(tenant, [])
        if host.ip is not None and ranges and not _in_ranges(host.ip, ranges):
            return f"address {host.ip} is outside tenant {tenant}'s ranges"
    old = snap.hosts.get(host.mac)
    if old is not None and old.source != p.out.source:
        how = "added by hand" if old.source is None else f"imported by {old.source}"
        return f"a host with this MAC exists ({how}): left as it is"
    holder = p.ip_holders.get(host.ip) if host.ip else None
    if holder is not None and holder.mac != host.mac and holder.source != p.out.source:
        owner = f"tenant {holder.tenant}" if holder.tenant else "the operator"
        return f"address {host.ip} is reserved for {holder.mac} ({owner})"
    return None


def _mapped(h: Host) -> tuple:
    return (h.name, h.ip, h.options, h.boot_rules, h.tenant, h.source)


def diff_hosts(p, pairs: list[tuple[ast.Host, Host]]) -> None:
    p.ip_holders = {h.ip: h for h in p.snap.hosts.values() if h.ip}
    accepted: set[str] = set()
    for node, host in pairs:
        why = _refusal(p, host)
        if why is not None:
            if p.tenant is not None:
                p._reject(node, why, host.mac)
            else:
                p.out.conflicts.append(p.issue(node, why, host.mac))
            continue
        accepted.add(host.mac)
        old = p.snap.hosts.get(host.mac)
        if old is None:
            p.out.added.append(host)
        elif _mapped(old) == _mapped(host):
            p.out.unchanged.append(host.mac)
        else:
            p.out.changed.append(dataclasses.replace(
                old, name=host.name, ip=host.ip, options=host.options,
                boot_rules=host.boot_rules, tenant=host.tenant, source=host.source))
    p.out.removed = [h for h in p.snap.hosts.values()
                     if h.source == p.out.source and h.mac not in accepted]
