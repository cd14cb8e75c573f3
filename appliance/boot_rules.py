"""Evaluating a host's imported boot rules against one boot request.

Contract: :func:`decide` is pure.  For each of ``filename``,
``next_server`` and ``server_name`` the first rule whose ``when`` holds and
that sets the field wins (see :class:`appliance.model.BootRule`).  A
condition that cannot be decided from the request (``Unsupported``: a
variable, a regex, ``config-option`` ...) or that no longer parses counts as
"no match" and is logged; the importer already warned about it.

Facts come from the :class:`Machine`: option 93 (client architecture,
RFC 4578 2.1) as two bytes, option 60 (vendor class, RFC 2132 9.13),
option 77 (user class, RFC 3004), the hardware address, ``known`` true
(an imported host is a host declaration).  Conditions name options by ISC
name; ``system-arch`` is Cobbler's declared name for option 93 and is known
here without a declaration (the exporter writes the declaration back).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from .dhcpd_conf import DhcpdConfError, Facts, Unsupported, truth
from .dhcpd_conf.expr import Expr
from .dhcpd_conf.exprtext import parse_condition_text
from .model import BootRule, Machine

log = logging.getLogger("plowshare.policy")

OPT_VENDOR_CLASS = 60   # RFC 2132 9.13
OPT_USER_CLASS = 77     # RFC 3004
OPT_CLIENT_ARCH = 93    # RFC 4578 2.1
#: Option names a rule may use beyond the ISC built-ins (the file's declarations
#: are rewritten to these or to built-in names at import time).
DECLARED = {"system-arch": OPT_CLIENT_ARCH}
FIELDS = ("filename", "next_server", "server_name")


@functools.lru_cache(maxsize=4096)
def condition(text: str) -> Expr:
    """The parsed ``when`` text (cached: the same few texts serve every host)."""
    return parse_condition_text(text, "<boot rule>")


def facts_of(machine: Machine) -> Facts:
    options: dict[int, bytes] = {}
    if machine.arch is not None:
        options[OPT_CLIENT_ARCH] = machine.arch.to_bytes(2, "big")
    if machine.vendor_class is not None:
        options[OPT_VENDOR_CLASS] = machine.vendor_class.encode("latin-1", "replace")
    if machine.user_class is not None:
        options[OPT_USER_CLASS] = machine.user_class.encode("latin-1", "replace")
    return Facts(options=options, hw_address=bytes.fromhex(machine.mac.replace(":", "")),
                 known=True, declared=DECLARED)


@dataclass(frozen=True)
class Decision:
    filename: str | None
    next_server: str | None
    server_name: str | None
    chosen: dict  # field -> index of the rule that set it

    def describe(self, rules: tuple[BootRule, ...]) -> str:
        if not self.chosen:
            return "no boot rule matched"
        parts = []
        for name, i in self.chosen.items():
            when = rules[i].when or "always"
            parts.append(f"{name.replace('_', '-')} from rule {i + 1} ({when})")
        return "; ".join(parts)


def holds(rule: BootRule, facts: Facts, mac: str) -> bool:
    if rule.when is None:
        return True
    try:
        return truth(condition(rule.when), facts)
    except (Unsupported, DhcpdConfError) as exc:
        log.info("%s boot rule %r counts as no match: %s", mac, rule.when, exc)
        return False


def decide(rules: tuple[BootRule, ...], machine: Machine) -> Decision:
    facts = facts_of(machine)
    values: dict[str, str] = {}
    chosen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        wanted = [f for f in FIELDS if f not in values and getattr(rule, f) is not None]
        if not wanted or not holds(rule, facts, machine.mac):
            continue
        for f in wanted:
            values[f], chosen[f] = getattr(rule, f), i
        if len(values) == len(FIELDS):
            break
    return Decision(values.get("filename"), values.get("next_server"),
                    values.get("server_name"), chosen)
