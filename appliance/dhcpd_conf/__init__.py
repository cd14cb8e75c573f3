"""The ISC dhcpd.conf language: lexer, syntax tree, expression evaluator, parser.

Entry points: ``parse(text, filename, include=None) -> Config``,
``DhcpdConfError``, ``evaluate(expr, Facts)`` / ``Unsupported``, and
``iter_hosts(config)`` for hosts with the scopes they inherit.  Pure: no
I/O anywhere in this package (an ``include`` callback is the caller's).
"""

from .ast import Config, Dangerous, Host
from .expr import Facts, Unsupported, evaluate, truth
from .lexer import DhcpdConfError, Pos
from .parser import parse
from .scope import HostInScope, iter_hosts

__all__ = [
    "Config", "Dangerous", "DhcpdConfError", "Facts", "Host", "HostInScope", "Pos",
    "Unsupported", "evaluate", "iter_hosts", "parse", "truth",
]
