"""Simple (``;``-terminated) dhcpd.conf statements: options, option type
declarations, parameters, allow/deny, match, set, log, execute, omapi.

Contract: ``StatementParser.simple_statement()`` consumes exactly one
statement or raises ``DhcpdConfError`` at the first token that does not
fit.  Well-known parameters are checked (``_ARITY``); any other
``name args;`` is kept as a generic ``Parameter`` and ``name args { }``
goes to the block parser's ``generic_block``.  In ``raw`` bodies
(``key``/``zone``, which are refused anyway) arguments may contain any
punctuation, because a base64 ``secret`` may hold ``+`` and ``=``.
"""

from __future__ import annotations

from . import ast
from .cursor import ATOM, OP, STR, Cursor
from .expr_parser import parse_condition, parse_expr
from .lexer import Pos, error_at, is_hex, is_ip, is_number

#: Well-known parameters: (min args, max args, required kind or None).
_ARITY: dict[str, tuple[int, int, str | None]] = {
    "filename": (1, 1, ast.STRING), "server-name": (1, 1, ast.STRING),
    "next-server": (1, 1, None), "server-identifier": (1, 1, None),
    "default-lease-time": (1, 1, ast.NUMBER), "max-lease-time": (1, 1, ast.NUMBER),
    "min-lease-time": (1, 1, ast.NUMBER), "dynamic-bootp-lease-length": (1, 1, ast.NUMBER),
    "min-secs": (1, 1, ast.NUMBER), "ping-timeout": (1, 1, ast.NUMBER),
    "local-port": (1, 1, ast.NUMBER), "remote-port": (1, 1, ast.NUMBER),
    "ddns-update-style": (1, 1, None), "use-host-decl-names": (1, 1, None),
    "get-lease-hostnames": (1, 1, None), "one-lease-per-client": (1, 1, None),
    "ping-check": (1, 1, None), "boot-unknown-clients": (1, 1, None),
    "ddns-updates": (1, 1, None), "update-static-leases": (1, 1, None),
    "always-broadcast": (1, 1, None), "always-reply-rfc1048": (1, 1, None),
    "authoritative": (0, 0, None), "lease-file-name": (1, 1, ast.STRING),
    "pid-file-name": (1, 1, ast.STRING), "log-facility": (1, 1, None),
}
_TYPE_NAMES = frozenset({
    "boolean", "ip-address", "ip6-address", "text", "string", "domain-name", "zerolen",
})
_INT_BITS = (8, 16, 32)
_STATEMENT_END = ("{", "}", ";")


class StatementParser:
    def __init__(self, cur: Cursor):
        self.cur = cur
        self._simple = {
            "option": self._option, "hardware": self._hardware,
            "fixed-address": self._fixed_address, "range": self._range,
            "allow": self._allow, "deny": self._allow, "ignore": self._allow,
            "match": self._match, "spawn": self._spawn, "set": self._set,
            "define": self._set, "unset": self._unset, "log": self._log,
            "execute": self._execute, "not": self._not,
        }

    def generic_block(self, keyword: str, words: tuple[ast.Value, ...], pos: Pos,
                      raw: bool) -> ast.Statement:
        raise NotImplementedError

    # -- values --------------------------------------------------------------
    def value(self, tok: tuple[str, str, int]) -> ast.Value:
        kind, text, _ = tok
        if kind == STR:
            vkind = ast.STRING
        elif kind == OP:
            vkind = ast.OPERATOR
        elif is_number(text):
            vkind = ast.NUMBER
        elif is_ip(text):
            vkind = ast.IP
        elif ":" in text and is_hex(text):
            vkind = ast.HEX
        else:
            vkind = ast.NAME
        return ast.Value(vkind, text, self.cur.pos(tok))

    def _items(self, raw: bool = False) -> ast.Items:
        """Values up to (not including) ``;`` or ``{``, grouped by commas."""
        cur = self.cur
        groups: list[tuple[ast.Value, ...]] = []
        group: list[ast.Value] = []
        while True:
            tok = cur.peek()
            kind, text, _ = tok
            if kind in (ATOM, STR) or (raw and kind == OP and text not in _STATEMENT_END
                                       and text != ","):
                group.append(self.value(cur.next()))
            elif kind == OP and text == "," and group:
                cur.next()
                groups.append(tuple(group))
                group = []
                if cur.peek()[0] not in (ATOM, STR):
                    raise cur.error("expected a value after ','")
            else:
                break
        if group:
            groups.append(tuple(group))
        return tuple(groups)

    def _end(self) -> None:
        self.cur.expect_op(";")

    # -- dispatch ------------------------------------------------------------
    def simple_statement(self, raw: bool = False) -> ast.Statement:
        cur = self.cur
        tok = cur.next()
        word, pos = tok[1].lower(), cur.pos(tok)
        handler = self._simple.get(word)
        if handler is not None and not raw:
            return handler(pos)
        if word.startswith("omapi"):
            items = self._items()
            self._end()
            return ast.Dangerous(word, tuple(v for g in items for v in g), pos)
        return self._generic(word, pos, raw)

    def _generic(self, name: str, pos: Pos, raw: bool) -> ast.Statement:
        cur = self.cur
        if not raw and cur.accept_op("="):
            expr = parse_expr(cur)
            self._end()
            return ast.Parameter(name, (), pos, expr=expr)
        items = self._items(raw)
        if cur.at_op("{"):
            words = tuple(v for g in items for v in g)
            return self.generic_block(name, words, pos, raw)
        if name in _ARITY and not raw:
            self._check_arity(name, items, pos)
        self._end()
        return ast.Parameter(name, items, pos)

    def _check_arity(self, name: str, items: ast.Items, pos: Pos) -> None:
        low, high, kind = _ARITY[name]
        values = [v for g in items for v in g]
        if len(values) > high:
            v = values[high]
            raise error_at(values[high].pos, f"expected ';' (found {v.text!r})")
        if len(values) < low:
            raise self.cur.error(f"{name} needs {low} argument{'s' if low > 1 else ''}")
        if kind and values and values[0].kind != kind:
            raise error_at(values[0].pos, f"{name} expects a {kind}")

    # -- options -------------------------------------------------------------
    def _option(self, pos: Pos) -> ast.Statement:
        cur = self.cur
        name = cur.expect_word("an option name").lower()
        if name == "space":
            items = self._items()
            self._end()
            return ast.Parameter("option space", items, pos)
        if cur.accept_word("code"):
            return self._option_decl(name, pos)
        if cur.accept_op("="):
            expr = parse_expr(cur)
            self._end()
            return ast.Option(name, (), pos, expr)
        items = self._items()
        self._end()
        return ast.Option(name, items, pos)

    def _option_decl(self, name: str, pos: Pos) -> ast.OptionDecl:
        cur = self.cur
        code_tok = cur.peek()
        code = cur.expect_word("an option code")
        if not is_number(code) or not 0 <= int(code) <= 65535:
            raise cur.error("expected an option code number", code_tok)
        cur.expect_op("=")
        otype = self._option_type()
        self._end()
        return ast.OptionDecl(name, int(code), otype, pos)

    def _option_type(self) -> ast.OptionType:
        cur = self.cur
        tok = cur.peek()
        pos = cur.pos(tok)
        if cur.accept_op("{"):
            cur.enter()
            fields = [self._option_type()]
            while cur.accept_op(","):
                fields.append(self._option_type())
            cur.expect_op("}")
            cur.leave()
            return ast.RecordType(tuple(fields), pos)
        word = cur.expect_word("an option type").lower()
        if word == "array":
            if not cur.accept_word("of"):
                raise cur.error("expected 'of'")
            cur.enter()
            inner = self._option_type()
            cur.leave()
            return ast.ArrayType(inner, pos)
        if word == "encapsulate":
            return ast.EncapsulateType(cur.expect_word("an option space name"), pos)
        if word in ("signed", "unsigned", "integer"):
            if word != "integer" and not cur.accept_word("integer"):
                raise cur.error("expected 'integer'")
            bits_tok = cur.peek()
            bits = cur.expect_word("an integer width")
            if not is_number(bits) or int(bits) not in _INT_BITS:
                raise cur.error("integer width must be 8, 16 or 32", bits_tok)
            return ast.ScalarType("integer", pos, int(bits), word != "unsigned")
        if word == "domain-list":
            return ast.ScalarType(word, pos, compressed=cur.accept_word("compressed"))
        if word in _TYPE_NAMES:
            return ast.ScalarType(word, pos)
        raise cur.error("unknown option type", tok)

    # -- host and pool parameters -------------------------------------------
    def _hardware(self, pos: Pos) -> ast.Hardware:
        cur = self.cur
        hw_type = cur.expect_word("a hardware type").lower()
        tok = cur.peek()
        if tok[0] != ATOM or not is_hex(tok[1]):
            raise cur.error("expected a hardware address")
        cur.next()
        self._end()
        return ast.Hardware(hw_type, tok[1].lower(), pos)

    def _fixed_address(self, pos: Pos) -> ast.FixedAddress:
        items = self._items()
        if not items or any(len(g) != 1 or g[0].kind == ast.STRING for g in items):
            raise self.cur.error("expected addresses separated by ','")
        self._end()
        return ast.FixedAddress(tuple(g[0] for g in items), pos)

    def _range(self, pos: Pos) -> ast.Range:
        cur = self.cur
        bootp = cur.accept_word("dynamic-bootp")
        addrs = []
        while len(addrs) < 2 and cur.peek()[0] == ATOM and is_ip(cur.peek()[1]):
            addrs.append(cur.next()[1])
        if not addrs:
            raise cur.error("expected an IP address")
        self._end()
        return ast.Range(addrs[0], addrs[1] if len(addrs) > 1 else None, bootp, pos)

    def _allow(self, pos: Pos) -> ast.AllowDeny:
        cur = self.cur
        verb = cur.values[cur.i - 1].lower()
        words, class_name = [], None
        while cur.peek()[0] == ATOM:
            words.append(cur.next()[1].lower())
        if words[-2:] == ["members", "of"] or words[-1:] == ["members"]:
            class_name = cur.expect_string("a quoted class name")
        if not words:
            raise cur.error(f"expected what to {verb}")
        self._end()
        return ast.AllowDeny(verb, " ".join(words), pos, class_name)

    # -- classes and executable statements -----------------------------------
    def _match(self, pos: Pos) -> ast.Match:
        cur = self.cur
        if cur.accept_word("if"):
            node = ast.Match(parse_condition(cur), True, pos)
        else:
            node = ast.Match(parse_expr(cur), False, pos)
        self._end()
        return node

    def _spawn(self, pos: Pos) -> ast.SpawnWith:
        if not self.cur.accept_word("with"):
            raise self.cur.error("expected 'with'")
        node = ast.SpawnWith(parse_expr(self.cur), pos)
        self._end()
        return node

    def _set(self, pos: Pos) -> ast.SetVar:
        name = self.cur.expect_word("a variable name")
        self.cur.expect_op("=")
        node = ast.SetVar(name, parse_expr(self.cur), pos)
        self._end()
        return node

    def _unset(self, pos: Pos) -> ast.SetVar:
        node = ast.SetVar(self.cur.expect_word("a variable name"), None, pos)
        self._end()
        return node

    def _call_args(self) -> tuple:
        cur = self.cur
        cur.expect_op("(")
        cur.enter()
        args = []
        if not cur.at_op(")"):
            args.append(parse_expr(cur))
            while cur.accept_op(","):
                args.append(parse_expr(cur))
        cur.expect_op(")")
        cur.leave()
        self._end()
        return tuple(args)

    def _log(self, pos: Pos) -> ast.Call:
        return ast.Call("log", self._call_args(), pos)

    def _execute(self, pos: Pos) -> ast.Dangerous:
        return ast.Dangerous("execute", (), pos, exprs=self._call_args())

    def _not(self, pos: Pos) -> ast.Parameter:
        if not self.cur.accept_word("authoritative"):
            raise self.cur.error("expected 'authoritative'")
        self._end()
        return ast.Parameter("authoritative", (), pos, negated=True)
