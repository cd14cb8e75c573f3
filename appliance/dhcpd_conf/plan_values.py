"""dhcpd.conf statements -> store values: option values and subnets.

Contract: pure helpers of :mod:`appliance.dhcpd_conf.plan`.  Each returns
the mapped value or raises ``Unmapped`` with the reason a warning or
rejection should give; the caller names the line.  Option values are typed
through :mod:`appliance.dhcp_options` (so the store holds exactly what
``--option`` and TOML would produce); a host name where dhcpd wants an
address is not resolved (import is pure) and so is not mapped.
"""

from __future__ import annotations

import ipaddress

from .. import dhcp_options
from ..config import ConfigError, subnet_from
from ..model import Subnet
from . import ast

#: Options that are not per-client values: declarations of the site or parts
#: of a boot decision handled elsewhere (host-name: the host's name).
NOT_OPTIONS = frozenset({"host-name"})
#: dhcpd's way to force options on a client (it replaces the client's option
#: 55); Plowshare's equivalent is config ``always_send``, not a host option.
PARAMS_OVERRIDE = "dhcp-parameter-request-list"


class Unmapped(ValueError):
    """A statement that cannot be stored as it is; the message says why."""


def option_value(node: ast.Option) -> tuple[str, object]:
    """``(ISC name, canonical value)`` of a constant ``option`` statement."""
    if node.expr is not None:
        raise Unmapped(f"option {node.name} = <expression> is computed per request")
    if node.name == PARAMS_OVERRIDE:
        raise Unmapped(f"option {node.name} (the server's override of the client's list) "
                       f"is not mapped: use always_send in [dhcp] or [[dhcp.subnet]]")
    try:
        entry = dhcp_options.spec(node.name)
    except dhcp_options.OptionError:
        raise Unmapped(f"option {node.name} is not one Plowshare sends") from None
    names = [v for group in node.items for v in group if v.kind == ast.NAME]
    if names and entry.kind in ("ip", "ip-array", "ip-pairs", "routes"):
        raise Unmapped(f"option {node.name}: {names[0].text} is a host name, not resolved")
    if entry.kind in ("text", "domains") and len(node.items) == 1 and len(node.items[0]) == 1:
        text = node.items[0][0].text
    else:
        text = ", ".join(" ".join(v.text for v in group) for group in node.items)
    try:
        return entry.name, dhcp_options.parse(entry.name, text)
    except dhcp_options.OptionError as exc:
        raise Unmapped(str(exc)) from None


def seconds(node: ast.Parameter) -> int:
    if node.text is None or not node.text.isdigit():
        raise Unmapped(f"{node.name}: expected a number of seconds")
    return int(node.text)


def network_of(node: ast.Subnet) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(f"{node.network}/{node.netmask}", strict=True)
    except ValueError as exc:
        raise Unmapped(f"subnet {node.network} netmask {node.netmask}: {exc}") from None


def subnet_of(node: ast.Subnet, options: dict, lease: int | None, most: int | None,
              pools: list[tuple[str, str]]) -> Subnet:
    """The store subnet for ``node`` with what the caller collected for it."""
    raw: dict = {"network": str(network_of(node)), "pools": [f"{a}-{b}" for a, b in pools],
                 "options": options}
    if lease is not None:
        raw["lease_time"] = lease
    if most is not None:
        raw["max_lease_time"] = most
    if lease and most and lease > most:
        raw["lease_time"] = most  # dhcpd caps the default at the maximum too
    try:
        return subnet_from(raw, f"subnet {node.network}", source="store")
    except ConfigError as exc:
        raise Unmapped(str(exc)) from None
