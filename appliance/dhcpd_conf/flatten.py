"""A host's boot decision, flattened from the scopes dhcpd would run for it.

dhcpd executes, for a host with a fixed address: the subnet's scopes
outermost first (file, shared-network, subnet), then every class the
request matched (the first-matched class last), then the host's own groups
and the host; within a scope, statements in order; a later ``filename``
overrides an earlier one.  Reversing that order gives a list in which the
*first* matching rule wins, which is what :class:`appliance.model.BootRule`
lists are: host body (last statement first), the host's groups innermost
first, the classes in file order (``match if`` AND'ed into each rule), the
subnet chain innermost first.  ``if/elsif/else`` branches become conditions
(``elsif B`` is ``not A and B``).  Fields a rule with no condition already
decided are dropped from later rules, so the list stays short.

Only ``filename``, ``next-server`` (an IP) and ``server-name`` are boot
decisions; everything else inside an ``if`` or a class is left unmarked so
the importer's ledger warns about it.  Conditions are rewritten to the
option names :mod:`appliance.boot_rules` knows (a file's ``option X code 93``
becomes ``system-arch``, other declared codes their ISC name) and checked:
what the evaluator cannot decide is a warning with its line (such a rule
never matches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..boot_rules import DECLARED
from ..model import BootRule
from . import ast
from .expr import (
    _FUNCS,
    AGENT_CODES,
    OPTION_CODES,
    BinOp,
    Builtin,
    Check,
    Exists,
    Expr,
    Func,
    Not,
    OptionRef,
    Variable,
)
from .exprtext import format_expr
from .lexer import Pos

BOOT_PARAMS = {"filename": "filename", "next-server": "next_server",
               "server-name": "server_name"}
_EVALUATED_BUILTINS = ("known", "static", "hardware", "host-decl-name", "null")
_CODE_NAMES = {code: name for name, code in OPTION_CODES.items()}
Entry = tuple[Expr | None, str, str]  # (condition, field, value)
Warn = Callable[[Pos, str], None]


def option_names(config: ast.Config) -> dict[str, str]:
    """Declared option name -> the name rules use (see the module docstring)."""
    out = {}
    for node in config.walk():
        if isinstance(node, ast.OptionDecl) and "." not in node.name:
            if node.code == DECLARED["system-arch"]:
                out[node.name] = "system-arch"
            elif node.code in _CODE_NAMES:
                out[node.name] = _CODE_NAMES[node.code]
    return out


def _rename(expr: Expr, names: dict[str, str]) -> Expr:
    if isinstance(expr, (OptionRef, Exists)):
        return dataclasses.replace(expr, name=names.get(expr.name, expr.name))
    if isinstance(expr, Not):
        return dataclasses.replace(expr, expr=_rename(expr.expr, names))
    if isinstance(expr, BinOp):
        return dataclasses.replace(expr, left=_rename(expr.left, names),
                                   right=_rename(expr.right, names))
    if isinstance(expr, Func):
        return dataclasses.replace(expr, args=tuple(_rename(a, names) for a in expr.args))
    return expr


def not_evaluated(expr: Expr) -> tuple[Pos, str] | None:
    """The first node the evaluator would refuse (or always count false), if any."""
    stack = [expr]
    while stack:
        node = stack.pop()
        why = None
        if isinstance(node, Variable):
            why = f"variable {node.name}"
        elif isinstance(node, BinOp) and node.op in ("~=", "~~"):
            why = "a regular expression"
        elif isinstance(node, OptionRef) and node.config:
            why = "config-option"
        elif isinstance(node, (OptionRef, Exists)) and node.name not in OPTION_CODES \
                and node.name not in DECLARED and node.name not in AGENT_CODES:
            why = f"option {node.name} (no known code)"
        elif isinstance(node, Builtin) and node.name not in _EVALUATED_BUILTINS:
            why = node.name
        elif isinstance(node, Func) and (node.name not in _FUNCS or node.name == "packet"):
            why = f"function {node.name}"
        elif isinstance(node, Check):
            why = f'check "{node.class_name}"'
        if why:
            return node.pos, why
        stack.extend(getattr(node, a) for a in ("expr", "left", "right") if hasattr(node, a))
        stack.extend(getattr(node, "args", ()))
    return None


def _and(*conds: Expr | None) -> Expr | None:
    out = None
    for c in conds:
        if c is not None:
            out = c if out is None else BinOp("and", out, c, c.pos)
    return out


class Flattener:
    """Boot rules per host for one parsed file; marks what it maps in ``used``."""

    def __init__(self, config: ast.Config, used: set[int], warn: Warn):
        self.used = used
        self.warn = warn
        self.names = option_names(config)
        self._texts: dict[int, tuple[Expr, str]] = {}  # keeps the node: ids stay unique
        self._scopes: dict[int, list[BootRule]] = {}
        self.class_rules: list[BootRule] = []
        for node in config.walk():
            if isinstance(node, ast.Class):
                self.class_rules += self._class(node)

    def _class(self, cls: ast.Class) -> list[BootRule]:
        match = next((n for n in cls.body if isinstance(n, ast.Match) and n.conditional), None)
        if match is None:
            return []  # subclass-keyed or spawning: not boot logic we map (warned)
        self.used.update((id(cls), id(match)))
        return self._rules(self._entries(cls.body, match.expr))

    def _entries(self, body: ast.Body, cond: Expr | None) -> list[Entry]:
        out: list[Entry] = []
        for node in reversed(body):
            if isinstance(node, ast.Parameter) and node.name in BOOT_PARAMS \
                    and not node.negated and node.expr is None and node.text is not None:
                if node.name == "next-server" and node.values[0].kind != ast.IP:
                    continue  # a host name: not resolved, warned by the ledger
                self.used.add(id(node))
                out.append((cond, BOOT_PARAMS[node.name], node.text))
            elif isinstance(node, ast.If):
                self.used.add(id(node))
                prior: list[Expr] = []
                for br in node.branches:
                    nots = [Not(p, p.pos) for p in prior]
                    out += self._entries(br.body, _and(cond, *nots, br.cond))
                    prior.append(br.cond)
                if node.orelse is not None:
                    out += self._entries(node.orelse, _and(cond, *[Not(p, p.pos)
                                                               for p in prior]))
        return out

    def _text(self, cond: Expr | None) -> str | None:
        if cond is None:
            return None
        if id(cond) not in self._texts:
            bad = not_evaluated(cond)
            if bad is not None:
                self.warn(bad[0], f"boot condition uses {bad[1]}, which is not evaluated: "
                                  "that rule never matches")
            self._texts[id(cond)] = (cond, format_expr(_rename(cond, self.names)))
        return self._texts[id(cond)][1]

    def _rules(self, entries: list[Entry]) -> list[BootRule]:
        return [BootRule(self._text(c), **{f: v}) for c, f, v in entries]

    def scope_rules(self, scope) -> list[BootRule]:
        """Rules of one scope's own statements (cached: many hosts share a scope)."""
        key = id(scope)
        if key not in self._scopes:
            self._scopes[key] = self._rules(self._entries(scope.body, None))
        return self._scopes[key]

    def host_rules(self, host: ast.Host, inner: tuple, outer: tuple) -> tuple[BootRule, ...]:
        """``inner``: the host's scopes below its subnet, ``outer``: file ->
        subnet (both outermost first)."""
        rules = list(self.scope_rules(host))
        for scope in reversed(inner):
            rules += self.scope_rules(scope)
        rules += self.class_rules
        for scope in reversed(outer):
            rules += self.scope_rules(scope)
        return prune(rules)


def prune(rules: list[BootRule]) -> tuple[BootRule, ...]:
    """Drop fields an unconditional rule already decided; merge neighbours
    with the same condition (see the module docstring)."""
    done: set[str] = set()
    out: list[BootRule] = []
    for rule in rules:
        fields = {f: v for f in ("filename", "next_server", "server_name")
                  if (v := getattr(rule, f)) is not None and f not in done}
        if not fields:
            continue
        if rule.when is None:
            done |= fields.keys()
        last = out[-1] if out else None
        if last is not None and last.when == rule.when and \
                not any(getattr(last, f) is not None for f in fields):
            out[-1] = dataclasses.replace(last, **fields)
        else:
            out.append(BootRule(rule.when, **fields))
    return tuple(out)
