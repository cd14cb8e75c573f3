"""dhcp-eval(5) expressions: the tree and a pure evaluator.

Tree contract: every node is a frozen dataclass with ``pos``.  Literals are
``Const`` (``bytes`` for strings and hex lists, ``int`` for numbers).
Operators are ``BinOp`` (``= != ~= ~~ and or + - * / % & | ^``) and ``Not``;
``option X`` / ``config-option X`` are ``OptionRef``; keyword values with no
arguments (``known``, ``static``, ``hardware``, ``leased-address``,
``host-decl-name``, ``lease-time``, ``client-state``, ``null``,
``filename``, ``server-name``) are ``Builtin``; functions with an argument
list are ``Func``; any other bare word is a ``Variable``.

Evaluator contract: ``evaluate(expr, facts)`` is pure and returns ``bool``
for boolean expressions, ``bytes`` for data, ``int`` for numbers and
``None`` for ISC's "null" (an absent option, a failed extract).  It
evaluates ``= != and or not exists known static check``, ``option``,
``hardware``, ``substring suffix lcase ucase concat reverse
binary-to-ascii encode-int extract-int pick-first-value packet``,
``host-decl-name``, literals and integer arithmetic.  Everything else
(``config-option``, ``leased-address``, ``lease-time``, variables,
``~=``/``~~``, unknown functions, option names it cannot map to a code)
raises ``Unsupported`` naming the node, so an importer can warn.  Regexes
are refused on purpose: they come from uploaded files and Python's
backtracking engine is not dhcpd's POSIX one.

Field quirks: ``=`` with a null side is true only when both are null (so
``option user-class = "iPXE"`` is false for a client without option 77);
a null boolean counts as false.  ISC calls option 93 ``pxe-system-type``
and Cobbler declares ``option system-arch code 93 = unsigned integer 16``:
facts are keyed by option *code*, names go through ``OPTION_CODES`` plus
the file's own declarations, so both names read the same two bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .lexer import Pos

# RFC 2132 (DHCP options), RFC 3004 (77), RFC 4578 (93, 94, 97), RFC 3046 (82)
OPTION_CODES: dict[str, int] = {
    "subnet-mask": 1, "time-offset": 2, "routers": 3, "domain-name-servers": 6,
    "host-name": 12, "domain-name": 15, "root-path": 17, "broadcast-address": 28,
    "vendor-encapsulated-options": 43, "dhcp-requested-address": 50,
    "dhcp-lease-time": 51, "dhcp-message-type": 53, "dhcp-server-identifier": 54,
    "dhcp-parameter-request-list": 55, "dhcp-max-message-size": 57,
    "vendor-class-identifier": 60, "dhcp-client-identifier": 61,
    "tftp-server-name": 66, "bootfile-name": 67, "user-class": 77, "fqdn": 81,
    "relay-agent-information": 82, "pxe-system-type": 93, "pxe-interface-id": 94,
    "pxe-client-id": 97,
}
#: RFC 3046 relay agent sub-options, as ISC names them in its ``agent`` space.
AGENT_CODES: dict[str, int] = {"agent.circuit-id": 1, "agent.remote-id": 2}
BOOLEAN_OPS = ("=", "!=", "~=", "~~", "and", "or")
ARITH_OPS = ("+", "-", "*", "/", "%", "&", "|", "^")
INT_WIDTHS = (8, 16, 32)


@dataclass(frozen=True, slots=True)
class Const:
    value: bytes | int
    pos: Pos


@dataclass(frozen=True, slots=True)
class OptionRef:
    name: str
    pos: Pos
    config: bool = False  # config-option: the server's configured value


@dataclass(frozen=True, slots=True)
class Exists:
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Check:
    class_name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Not:
    expr: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Func:
    name: str
    args: tuple[Expr, ...]
    pos: Pos


Expr = Const | OptionRef | Exists | Check | Variable | Builtin | Not | BinOp | Func
Result = bool | bytes | int | None


class Unsupported(Exception):
    """The evaluator cannot decide this node from request facts alone."""

    def __init__(self, node: Expr, why: str):
        super().__init__(f"{node.pos}: {why}")
        self.node = node
        self.why = why


@dataclass(frozen=True)
class Facts:
    """What one request tells: options by code, relay sub-options by code,
    hardware type and address, whether a host declaration matches it."""

    options: Mapping[int, bytes] = field(default_factory=dict)
    hw_type: int = 1
    hw_address: bytes = b""
    known: bool = False
    static: bool = False
    host_decl_name: str | None = None
    classes: frozenset[str] = frozenset()
    agent: Mapping[int, bytes] = field(default_factory=dict)
    packet: bytes | None = None
    declared: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_names(cls, options: Mapping[str, bytes], **kw) -> Facts:
        """Facts from ISC option names (``OPTION_CODES`` and ``declared``)."""
        names = {**OPTION_CODES, **kw.get("declared", {})}
        return cls(options={names[n]: v for n, v in options.items()}, **kw)

    def option(self, node: Expr, name: str) -> bytes | None:
        if name in AGENT_CODES:
            return self.agent.get(AGENT_CODES[name])
        code = self.declared.get(name, OPTION_CODES.get(name))
        if code is None:
            raise Unsupported(node, f"option {name} has no known code")
        return self.options.get(code)


def evaluate(expr: Expr, facts: Facts) -> Result:
    """The value of ``expr`` for ``facts`` (see the module docstring)."""
    handler = _HANDLERS.get(type(expr))
    if handler is None:
        raise Unsupported(expr, f"cannot evaluate {type(expr).__name__}")
    return handler(expr, facts)


def truth(expr: Expr, facts: Facts) -> bool:
    """``evaluate`` for a condition: null counts as false."""
    return bool(evaluate(expr, facts))


def _builtin(node: Builtin, facts: Facts) -> Result:
    if node.name == "known":
        return facts.known
    if node.name == "static":
        return facts.static
    if node.name == "hardware":
        return bytes([facts.hw_type]) + facts.hw_address
    if node.name == "host-decl-name":
        return None if facts.host_decl_name is None else facts.host_decl_name.encode()
    if node.name == "null":
        return None
    raise Unsupported(node, f"{node.name} is not known at classification time")


def _binop(node: BinOp, facts: Facts) -> Result:
    op = node.op
    if op == "and":
        return truth(node.left, facts) and truth(node.right, facts)
    if op == "or":
        return truth(node.left, facts) or truth(node.right, facts)
    if op in ("~=", "~~"):
        raise Unsupported(node, "regular expressions are not evaluated")
    left, right = evaluate(node.left, facts), evaluate(node.right, facts)
    if op in ("=", "!="):
        same = _same(left, right)
        return same if op == "=" else not same
    if not isinstance(left, int) or not isinstance(right, int):
        return None
    return _arith(op, left, right)


def _same(left: Result, right: Result) -> bool:
    if isinstance(left, int) and isinstance(right, bytes):
        left, right = right, left
    if isinstance(left, bytes) and isinstance(right, int) and not isinstance(right, bool):
        right = right.to_bytes(max(1, (right.bit_length() + 7) // 8), "big")
    return left == right


def _arith(op: str, a: int, b: int) -> int | None:
    if op in ("/", "%") and b == 0:
        return None
    return {"+": a + b, "-": a - b, "*": a * b, "&": a & b, "|": a | b, "^": a ^ b,
            "/": a // b if b else 0, "%": a % b if b else 0}[op]


def _data(node: Expr, facts: Facts) -> bytes | None:
    value = evaluate(node, facts)
    if isinstance(value, (bool, int)):
        raise Unsupported(node, "expected data, got a number or boolean")
    return value


def _num(node: Expr, facts: Facts) -> int | None:
    value = evaluate(node, facts)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Unsupported(node, "expected a number")


def _func(node: Func, facts: Facts) -> Result:
    impl = _FUNCS.get(node.name)
    if impl is None:
        raise Unsupported(node, f"function {node.name} is not evaluated")
    return impl(node, facts)


def _substring(node: Func, facts: Facts) -> bytes | None:
    data, off, n = _data(node.args[0], facts), _num(node.args[1], facts), _num(node.args[2], facts)
    if data is None or off is None or n is None:
        return None
    return data[off:off + n] if off >= 0 and n >= 0 else b""


def _suffix(node: Func, facts: Facts) -> bytes | None:
    data, n = _data(node.args[0], facts), _num(node.args[1], facts)
    if data is None or n is None:
        return None
    return data[len(data) - n:] if 0 <= n < len(data) else data


def _case(node: Func, facts: Facts) -> bytes | None:
    data = _data(node.args[0], facts)
    if data is None:
        return None
    return data.lower() if node.name == "lcase" else data.upper()


def _concat(node: Func, facts: Facts) -> bytes | None:
    parts = [_data(a, facts) for a in node.args]
    return None if any(p is None for p in parts) else b"".join(parts)  # type: ignore[arg-type]


def _reverse(node: Func, facts: Facts) -> bytes | None:
    width, data = _num(node.args[0], facts), _data(node.args[1], facts)
    if width is None or data is None or width <= 0:
        return None
    chunks = [data[i:i + width] for i in range(0, len(data), width)]
    return b"".join(reversed(chunks))


def _binary_to_ascii(node: Func, facts: Facts) -> bytes | None:
    base, width = _num(node.args[0], facts), _num(node.args[1], facts)
    sep, data = _data(node.args[2], facts), _data(node.args[3], facts)
    if None in (base, width, sep, data) or width not in INT_WIDTHS or not 2 <= base <= 16:
        return None
    step = width // 8
    digits = "0123456789abcdef"
    out = []
    for i in range(0, len(data) - step + 1, step):
        n, text = int.from_bytes(data[i:i + step], "big"), ""
        while True:
            n, d = divmod(n, base)
            text = digits[d] + text
            if n == 0:
                break
        out.append(text.encode())
    return sep.join(out)


def _encode_int(node: Func, facts: Facts) -> bytes | None:
    n, width = _num(node.args[0], facts), _num(node.args[1], facts)
    if n is None or width not in INT_WIDTHS:
        return None
    return (n % (1 << width)).to_bytes(width // 8, "big")


def _extract_int(node: Func, facts: Facts) -> int | None:
    data, width = _data(node.args[0], facts), _num(node.args[1], facts)
    if data is None or width not in INT_WIDTHS or len(data) < width // 8:
        return None
    return int.from_bytes(data[:width // 8], "big")


def _pick_first(node: Func, facts: Facts) -> bytes | None:
    for arg in node.args:
        value = _data(arg, facts)
        if value is not None:
            return value
    return None


def _packet(node: Func, facts: Facts) -> bytes | None:
    off, n = _num(node.args[0], facts), _num(node.args[1], facts)
    if facts.packet is None:
        raise Unsupported(node, "the raw packet is not among the facts")
    if off is None or n is None or off < 0 or n < 0:
        return None
    return facts.packet[off:off + n]


def _option(node: OptionRef, facts: Facts) -> bytes | None:
    if node.config:
        raise Unsupported(node, "config-option depends on the server's scope")
    return facts.option(node, node.name)


def _exists(node: Exists, facts: Facts) -> bool:
    return facts.option(node, node.name) is not None


def _variable(node: Variable, facts: Facts) -> Result:
    raise Unsupported(node, f"variable {node.name} is not evaluated")


_FUNCS = {
    "substring": _substring, "suffix": _suffix, "lcase": _case, "ucase": _case,
    "concat": _concat, "reverse": _reverse, "binary-to-ascii": _binary_to_ascii,
    "encode-int": _encode_int, "extract-int": _extract_int,
    "pick-first-value": _pick_first, "packet": _packet,
}
_HANDLERS = {
    Const: lambda n, f: n.value,
    OptionRef: _option,
    Exists: _exists,
    Check: lambda n, f: n.class_name in f.classes,
    Variable: _variable,
    Builtin: _builtin,
    Not: lambda n, f: not truth(n.expr, f),
    BinOp: _binop,
    Func: _func,
}
