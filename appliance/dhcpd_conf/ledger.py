"""Where each statement of an imported file went: mapped, reported, or neither.

Contract: the importer marks every node it maps in ``used`` and every node
it already rejected or warned about in ``reported``; :meth:`Ledger.unmapped`
then names every other statement with its position, so nothing in a file
is dropped silently.  A node that is neither is reported once, as a whole
(its children are not listed again); the children of a used node are
checked one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from . import ast
from .lexer import Pos


@dataclass(frozen=True)
class Issue:
    where: str       # file:line
    message: str
    mac: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.mac + ': ' if self.mac else ''}{self.message}"


def where(pos: Pos) -> str:
    return f"{pos.file}:{pos.line}"


def describe(node: ast.Statement) -> str:
    if isinstance(node, ast.Option):
        return f"option {node.name}"
    if isinstance(node, ast.Parameter):
        return ("not " if node.negated else "") + node.name
    if isinstance(node, ast.AllowDeny):
        return f"{node.verb} {node.what}"
    if isinstance(node, (ast.Class, ast.Host)):
        return f'{type(node).__name__.lower()} "{node.name}"'
    if isinstance(node, ast.Subclass):
        return f'subclass "{node.class_name}"'
    if isinstance(node, ast.Block):
        return " ".join([node.keyword, *(w.text for w in node.words)])
    if isinstance(node, (ast.SetVar, ast.Call)):
        return f"{type(node).__name__.lower()} {node.name}"
    if isinstance(node, ast.Match):
        return "match if" if node.conditional else "match"
    return type(node).__name__.lower().replace("_", "-")


_WHY = {
    ast.Class: "only classes with `match if` that set filename/next-server are boot logic",
    ast.Subclass: "subclass-keyed classes are not mapped",
    ast.AllowDeny: "Plowshare answers known hosts and its own pools; no allow/deny",
    ast.Block: "no Plowshare equivalent",
    ast.SetVar: "variables are not kept",
    ast.Call: "not executed",
    ast.If: "only if-blocks that set filename/next-server are mapped",
}


@dataclass
class Ledger:
    used: set[int] = field(default_factory=set)
    reported: set[int] = field(default_factory=set)

    def unmapped(self, config: ast.Config) -> Iterator[tuple[Pos, str]]:
        stack = [iter(config.body)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            if id(node) in self.reported:
                continue
            if id(node) not in self.used:
                why = _WHY.get(type(node), "no Plowshare equivalent")
                yield node.pos, f"{describe(node)}: not imported ({why})"
                continue
            stack.extend(reversed([iter(b) for b in ast.children(node)]))
