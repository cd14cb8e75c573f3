"""The dhcpd.conf syntax tree: frozen dataclasses, each with its ``pos``.

Contract: the tree is what the file says, not what dhcpd would do with it.
Names are lower-cased where dhcpd treats them case-insensitively (keywords,
option and parameter names); values keep their text.  Blocks keep their
statements in file order (``body``).  Nothing here resolves names, looks
up option types or touches the network.

Value quirk: an option or parameter argument is kept as a ``Value`` token
with its lexical kind (``string``, ``number``, ``ip``, ``hex``, ``name``), so
an importer can type it with the declared option type: ``00:07`` may be two
bytes or, for a ``text`` option, a string; ``ns1.example.org`` is a host
name that dhcpd would resolve.  Comma-separated elements are grouped:
``option domain-name-servers a, b`` has ``items == ((a,), (b,))``.

Dangerous statements (``include``, ``execute``, ``on commit/expiry/release``,
``omapi-*``, ``key``, ``zone``) become ``Dangerous`` nodes so an importer
can refuse them with their position; the parser never acts on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .expr import Expr
from .lexer import Pos, hex_bytes, string_bytes

STRING, NUMBER, IP, HEX, NAME = "string", "number", "ip", "hex", "name"
OPERATOR = "op"  # punctuation inside key/zone bodies only


@dataclass(frozen=True, slots=True)
class Value:
    """One argument token.  ``kind`` is the lexical kind (see module doc)."""

    kind: str
    text: str
    pos: Pos

    def as_bytes(self) -> bytes:
        """Bytes for data use: a string's bytes, a hex list's octets, else the text."""
        if self.kind == HEX:
            return hex_bytes(self.text)
        return string_bytes(self.text)


Items = tuple[tuple[Value, ...], ...]


# --- option type declarations (``option NAME code N = TYPE;``) --------------

@dataclass(frozen=True, slots=True)
class ScalarType:
    """``boolean``, ``ip-address``, ``ip6-address``, ``text``, ``string``,
    ``domain-name``, ``domain-list`` (``compressed`` flag), or ``integer``
    with ``bits`` 8/16/32 and ``signed`` (bare ``integer`` is signed)."""

    name: str
    pos: Pos
    bits: int | None = None
    signed: bool | None = None
    compressed: bool = False


@dataclass(frozen=True, slots=True)
class RecordType:
    """``{ T1, T2, ... }``: one value per field, written without commas."""

    fields: tuple[OptionType, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class ArrayType:
    """``array of T``: comma-separated repetitions of T."""

    of: OptionType
    pos: Pos


@dataclass(frozen=True, slots=True)
class EncapsulateType:
    """``encapsulate SPACE``: the option carries the options of SPACE."""

    space: str
    pos: Pos


OptionType = ScalarType | RecordType | ArrayType | EncapsulateType


# --- statements -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Option:
    """``option NAME v1 v2, v3;`` (``items``) or ``option NAME = expr;`` (``expr``).
    ``name`` may be ``space.name``."""

    name: str
    items: Items
    pos: Pos
    expr: Expr | None = None


@dataclass(frozen=True, slots=True)
class OptionDecl:
    """``option [SPACE.]NAME code N = TYPE;``"""

    name: str
    code: int
    type: OptionType
    pos: Pos


@dataclass(frozen=True, slots=True)
class Parameter:
    """Any other ``name args...;`` statement dhcpd knows (``filename``,
    ``next-server``, ``default-lease-time``, ``ddns-update-style``,
    ``use-host-decl-names on``, ``authoritative`` ...).  ``negated`` is the
    ``not`` of ``not authoritative``; ``expr`` is set for ``name = expr;``."""

    name: str
    items: Items
    pos: Pos
    negated: bool = False
    expr: Expr | None = None

    @property
    def values(self) -> tuple[Value, ...]:
        return tuple(v for group in self.items for v in group)

    @property
    def text(self) -> str | None:
        """The single argument's text, or None when there is not exactly one."""
        vals = self.values
        return vals[0].text if len(vals) == 1 else None


@dataclass(frozen=True, slots=True)
class Hardware:
    """``hardware TYPE ADDRESS;`` (TYPE is ``ethernet``, ``token-ring``, ``fddi``...)."""

    hw_type: str
    address: str
    pos: Pos

    @property
    def octets(self) -> bytes:
        return hex_bytes(self.address)


@dataclass(frozen=True, slots=True)
class FixedAddress:
    """``fixed-address a, b;``: IPs or host names (dhcpd resolves names)."""

    addresses: tuple[Value, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Range:
    """``range [dynamic-bootp] LOW [HIGH];`` (a single address has no HIGH)."""

    low: str
    high: str | None
    dynamic_bootp: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class AllowDeny:
    """``allow|deny|ignore WHAT;``: ``what`` is the words joined by blanks
    (``booting``, ``unknown-clients``, ``members of``, ``dynamic bootp clients``);
    ``class_name`` is set for ``members of "CLASS"``."""

    verb: str
    what: str
    pos: Pos
    class_name: str | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """``match if EXPR;`` (``conditional``) or ``match EXPR;`` (subclass key)."""

    expr: Expr
    conditional: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class SpawnWith:
    expr: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class SetVar:
    """``set NAME = EXPR;`` / ``unset NAME;`` (``expr`` None) / ``define``."""

    name: str
    expr: Expr | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Call:
    """An executable statement with an argument list: ``log (info, expr);``
    (``args`` are expressions; a log priority is a ``Variable``)."""

    name: str
    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Branch:
    cond: Expr
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class If:
    """``if C {..} elsif|else if C {..} else {..}``: branches in order."""

    branches: tuple[Branch, ...]
    orelse: Body | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Dangerous:
    """A statement an importer must refuse: ``kind`` is ``include``,
    ``execute``, ``on`` (``args`` = the events), ``omapi-port``, ``omapi-key``,
    ``key``, ``zone``.  ``body`` holds a block's statements when it has one."""

    kind: str
    args: tuple[Value, ...]
    pos: Pos
    body: Body | None = None
    exprs: tuple[Expr, ...] = ()  # execute's argument expressions


@dataclass(frozen=True, slots=True)
class Block:
    """Any other block (``failover peer "x" {..}``, ``subnet6``, ``pool6``):
    ``words`` are the tokens between the keyword and ``{``."""

    keyword: str
    words: tuple[Value, ...]
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class Subnet:
    network: str
    netmask: str
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class SharedNetwork:
    name: str
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class Group:
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class Pool:
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class Host:
    """``host NAME {..}``: the name is a bare word or a quoted string."""

    name: str
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class Class:
    """``class "NAME" {..}``: ``match``/``match if``/``spawn with`` live in the body."""

    name: str
    body: Body
    pos: Pos


@dataclass(frozen=True, slots=True)
class Subclass:
    """``subclass "CLASS" KEY;`` or with a body; KEY is a string or hex value."""

    class_name: str
    key: Value
    body: Body | None
    pos: Pos


Statement = (
    Option | OptionDecl | Parameter | Hardware | FixedAddress | Range | AllowDeny | Match | SpawnWith | SetVar | Call | If | Dangerous | Block | Subnet | SharedNetwork | Group | Pool | Host | Class | Subclass
)
Body = tuple[Statement, ...]
SCOPES = (Subnet, SharedNetwork, Group, Pool, Host, Class, Subclass, Block)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole file (with included files spliced in where they were included)."""

    body: Body
    pos: Pos

    def walk(self) -> Iterator[Statement]:
        """Every statement, depth first in file order (iterative: any depth)."""
        stack = [iter(self.body)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            yield node
            stack.extend(reversed([iter(b) for b in children(node)]))

    def dangerous(self) -> list[Dangerous]:
        return [n for n in self.walk() if isinstance(n, Dangerous)]


def children(node: Statement) -> list[Body]:
    """The statement lists directly inside a node (an ``If`` has several)."""
    if isinstance(node, If):
        bodies = [b.body for b in node.branches]
        return bodies + ([node.orelse] if node.orelse is not None else [])
    body = getattr(node, "body", None)
    return [body] if body else []
