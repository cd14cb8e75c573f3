"""The DHCP options an operator may set, by their ISC dhcp-options(5) name.

This registry is the one seam between option *text* (TOML config, the CLI's
``--option NAME=VALUE``, a dhcpd.conf importer) and option *bytes* on the
wire.  Every entry names its code, the RFC that defines it and a value type:

=============  ====================================  ===========================
type           accepted values                       canonical value (JSON-able)
=============  ====================================  ===========================
``ip``         ``"10.0.0.1"``                        ``"10.0.0.1"``
``ip-array``   list, or ``"a, b"`` / ``"a b"``        ``["a", "b"]``
``ip-pairs``   list of ``"DEST ROUTER"``, or text     ``["DEST ROUTER", ...]``
``routes``     list of ``"NET/LEN ROUTER"``, or text  ``["NET/LEN ROUTER", ...]``
``text``       string (surrounding quotes dropped)    ``"..."``
``domains``    list, or ``"a.example, b.example"``    ``["a.example", ...]``
``uint8/16/32`` / ``int32``  int or its text         ``int``
``bool``       bool, ``true/false/on/off/1/0``        ``bool``
=============  ====================================  ===========================

:func:`parse` turns either form into the canonical value (so TOML, the store
and the CLI all hold the same thing) and raises :class:`OptionError` with the
option's name for anything wrong, including an unknown name and a value
too long for any reply (:data:`MAX_VALUE_LEN`).  A value longer than 255
bytes is fine: the codec splits it into consecutive instances (RFC 3396).
:func:`encode` turns a canonical value into ``(code, bytes)``;
:func:`always_codes` turns an ``always_send`` list into codes.

Decisions and quirks:

* ``classless-static-routes`` (121, RFC 3442) is not native to ISC dhcpd;
  ISC sites declare it as ``rfc3442-classless-static-routes``, so both names
  are accepted and mean the same option.  Option 249 (Microsoft's pre-RFC
  copy of 121) is **not** sent automatically: every Windows since Vista
  reads 121.  A site that still needs it sets ``ms-classless-static-routes``
  (the name ISC configs give 249) explicitly.  RFC 3442 section 3 says a
  client that gets 121 ignores ``routers``; whoever sets 121 for a subnet
  with a default route should include ``0.0.0.0/0 ROUTER`` in it.
* ``domain-search`` (119, RFC 3397) is encoded as RFC 1035 names without
  compression pointers (allowed; every client tested decodes it).
* ``dhcp-lease-time`` (51) is accepted in option tables but is not sent as
  given: it sets the default lease time of that subnet or host, and the
  server sends the granted time (see :mod:`appliance.subnets`).
* Option codes the server manages itself (message type, server identifier,
  T1/T2, requested address, option 82, parameter list...) are not in the
  registry, so no table can override them.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

# Longest value accepted.  RFC 3396 splits longer ones into 255-byte pieces, but
# a reply is at most 1500 bytes (appliance.servers.dhcp_packing): beyond this a
# value could never be sent next to the options a reply cannot do without.
MAX_VALUE_LEN = 1024


class OptionError(ValueError):
    """An option name or value is wrong; the message names the option."""


@dataclass(frozen=True)
class OptionSpec:
    name: str
    code: int
    kind: str
    rfc: str


def _spec(name: str, code: int, kind: str, rfc: str) -> OptionSpec:
    return OptionSpec(name, code, kind, rfc)


# code and RFC section per option; names exactly as ISC dhcp-options(5) spells them
OPTIONS: dict[str, OptionSpec] = {s.name: s for s in (
    _spec("subnet-mask", 1, "ip", "RFC 2132 3.3"),
    _spec("time-offset", 2, "int32", "RFC 2132 3.4"),
    _spec("routers", 3, "ip-array", "RFC 2132 3.5"),
    _spec("time-servers", 4, "ip-array", "RFC 2132 3.6"),
    _spec("domain-name-servers", 6, "ip-array", "RFC 2132 3.8"),
    _spec("log-servers", 7, "ip-array", "RFC 2132 3.9"),
    _spec("lpr-servers", 9, "ip-array", "RFC 2132 3.11"),
    _spec("host-name", 12, "text", "RFC 2132 3.14"),
    _spec("domain-name", 15, "text", "RFC 2132 3.17"),
    _spec("root-path", 17, "text", "RFC 2132 3.19"),
    _spec("ip-forwarding", 19, "bool", "RFC 2132 4.1"),
    _spec("default-ip-ttl", 23, "uint8", "RFC 2132 4.5"),
    _spec("interface-mtu", 26, "uint16", "RFC 2132 5.1"),
    _spec("broadcast-address", 28, "ip", "RFC 2132 5.3"),
    _spec("static-routes", 33, "ip-pairs", "RFC 2132 5.8"),
    _spec("nis-domain", 40, "text", "RFC 2132 8.1"),
    _spec("nis-servers", 41, "ip-array", "RFC 2132 8.2"),
    _spec("ntp-servers", 42, "ip-array", "RFC 2132 8.3"),
    _spec("netbios-name-servers", 44, "ip-array", "RFC 2132 8.5"),
    _spec("netbios-node-type", 46, "uint8", "RFC 2132 8.7"),
    _spec("dhcp-lease-time", 51, "uint32", "RFC 2132 9.2"),
    _spec("tftp-server-name", 66, "text", "RFC 2132 9.4"),
    _spec("bootfile-name", 67, "text", "RFC 2132 9.5"),
    _spec("smtp-server", 69, "ip-array", "RFC 2132 8.12"),
    _spec("domain-search", 119, "domains", "RFC 3397"),
    _spec("classless-static-routes", 121, "routes", "RFC 3442"),
    _spec("ms-classless-static-routes", 249, "routes", "Microsoft, = RFC 3442"),
)}
ALIASES = {"rfc3442-classless-static-routes": "classless-static-routes"}
LEASE_TIME = "dhcp-lease-time"


def spec(name: str) -> OptionSpec:
    """The registry entry for ``name`` (or its alias); OptionError if unknown."""
    found = OPTIONS.get(ALIASES.get(name, name))
    if found is None:
        raise OptionError(f"unknown DHCP option {name!r} (ISC dhcp-options(5) names, "
                          f"e.g. routers, domain-name-servers, interface-mtu)")
    return found


# -- parsing: TOML value or text -> canonical value --------------------------
def _items(value) -> list[str]:
    """A list as given, or text split on commas (then whitespace for ip lists)."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    raise ValueError(f"expected a list or text, got {value!r}")


def _ip(text: str) -> str:
    return str(ipaddress.IPv4Address(str(text).strip()))


def _ip_array(value) -> list[str]:
    items = _items(value)
    if isinstance(value, str):
        items = [p for item in items for p in item.split()]
    if not items:
        raise ValueError("at least one address")
    return [_ip(i) for i in items]


def _pair(item: str, network: bool) -> str:
    parts = item.replace(" via ", " ").split()
    if len(parts) != 2:
        raise ValueError(f"{item!r}: expected DESTINATION ROUTER")
    dest = (str(ipaddress.IPv4Network(parts[0], strict=True)) if network
            else _ip(parts[0]))
    return f"{dest} {_ip(parts[1])}"


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value:
        raise ValueError("empty text")
    return value


def _domain(name: str) -> str:
    name = name.strip().strip('"').rstrip(".")
    labels = name.split(".")
    if not name or any(not 0 < len(label) < 64 for label in labels):
        raise ValueError(f"{name!r} is not a domain name")
    return name


def _int(bits: int, signed: bool) -> Callable:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def parse(value) -> int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        number = int(value, 0) if isinstance(value, str) else int(value)
        if number != value and not isinstance(value, str):
            raise ValueError(f"expected an integer, got {value!r}")
        if not low <= number <= high:
            raise ValueError(f"{number} outside {low}..{high}")
        return number
    return parse


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "on", "1", "yes"):
        return True
    if text in ("false", "off", "0", "no"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


_PARSERS: dict[str, Callable] = {
    "ip": lambda v: _ip(_text(v)),
    "ip-array": _ip_array,
    "ip-pairs": lambda v: [_pair(i, network=False) for i in _items(v)],
    "routes": lambda v: [_pair(i, network=True) for i in _items(v)],
    "text": _text,
    "domains": lambda v: [_domain(i) for i in _items(v)],
    "uint8": _int(8, False), "uint16": _int(16, False), "uint32": _int(32, False),
    "int32": _int(32, True),
    "bool": _bool,
}


def parse(name: str, value):
    """Canonical value of option ``name`` from a TOML value or text.

    Raises :class:`OptionError` naming the option when the name is unknown,
    the value does not parse, or its encoding would exceed :data:`MAX_VALUE_LEN`.
    """
    entry = spec(name)
    try:
        canonical = _PARSERS[entry.kind](value)
        if entry.kind in ("ip-pairs", "routes") and not canonical:
            raise ValueError("at least one route")
        if entry.name == "interface-mtu" and canonical < 68:
            raise ValueError("below the minimum of 68 (RFC 2132 5.1)")
        size = len(_ENCODERS[entry.kind](canonical))
    except (ValueError, TypeError) as exc:
        raise OptionError(f"option {name}: {exc}") from None
    if size > MAX_VALUE_LEN:
        raise OptionError(f"option {name}: {size} bytes encoded, more than {MAX_VALUE_LEN}")
    return canonical


def parse_names(value, where: str) -> tuple[str, ...]:
    """An ``always_send`` list of option names -> their ISC names (OptionError if unknown)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise OptionError(f"{where}: always_send must be a list of option names")
    try:
        return tuple(dict.fromkeys(spec(str(name)).name for name in value))
    except OptionError as exc:
        raise OptionError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=256)
def always_codes(names: tuple[str, ...]) -> frozenset[int]:
    """The option codes of validated ``always_send`` names (memoised: hot path)."""
    return frozenset(spec(name).code for name in names)


def parse_table(table, where: str) -> dict:
    """``{name: value}`` (TOML table or CLI pairs) -> ``{ISC name: canonical}``."""
    if not isinstance(table, dict):
        raise OptionError(f"{where}: options must be a table of NAME = VALUE")
    out = {}
    for name, value in table.items():
        try:
            out[spec(name).name] = parse(name, value)
        except OptionError as exc:
            raise OptionError(f"{where}: {exc}") from None
    return out


def parse_assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` (the CLI's ``--option``) -> ``(ISC name, canonical value)``."""
    name, sep, value = text.partition("=")
    if not sep:
        raise OptionError(f"expected NAME=VALUE: {text!r}")
    name = name.strip()
    return spec(name).name, parse(name, value.strip())


# -- wire encoding -------------------------------------------------------------
def _ip_bytes(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def _route_bytes(route: str) -> bytes:
    """RFC 3442 section 2: width, the significant octets of the net, router."""
    net, router = route.split()
    network = ipaddress.IPv4Network(net)
    width = network.prefixlen
    return (bytes((width,)) + network.network_address.packed[:(width + 7) // 8]
            + _ip_bytes(router))


def _pair_bytes(pair: str) -> bytes:
    dest, router = pair.split()
    return _ip_bytes(dest) + _ip_bytes(router)


def _domains_bytes(names: list[str]) -> bytes:
    """RFC 3397: RFC 1035 names back to back, uncompressed."""
    out = b""
    for name in names:
        for label in name.split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode()
            out += bytes((len(raw),)) + raw
        out += b"\x00"
    return out


_ENCODERS: dict[str, Callable[[object], bytes]] = {
    "ip": _ip_bytes,
    "ip-array": lambda v: b"".join(map(_ip_bytes, v)),
    "ip-pairs": lambda v: b"".join(map(_pair_bytes, v)),
    "routes": lambda v: b"".join(map(_route_bytes, v)),
    "text": lambda v: v.encode(),
    "domains": _domains_bytes,
    "uint8": lambda v: struct.pack("!B", v),
    "uint16": lambda v: struct.pack("!H", v),
    "uint32": lambda v: struct.pack("!I", v),
    "int32": lambda v: struct.pack("!i", v),
    "bool": lambda v: b"\x01" if v else b"\x00",
}


def encode(name: str, value) -> tuple[int, bytes]:
    """``(code, payload)`` of a canonical value, ready for a reply's option list."""
    entry = spec(name)
    return entry.code, _ENCODERS[entry.kind](value)
