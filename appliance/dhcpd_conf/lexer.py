"""Tokens of the ISC dhcpd.conf language (dhcpd.conf(5), "conflex.c" rules).

Contract:

* ``tokenize(text, filename)`` never raises anything but ``DhcpdConfError``
  and never skips a character silently: whitespace and ``#`` comments are
  dropped, everything else becomes a token.  An unterminated string is the
  only lexical error.
* ``tokenize`` gives ``Token(kind, value, offset)``; ``scan`` gives the same
  as three parallel lists, which keeps a 10 MB file fast (see ``scan``).
  ``kind`` is one of ``STR``, ``ATOM``, ``OP``.  Positions are computed on
  demand from the offset by ``LineIndex`` (1-based line and column).
* ``ATOM`` is one run of ``[A-Za-z0-9_.:/-]``: names (``domain-name``,
  ``agent.circuit-id``), numbers, dotted IPs, colon-separated hex
  (``00:07``, MACs, ``1:8:0:2b:4c:39:ad``) and IPv6 text all lex alike; the
  parser classifies them with ``is_number`` / ``is_ip`` / ``is_hex``.
  Field quirk: dhcpd's own lexer splits ``a:b`` into three tokens, so
  ``00 : 07`` with blanks is legal there and rejected here (nobody writes it).
* ``OP`` is ``~=``, ``~~``, ``!=`` or any other single character
  (``{ } ; , = ( ) !`` and also stray ones such as ``+`` that only a key
  secret may contain; the parser decides).
* ``STR`` values are unescaped with dhcpd's escapes: ``\\t \\r \\n \\b``,
  ``\\ooo`` octal, ``\\xhh`` hex, and ``\\c`` = ``c`` for anything else.
  Escaped bytes >= 0x80 become surrogate escapes, so
  ``string_bytes(value)`` gives back exactly the bytes dhcpd would use
  (decode files with ``errors="surrogateescape"`` for the same reason).
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

STR = "STR"
ATOM = "ATOM"
OP = "OP"

# Whitespace matches no alternative, so finditer skips it in C; a comment is
# a token of its own (dropped afterwards) so its text is never tokenized.
_SCANNER = re.compile(
    r"""(?P<COMMENT>\#[^\n]*)"""
    r"""|(?P<STR>"(?:[^"\\]|\\.)*")"""
    r"|(?P<ATOM>[A-Za-z0-9_.:/\-]+)"
    r"|(?P<OP>~=|~~|!=|[^ \t\r\n\f\v])",
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "b": "\b"}

_NUMBER = re.compile(r"-?[0-9]+\Z")
_IPV4 = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}\Z")
_HEX = re.compile(r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2})*\Z")


class DhcpdConfError(ValueError):
    """A dhcpd.conf error at a place: ``str()`` is ``file:line:col: message``."""

    def __init__(self, message: str, filename: str = "<string>", line: int = 0, col: int = 0):
        super().__init__(f"{filename}:{line}:{col}: {message}")
        self.message = message
        self.filename = filename
        self.line = line
        self.col = col


class Pos(NamedTuple):
    """Where a token or node starts: file name, 1-based line and column.
    (An immutable value like the nodes, but a NamedTuple: a 10 MB file makes
    a million of them.)"""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def error_at(pos: Pos, message: str) -> DhcpdConfError:
    return DhcpdConfError(message, pos.file, pos.line, pos.col)


class Token(NamedTuple):
    kind: str
    value: str
    offset: int


class LineIndex:
    """Maps character offsets of one text to ``Pos`` (built once, O(log n) per lookup)."""

    def __init__(self, text: str, filename: str):
        self.filename = filename
        self._starts = [0]
        self._starts.extend(m.end() for m in re.finditer("\n", text))
        self._starts.append(len(text) + 1)  # sentinel: the line after the last
        self._i = 0  # the parser moves forward: start from the last line found

    def pos(self, offset: int) -> Pos:
        starts, i = self._starts, self._i
        if not starts[i] <= offset < starts[i + 1]:
            if starts[i + 1] <= offset < starts[i + 2] if i + 2 < len(starts) else False:
                i += 1
            else:
                i = bisect.bisect_right(starts, offset) - 1
            self._i = i
        return Pos(self.filename, i + 1, offset - starts[i] + 1)

    def error(self, message: str, offset: int) -> DhcpdConfError:
        p = self.pos(offset)
        return DhcpdConfError(message, p.file, p.line, p.col)


def _unescape_one(m: re.Match[str]) -> str:
    octal, hexa, other = m.groups()
    if other is not None:
        return _SIMPLE_ESCAPES.get(other, other)
    n = int(octal, 8) if octal is not None else int(hexa, 16)
    if n > 0xFF:
        n &= 0xFF  # dhcpd keeps the low byte of an over-long octal escape
    return chr(n) if n < 0x80 else chr(0xDC00 + n)


def unescape(raw: str) -> str:
    """The value of a quoted string given without its quotes."""
    return _ESCAPE.sub(_unescape_one, raw) if "\\" in raw else raw


def string_bytes(value: str) -> bytes:
    """The bytes dhcpd would use for a string value (see module docstring)."""
    return value.encode("utf-8", "surrogateescape")


def scan(text: str, filename: str = "<string>") -> tuple[list[str], list[str], list[int]]:
    """The tokens of ``text`` as three parallel lists: kinds, values, offsets.

    Lists of plain strings and ints are invisible to the cyclic garbage
    collector; a million token tuples alive during a parse are not, and
    made the collector cost more than the parse itself."""
    kinds: list[str] = []
    values: list[str] = []
    offsets: list[int] = []
    add_kind, add_value, add_offset = kinds.append, values.append, offsets.append
    for m in _SCANNER.finditer(text):
        kind = m.lastgroup
        if kind == "COMMENT":
            continue
        value = m.group()
        if kind == STR:
            value = unescape(value[1:-1])
        elif value == '"':
            raise LineIndex(text, filename).error("unterminated string", m.start())
        add_kind(kind)
        add_value(value)
        add_offset(m.start())
    return kinds, values, offsets


def tokenize(text: str, filename: str = "<string>") -> list[Token]:
    """All tokens of ``text`` (``scan`` is the fast form the parser uses)."""
    return [Token(*t) for t in zip(*scan(text, filename), strict=True)]


def is_number(atom: str) -> bool:
    return _NUMBER.match(atom) is not None


def is_ip(atom: str) -> bool:
    return _IPV4.match(atom) is not None and all(int(p) < 256 for p in atom.split("."))


def is_hex(atom: str) -> bool:
    """Colon-separated hex octets (``00:07``, a MAC); a lone octet counts too."""
    return _HEX.match(atom) is not None


def hex_bytes(atom: str) -> bytes:
    return bytes(int(part, 16) for part in atom.split(":"))
