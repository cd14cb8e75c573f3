"""Parses dhcp-eval(5) expressions from a ``Cursor`` into ``expr`` nodes.

Precedence, loosest first: ``or``; ``and``; ``= != ~= ~~``; ``| ^ &``;
``+ -``; ``* / %``.  ``not`` applies to one primary, as in ISC's parser
(``not a = b`` is ``(not a) = b``, which dhcpd rejects; write
``not (a = b)``).  Known functions have their argument counts checked;
an unknown ``name (args)`` is kept as a ``Func`` and a bare word is a
``Variable`` (the evaluator refuses both).
"""

from __future__ import annotations

from .cursor import ATOM, OP, STR, Cursor
from .expr import (
    BinOp,
    Builtin,
    Check,
    Const,
    Exists,
    Expr,
    Func,
    Not,
    OptionRef,
    Variable,
)
from .lexer import hex_bytes, is_hex, is_number, string_bytes

_PRECEDENCE = {
    "or": 1, "and": 2, "=": 3, "!=": 3, "~=": 3, "~~": 3,
    "|": 4, "^": 4, "&": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6,
}
_WORD_OPS = ("or", "and")
_ATOM_OPS = ("-", "/")  # the lexer reads a lone - or / as a word
BUILTINS = frozenset({
    "known", "static", "hardware", "leased-address", "host-decl-name", "lease-time",
    "client-state", "null", "filename", "server-name",
})
#: Argument counts dhcp-eval(5) gives its functions: (min, max or None).
ARITY = {
    "substring": (3, 3), "suffix": (2, 2), "lcase": (1, 1), "ucase": (1, 1),
    "concat": (2, None), "reverse": (2, 2), "binary-to-ascii": (4, 4),
    "encode-int": (2, 2), "extract-int": (2, 2), "pick-first-value": (1, None),
    "packet": (2, 2), "gethostbyname": (1, 1), "defined": (1, 1), "v6relay": (2, 2),
}
_BOOLEAN_HEADS = (Not, Exists, Check)
_BOOLEAN_OPS = ("=", "!=", "~=", "~~", "and", "or")


def parse_expr(cur: Cursor) -> Expr:
    return _binary(cur, 1)


def parse_condition(cur: Cursor) -> Expr:
    """A boolean expression (``if``, ``match if``): dhcpd's type check, shallow."""
    start = cur.peek()
    expr = parse_expr(cur)
    if not is_boolean(expr):
        raise cur.error("boolean expression expected", start)
    return expr


def is_boolean(expr: Expr) -> bool:
    if isinstance(expr, BinOp):
        return expr.op in _BOOLEAN_OPS
    if isinstance(expr, Builtin):
        return expr.name in ("known", "static")
    if isinstance(expr, Func):
        return expr.name == "defined"
    return isinstance(expr, (*_BOOLEAN_HEADS, Variable))


def _binary_op(cur: Cursor) -> str | None:
    kind, value, _ = cur.peek()
    if kind == OP and value in _PRECEDENCE:
        return value
    if kind == ATOM and (value.lower() in _WORD_OPS or value in _ATOM_OPS):
        return value.lower()
    return None


def _binary(cur: Cursor, min_prec: int) -> Expr:
    """Precedence climbing; every operator in a chain counts one level of
    depth, so the tree (and so the evaluator's recursion) stays bounded."""
    left = _unary(cur)
    levels = 0
    try:
        while True:
            op = _binary_op(cur)
            if op is None or _PRECEDENCE[op] < min_prec:
                return left
            tok = cur.next()
            cur.enter()
            levels += 1
            right = _binary(cur, _PRECEDENCE[op] + 1)
            left = BinOp(op, left, right, cur.pos(tok))
    finally:
        cur.depth -= levels


def _unary(cur: Cursor) -> Expr:
    tok = cur.peek()
    if tok[0] == ATOM and tok[1].lower() == "not" or tok[0] == OP and tok[1] == "!":
        cur.next()
        cur.enter()
        start = cur.peek()
        inner = _unary(cur)
        cur.leave()
        if not is_boolean(inner):
            raise cur.error("boolean expression expected after 'not'", start)
        return Not(inner, cur.pos(tok))
    return _primary(cur)


def _primary(cur: Cursor) -> Expr:
    tok = cur.peek()
    kind, value, _ = tok
    pos = cur.pos(tok)
    if kind == STR:
        cur.next()
        return Const(string_bytes(value), pos)
    if kind == OP and value == "(":
        cur.next()
        cur.enter()
        inner = parse_expr(cur)
        cur.leave()
        cur.expect_op(")")
        return inner
    if kind != ATOM:
        raise cur.error("expected an expression")
    cur.next()
    word = value.lower()
    if is_number(value):
        return Const(int(value), pos)
    if ":" in value and is_hex(value):
        return Const(hex_bytes(value), pos)
    if word in ("option", "config-option"):
        return OptionRef(cur.expect_word("an option name").lower(), pos, word == "config-option")
    if word == "exists":
        return Exists(cur.expect_word("an option name").lower(), pos)
    if word == "check":
        return Check(cur.expect_name("a class name"), pos)
    if cur.at_op("("):
        return _call(cur, word, pos)
    if word in BUILTINS:
        return Builtin(word, pos)
    return Variable(value, pos)


def _call(cur: Cursor, name: str, pos) -> Func:
    open_tok = cur.expect_op("(")
    cur.enter()
    args: list[Expr] = []
    if not cur.at_op(")"):
        args.append(parse_expr(cur))
        while cur.accept_op(","):
            args.append(parse_expr(cur))
    cur.leave()
    cur.expect_op(")")
    low, high = ARITY.get(name, (0, None))
    if len(args) < low or (high is not None and len(args) > high):
        raise cur.error(f"{name}() takes {low}{'' if high == low else '+'} arguments", open_tok)
    if name in ("encode-int", "extract-int"):
        width = args[1]
        if not (isinstance(width, Const) and width.value in (8, 16, 32)):
            raise cur.error(f"{name}() width must be 8, 16 or 32", open_tok)
    return Func(name, tuple(args), pos)
