"""Hosts with the scopes they inherit, for an importer.

Contract: ``iter_hosts(config)`` yields every ``host`` declaration in file
order with its enclosing scopes (outermost first: the file, then
shared-network / subnet / group ...).  ``HostInScope.settings()`` merges the
unconditional parameters and options of those scopes and of the host, the
innermost winning, as dhcpd.conf(5) describes lexical scoping.  Conditional
statements are not merged (they depend on the request); ``conditionals()``
lists them, outermost first, so the caller can evaluate them with
``expr.evaluate``.  Classes, pools and the address the client gets are not
considered: those scopes apply by request, not by lexical position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from . import ast

_DESCEND = (ast.Group, ast.Subnet, ast.SharedNetwork, ast.Block)
Scope = ast.Config | ast.Group | ast.Subnet | ast.SharedNetwork | ast.Block


def setting_key(node: ast.Statement) -> str | None:
    """The name a statement sets in a scope (``option routers``,
    ``filename``, ``hardware``) or None for statements that set nothing."""
    if isinstance(node, ast.Option):
        return f"option {node.name}"
    if isinstance(node, ast.Parameter):
        return node.name
    if isinstance(node, ast.Hardware):
        return "hardware"
    if isinstance(node, ast.FixedAddress):
        return "fixed-address"
    if isinstance(node, ast.AllowDeny):
        return f"{node.verb if node.verb == 'allow' else 'deny'} {node.what}"
    return None


@dataclass(frozen=True)
class HostInScope:
    host: ast.Host
    scopes: tuple[Scope, ...]

    def settings(self) -> dict[str, ast.Statement]:
        merged: dict[str, ast.Statement] = {}
        for scope in (*self.scopes, self.host):
            for node in scope.body:
                key = setting_key(node)
                if key is not None:
                    merged[key] = node
        for verb in ("allow", "deny"):  # allow X and deny X exclude each other
            for key in [k for k in merged if k.startswith(verb + " ")]:
                other = ("deny " if verb == "allow" else "allow ") + key.split(" ", 1)[1]
                if other in merged and _later(merged[other], merged[key], self):
                    del merged[key]
        return merged

    def conditionals(self) -> list[ast.If]:
        return [n for scope in (*self.scopes, self.host) for n in scope.body
                if isinstance(n, ast.If)]

    @property
    def hardware(self) -> ast.Hardware | None:
        return next((n for n in self.host.body if isinstance(n, ast.Hardware)), None)

    @property
    def fixed_addresses(self) -> tuple[ast.Value, ...]:
        node = self.settings().get("fixed-address")
        return node.addresses if isinstance(node, ast.FixedAddress) else ()

    def option(self, name: str) -> ast.Option | None:
        node = self.settings().get(f"option {name}")
        return node if isinstance(node, ast.Option) else None

    def parameter(self, name: str) -> ast.Parameter | None:
        node = self.settings().get(name)
        return node if isinstance(node, ast.Parameter) else None


def _later(a: ast.Statement, b: ast.Statement, where: HostInScope) -> bool:
    """True if ``a`` sits in a more specific scope than ``b`` (or later in one)."""
    order = [id(n) for s in (*where.scopes, where.host) for n in s.body]
    return order.index(id(a)) > order.index(id(b))


def iter_hosts(config: ast.Config) -> Iterator[HostInScope]:
    return _hosts_in(config, ())


def _hosts_in(scope: Scope, outer: tuple[Scope, ...]) -> Iterator[HostInScope]:
    chain = (*outer, scope)
    for node in scope.body:
        if isinstance(node, ast.Host):
            yield HostInScope(node, chain)
        elif isinstance(node, _DESCEND):
            yield from _hosts_in(node, chain)
