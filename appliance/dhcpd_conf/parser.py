"""Recursive-descent parser for dhcpd.conf(5): text in, ``ast.Config`` out.

Contract:

* ``parse(text, filename, include)`` is pure: no file, network or clock
  access.  It raises only ``DhcpdConfError`` (``file:line:col: message``),
  for any input, including nesting deeper than ``MAX_DEPTH`` (never
  ``RecursionError``).
* ``include``: without a callback, ``include "path";`` becomes a
  ``Dangerous("include")`` node and parsing goes on, so an importer can
  refuse the file *with the position* of every include, not just the first.
  With a callback ``include(path, pos) -> (text, filename)`` (which may raise
  ``DhcpdConfError``, e.g. for a path outside an allowed directory), the
  included file's statements are parsed as a whole file and spliced in
  place, positions naming the included file.  Field quirk: dhcpd splices
  tokens, so an included file may close an outer brace there; not here.
* Accepts a superset of what ``dhcpd -t`` accepts in practice: the common
  statements are checked (arity, value kinds, where declarations may
  appear); the long tail of parameters is kept as ``Parameter`` /
  ``Block`` with raw values.  Option names are not checked against dhcpd's
  tables (an importer types them with ``option ... code`` declarations).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

from . import ast
from .cursor import ATOM, OP, STR, Cursor
from .expr_parser import parse_condition, parse_expr
from .lexer import DhcpdConfError, Pos, is_hex, is_ip, is_number
from .statements import StatementParser

IncludeFn = Callable[[str, Pos], tuple[str, str]]

#: Declarations that may not appear directly inside a given block kind.
_FORBIDDEN = {
    "host": {"subnet", "shared-network", "host", "pool", "group", "class", "subclass", "range"},
    "class": {"subnet", "shared-network", "host", "pool", "group", "class", "subclass"},
    "if": {"subnet", "shared-network", "host", "pool", "group", "class", "subclass"},
    "pool": {"subnet", "shared-network", "pool", "host", "group"},
    "subnet": {"subnet", "shared-network"},
    "shared-network": {"shared-network"},
    "raw": set(),
    "group": set(),
    "top": set(),
}


def parse(text: str, filename: str = "<string>", include: IncludeFn | None = None) -> ast.Config:
    """The syntax tree of one dhcpd.conf text (see the module docstring)."""
    if not isinstance(text, str):
        raise DhcpdConfError("dhcpd.conf text must be str", filename, 0, 0)
    with _collector_paused():
        return _Parser(Cursor(text, filename), include).parse_file()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a tree is built.

    A 10 MB file makes about a million small objects; each young-generation
    pass re-walked them, which cost twice the parse itself.  The tree holds
    no reference cycles (refcounting frees everything as usual) and the
    collector is re-enabled, if it was enabled, when parsing ends or fails."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Parser(StatementParser):
    def __init__(self, cur: Cursor, include: IncludeFn | None):
        super().__init__(cur)
        self.include = include
        self._blocks = {
            "subnet": self._subnet, "shared-network": self._shared_network,
            "group": self._group, "pool": self._pool, "host": self._host,
            "class": self._class, "subclass": self._subclass, "if": self._if,
            "include": self._include, "on": self._on, "key": self._key, "zone": self._zone,
        }

    def parse_file(self) -> ast.Config:
        body = self._body("top")
        return ast.Config(tuple(body), Pos(self.cur.filename, 1, 1))

    # -- bodies --------------------------------------------------------------
    def _body(self, where: str) -> list[ast.Statement]:
        cur, out = self.cur, []
        top = where == "top"
        while True:
            kind, value, _ = cur.peek()
            if kind == "EOF":
                if top:
                    return out
                raise cur.error("expected '}'")
            if kind == OP and value == "}" and not top:
                return out
            self._statement(where, out)

    def _block(self, where: str) -> ast.Body:
        self.cur.expect_op("{")
        self.cur.enter()
        body = self._body(where)
        self.cur.expect_op("}")
        self.cur.leave()
        return tuple(body)

    def _statement(self, where: str, out: list[ast.Statement]) -> None:
        cur = self.cur
        tok = cur.peek()
        if tok[0] != ATOM:
            raise cur.error("expected a statement")
        word = tok[1].lower()
        if word in _FORBIDDEN[where]:
            raise cur.error(f"{word} declaration not allowed inside {where}")
        pos = cur.pos(tok)
        handler = self._blocks.get(word)
        if handler is not None:
            cur.next()
            node = handler(pos)
            if isinstance(node, list):
                out.extend(node)
            else:
                out.append(node)
            return
        out.append(self.simple_statement(where == "raw"))

    # -- declarations --------------------------------------------------------
    def _subnet(self, pos: Pos) -> ast.Subnet:
        network = self.cur.expect_word("a subnet number")
        if not self.cur.accept_word("netmask"):
            raise self.cur.error("expected 'netmask'")
        netmask = self.cur.expect_word("a netmask")
        return ast.Subnet(network, netmask, self._block("subnet"), pos)

    def _shared_network(self, pos: Pos) -> ast.SharedNetwork:
        name = self.cur.expect_name("a shared-network name")
        return ast.SharedNetwork(name, self._block("shared-network"), pos)

    def _group(self, pos: Pos) -> ast.Group:
        if not self.cur.at_op("{"):
            self.cur.expect_name("a group name or '{'")
        return ast.Group(self._block("group"), pos)

    def _pool(self, pos: Pos) -> ast.Pool:
        return ast.Pool(self._block("pool"), pos)

    def _host(self, pos: Pos) -> ast.Host:
        name = self.cur.expect_name("a host name")
        return ast.Host(name, self._block("host"), pos)

    def _class(self, pos: Pos) -> ast.Class:
        name = self.cur.expect_name("a class name")
        return ast.Class(name, self._block("class"), pos)

    def _subclass(self, pos: Pos) -> ast.Subclass:
        cur = self.cur
        name = cur.expect_name("a class name")
        tok = cur.peek()
        if tok[0] not in (STR, ATOM) or (tok[0] == ATOM and not is_hex(tok[1])
                                         and not is_number(tok[1])):
            raise cur.error("expected a subclass key (string or hex)")
        key = self.value(cur.next())
        if cur.accept_op(";"):
            return ast.Subclass(name, key, None, pos)
        return ast.Subclass(name, key, self._block("class"), pos)

    def _if(self, pos: Pos) -> ast.If:
        cur = self.cur
        branches = [ast.Branch(parse_condition(cur), self._block("if"), pos)]
        orelse = None
        while True:
            tok = cur.peek()
            if cur.accept_word("elsif"):
                branches.append(ast.Branch(parse_condition(cur), self._block("if"), cur.pos(tok)))
            elif cur.at_word("else"):
                nxt = cur.peek(1)
                cur.next()
                if nxt[0] == ATOM and nxt[1].lower() == "if":
                    cur.next()
                    cond = parse_condition(cur)
                    branches.append(ast.Branch(cond, self._block("if"), cur.pos(tok)))
                else:
                    orelse = self._block("if")
                    break
            else:
                break
        return ast.If(tuple(branches), orelse, pos)

    # -- dangerous statements ------------------------------------------------
    def _include(self, pos: Pos) -> ast.Dangerous | list[ast.Statement]:
        cur = self.cur
        path_tok = cur.peek()
        path = cur.expect_string("a quoted file name")
        cur.expect_op(";")
        if self.include is None:
            return ast.Dangerous("include", (self.value(path_tok),), pos)
        text, filename = self.include(path, pos)
        cur.enter()
        inner = _Parser(Cursor(text, filename, cur.depth), self.include)
        body = inner._body("top")
        cur.leave()
        return body

    def _on(self, pos: Pos) -> ast.Dangerous:
        cur = self.cur
        events = [self.value(cur.peek())]
        cur.expect_word("an event (commit, expiry, release)")
        while cur.accept_word("or"):
            events.append(self.value(cur.peek()))
            cur.expect_word("an event")
        return ast.Dangerous("on", tuple(events), pos, self._block("if"))

    def _key(self, pos: Pos) -> ast.Dangerous:
        cur = self.cur
        name = self.value(cur.peek())
        cur.expect_name("a key name")
        if cur.accept_op(";"):
            return ast.Dangerous("key", (name,), pos)
        body = self._block("raw")
        cur.accept_op(";")
        return ast.Dangerous("key", (name,), pos, body)

    def _zone(self, pos: Pos) -> ast.Dangerous:
        name = self.value(self.cur.peek())
        self.cur.expect_name("a zone name")
        return ast.Dangerous("zone", (name,), pos, self._block("raw"))

    # StatementParser calls back here for ``NAME words { ... }`` blocks.
    def generic_block(self, keyword: str, words: tuple[ast.Value, ...], pos: Pos,
                      raw: bool) -> ast.Block:
        return ast.Block(keyword, words, self._block("raw" if raw else "group"), pos)


__all__ = ["DhcpdConfError", "IncludeFn", "is_ip", "parse", "parse_expr"]
