"""Planning an import: what a parsed dhcpd.conf would change in the store.

Contract: :func:`plan` is pure (a parsed file and a :class:`Snapshot` of
the store in, an :class:`ImportPlan` out) and total: every statement of the
file ends up mapped, or in ``warnings`` (not mapped: failover, ddns-*,
allow/deny, classes that are not boot logic ...), ``rejections`` (an entry
refused: no ethernet address, a tenant's foreign MAC, an address someone
else holds, a global statement in a tenant upload), ``conflicts`` (the
operator's entry collides with a host of another source or a configured
subnet) or ``errors`` (dangerous statements: the whole import is refused).
Each of those names ``file:line``.

Hosts: MAC from ``hardware ethernet``; IP from the first ``fixed-address``
(a DNS name is a warning: not resolved); name from ``option host-name``,
else the declaration name under ``use-host-decl-names on``; options from the
host and its groups below the subnet (the subnet's own go to the subnet);
boot rules from :mod:`.flatten`.  A host of this source that the file no
longer has is removed; hosts of other sources are never touched.  A changed
host keeps its profile, netboot flag and token (see ``store_import``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..model import Host, Subnet
from . import ast
from .flatten import Flattener
from .ledger import Issue, Ledger, where
from .lexer import Pos
from .plan_hosts import diff_hosts, map_hosts, reject_globals
from .plan_values import NOT_OPTIONS, Unmapped, network_of, option_value, seconds, subnet_of

_STRUCTURE = (ast.Group, ast.SharedNetwork)
_LEASE_PARAMS = ("default-lease-time", "max-lease-time")


@dataclass(frozen=True)
class Snapshot:
    """What the plan needs from the store (and the config's own subnets)."""

    hosts: dict[str, Host] = field(default_factory=dict)
    subnets: dict[str, Subnet] = field(default_factory=dict)
    config_subnets: tuple[Subnet, ...] = ()
    tenants: frozenset[str] = frozenset()
    tenant_macs: dict[str, str] = field(default_factory=dict)
    tenant_ranges: dict[str, list] = field(default_factory=dict)

    @classmethod
    def of(cls, store, config_subnets=()) -> Snapshot:
        return cls({h.mac: h for h in store.hosts()}, {s.network: s for s in store.subnets()},
                   tuple(config_subnets), frozenset(store.tenants()), store.tenant_macs(),
                   store.tenant_ranges())


@dataclass
class ImportPlan:
    source: str
    tenant: str | None
    added: list[Host] = field(default_factory=list)
    changed: list[Host] = field(default_factory=list)
    removed: list[Host] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    subnets_added: list[Subnet] = field(default_factory=list)
    subnets_changed: list[Subnet] = field(default_factory=list)
    conflicts: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    rejections: list[Issue] = field(default_factory=list)
    errors: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def plan(config: ast.Config, snapshot: Snapshot, tenant: str | None = None) -> ImportPlan:
    """See the module docstring."""
    result = ImportPlan(f"dhcpd:{tenant or 'operator'}", tenant)
    for node in config.dangerous():
        what = node.kind if node.kind != "on" else "on " + " ".join(a.text for a in node.args)
        result.errors.append(Issue(where(node.pos), f"{what}: refused (uploaded files are data; "
                                   "nothing in them is executed or read)"))
    if tenant is not None and tenant not in snapshot.tenants:
        result.errors.append(Issue(where(config.pos), f"no tenant {tenant!r}"))
    if not result.ok:
        return result
    _Planner(config, snapshot, result).run()
    return result


class _Planner:
    def __init__(self, config: ast.Config, snapshot: Snapshot, result: ImportPlan):
        self.config, self.snap, self.out = config, snapshot, result
        self.tenant = result.tenant
        self.ledger = Ledger()
        self.flat = Flattener(config, self.ledger.used, self._warn)
        self.subnet_chains: list[tuple[ipaddress.IPv4Network, tuple]] = []
        self._options: dict[int, dict] = {}
        self.ip_holders: dict = {}
        self.scope_cache: dict = {}

    def _warn(self, pos: Pos, message: str, mac: str | None = None) -> None:
        self.out.warnings.append(Issue(where(pos), message, mac))

    def issue(self, node, message: str, mac: str | None = None) -> Issue:
        return Issue(where(node.pos), message, mac)

    def _reject(self, node, message: str, mac: str | None = None) -> None:
        self.ledger.reported.add(id(node))
        self.out.rejections.append(self.issue(node, message, mac))

    def run(self) -> None:
        self.ledger.used.update(id(n) for n in self.config.walk()
                                if isinstance(n, (*_STRUCTURE, ast.OptionDecl)))
        self._subnets(self.config, (self.config,))
        hosts = map_hosts(self)
        if self.tenant is not None:
            reject_globals(self)
        diff_hosts(self, hosts)
        self.out.warnings += [Issue(where(pos), msg) for pos, msg in self.ledger.unmapped(
            self.config)]

    # -- subnets -------------------------------------------------------------
    def _subnets(self, scope, chain: tuple) -> None:
        for node in scope.body:
            if isinstance(node, (ast.Group, ast.SharedNetwork)):
                self._subnets(node, (*chain, node))
            elif isinstance(node, ast.Subnet):
                try:
                    self.subnet_chains.append((network_of(node), (*chain, node)))
                except Unmapped as exc:
                    self._reject(node, str(exc))
                    continue
                if self.tenant is None:
                    self._subnet(node, (*chain, node))

    def _subnet(self, node: ast.Subnet, chain: tuple) -> None:
        options: dict = {}
        times: dict[str, int] = {}
        for scope in chain:
            options.update(self.scope_options(scope))
            for stmt in scope.body:
                if isinstance(stmt, ast.Parameter) and stmt.name in _LEASE_PARAMS:
                    try:
                        times[stmt.name] = seconds(stmt)
                        self.ledger.used.add(id(stmt))
                    except Unmapped as exc:
                        self._warn(stmt.pos, str(exc))
        pools = self._pools(node)
        try:
            subnet = subnet_of(node, options, times.get("default-lease-time"),
                               times.get("max-lease-time"), pools)
        except Unmapped as exc:
            self._reject(node, str(exc))
            return
        self.ledger.used.add(id(node))
        self._subnet_diff(node, subnet)

    def _pools(self, node: ast.Subnet) -> list[tuple[str, str]]:
        pools = []
        for stmt in node.body:
            ranges = [stmt] if isinstance(stmt, ast.Range) else \
                [r for r in stmt.body if isinstance(r, ast.Range)] \
                if isinstance(stmt, ast.Pool) else []
            if isinstance(stmt, ast.Pool):
                self.ledger.used.add(id(stmt))
            for r in ranges:
                self.ledger.used.add(id(r))
                pools.append((r.low, r.high or r.low))
        return pools

    def _subnet_diff(self, node: ast.Subnet, subnet: Subnet) -> None:
        net = ipaddress.IPv4Network(subnet.network)
        for other in self.snap.config_subnets:
            if ipaddress.IPv4Network(other.network).overlaps(net):
                self.out.conflicts.append(Issue(where(node.pos), f"subnet {net} overlaps "
                                                f"configured subnet {other.network}: kept "
                                                "the configuration's"))
                return
        old = self.snap.subnets.get(subnet.network)
        if old is None:
            self.out.subnets_added.append(subnet)
        elif (old.pools, old.options, old.lease_time, old.max_lease_time) != \
                (subnet.pools, subnet.options, subnet.lease_time, subnet.max_lease_time):
            self.out.subnets_changed.append(subnet)

    def scope_options(self, scope) -> dict:
        """Mapped constant options of one scope's own body (cached)."""
        key = id(scope)
        if key not in self._options:
            found: dict = {}
            for stmt in scope.body:
                if isinstance(stmt, ast.Option) and stmt.name not in NOT_OPTIONS:
                    try:
                        name, value = option_value(stmt)
                    except Unmapped as exc:
                        self.ledger.reported.add(id(stmt))
                        self._warn(stmt.pos, f"{exc}: not imported")
                        continue
                    found[name] = value
                    self.ledger.used.add(id(stmt))
            self._options[key] = found
        return self._options[key]


__all__ = ["ImportPlan", "Issue", "Snapshot", "plan"]
