"""dhcp-eval(5) expressions back to ISC text, and that text parsed again.

Contract: ``parse_condition_text(format_expr(e))`` gives a tree equal to
``e`` except for positions.  Every operand that is itself a binary operation
is parenthesised, so precedence never has to be reasoned about.  Data
constants are written as quoted strings when printable, else as
colon-separated hex; a single non-printable byte is a string with an octal
escape (``"\\007"``), because a lone ``07`` would read back as the number 7.
"""

from __future__ import annotations

from .cursor import Cursor
from .expr import BinOp, Builtin, Check, Const, Exists, Expr, Func, Not, OptionRef, Variable
from .expr_parser import parse_condition

_PRINTABLE = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}


def _data(value: bytes) -> str:
    if value and all(b in _PRINTABLE for b in value):
        return '"' + value.decode("ascii") + '"'
    if len(value) >= 2:
        return ":".join(f"{b:02x}" for b in value)
    return '"' + "".join(chr(b) if b in _PRINTABLE else f"\\{b:03o}" for b in value) + '"'


def format_expr(expr: Expr) -> str:
    """ISC text for ``expr`` (see the module docstring)."""
    if isinstance(expr, Const):
        if isinstance(expr.value, bytes):
            return _data(expr.value)
        return str(expr.value)
    if isinstance(expr, OptionRef):
        return f"{'config-option' if expr.config else 'option'} {expr.name}"
    if isinstance(expr, Exists):
        return f"exists {expr.name}"
    if isinstance(expr, Check):
        return f'check "{expr.class_name}"'
    if isinstance(expr, (Variable, Builtin)):
        return expr.name
    if isinstance(expr, Not):
        return f"not {_operand(expr.expr)}"
    if isinstance(expr, BinOp):
        return f"{_operand(expr.left)} {expr.op} {_operand(expr.right)}"
    if isinstance(expr, Func):
        return f"{expr.name} ({', '.join(format_expr(a) for a in expr.args)})"
    raise TypeError(f"not an expression node: {expr!r}")


def _operand(expr: Expr) -> str:
    text = format_expr(expr)
    return f"({text})" if isinstance(expr, BinOp) else text


def parse_condition_text(text: str, where: str = "<rule>") -> Expr:
    """One boolean expression, nothing after it; ``DhcpdConfError`` otherwise."""
    cur = Cursor(text, where)
    expr = parse_condition(cur)
    if not cur.at_eof():
        raise cur.error("unexpected text after the expression")
    return expr
