"""The one typed configuration object, loaded at the edge (CLI) and passed in.

A TOML file (``--config``) gives the values, command-line flags override it,
and everything else has a default that works for the demo.  No module reads
settings on its own: the :class:`Config` built here is handed to
:class:`appliance.app.Appliance`, which hands the parts each component needs.

Example file::

    [server]
    interface = "prov0"
    address = "10.0.0.1"
    state_dir = "/var/lib/plowshare"

    [dhcp]
    pool = "10.0.0.100-10.0.0.200"
    prefix = 24
    router = "10.0.0.1"
    dns = ["10.0.0.1"]
    lease_time = 3600
    unknown = "ignore"          # or "boot" with default_profile
    mode = "server"             # or "proxy": the site's DHCP server keeps the
                                # addresses, Plowshare only answers PXE/iPXE
                                # clients with boot information (67 and 4011)
    arch_overrides = { 9 = "efi-x64" }
    ping_check = true           # ping a new address before offering it (skipped under load)
    rogue_detect = true         # record other DHCP servers seen on the interface
    rogue_probe_interval = 300  # and look for them with a DISCOVER every 300 s (0: off)
    max_lease_time = 86400      # a client's option-51 request is clamped to this
    relays = ["10.1.0.254"]     # relay agents whose option 82 is trusted (RFC 3046)
    options = { "ntp-servers" = ["10.0.0.1"] }   # global: every subnet, lowest layer
    always_send = ["ntp-servers"]   # sent even when a client's option 55 omits them

    [[dhcp.subnet]]             # more subnets, reached through relays (giaddr)
    network = "10.1.0.0/24"
    pools = ["10.1.0.100-10.1.0.150", "10.1.0.200-10.1.0.220"]
    lease_time = 7200           # optional; max_lease_time too
    always_send = ["interface-mtu"]   # optional, added to [dhcp] always_send
    [dhcp.subnet.options]       # this subnet's options (over [dhcp] options)
    routers = ["10.1.0.254"]
    domain-name-servers = ["10.0.0.1"]
    interface-mtu = 1400
    classless-static-routes = ["10.5.0.0/16 10.1.0.254", "0.0.0.0/0 10.1.0.254"]

    [variables]                 # global template variables (lowest layer)
    timezone = "Europe/Berlin"
    ssh_keys = ["ssh-ed25519 AAAA... ops@example"]

The ``[dhcp]`` keys ``pool``, ``prefix``, ``router``, ``dns``, ``domain``
describe the subnet of ``[server] address`` (the served interface).  A
``[[dhcp.subnet]]`` may describe that subnet instead, but not both at once.
Option names are ISC's (:mod:`appliance.dhcp_options`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import dhcp_options
from .model import Firmware, Subnet

REPO_ROOT = Path(__file__).resolve().parent.parent
DHCP_MODES = ("server", "proxy")


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names it."""


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool = True
    pool_first: str | None = None
    pool_last: str | None = None
    prefix: int = 24
    router: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    lease_time: int = 3600
    offer_hold: int = 60
    unknown: str = "ignore"  # "ignore" | "boot"
    default_profile: str | None = None
    arch_overrides: dict = field(default_factory=dict, hash=False)
    server_port: int = 67
    client_port: int = 68
    mode: str = "server"  # "server" (hands out addresses) | "proxy" (boot info only)
    pxe_port: int = 4011  # proxy mode: PXE boot server / ProxyDHCP REQUEST port
    max_lease_time: int = 86400
    relays: tuple[str, ...] = ()  # trusted relay agents (giaddr) for option 82
    options: dict = field(default_factory=dict, hash=False)  # global DHCP options
    always_send: tuple[str, ...] = ()  # ISC option names sent whatever option 55 asks
    subnets: tuple[Subnet, ...] = ()  # [[dhcp.subnet]] tables, besides the served one
    ping_check: bool = True  # server mode: ICMP echo before offering a new address
    rogue_detect: bool = True  # server mode: watch the interface for other DHCP servers
    rogue_probe_interval: float = 0.0  # seconds between active rogue DISCOVERs (0: off)

    @property
    def served_keys(self) -> bool:
        """Whether the legacy keys describe the served subnet."""
        return bool(self.pool_first or self.router or self.dns or self.domain)


@dataclass(frozen=True)
class Config:
    interface: str | None = None
    address: str = "127.0.0.1"
    state_dir: Path = Path("/var/lib/plowshare")
    netboot_dir: Path = REPO_ROOT / "netboot" / "tree"
    templates_dir: Path = REPO_ROOT / "netboot" / "templates"
    kickstarts_dir: Path = REPO_ROOT / "kickstarts"
    http_port: int = 80
    http_bind: str = "0.0.0.0"
    tftp_port: int = 69
    tftp_bind: str = "0.0.0.0"
    router_advertisements: bool = True
    token_ttl: int = 24 * 3600
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    variables: dict = field(default_factory=dict, hash=False)  # global template variables
    render_seconds: float = 2.0      # per template render (sandbox time limit)
    render_memory_mb: int = 256      # per sandbox worker (address space)

    @property
    def base_url(self) -> str:
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{self.address}{port}"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "plowshare.db"


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def parse_pool(text: str) -> tuple[str, str]:
    """``"10.0.0.100-10.0.0.200"`` -> both ends, validated and ordered."""
    first, sep, last = text.partition("-")
    if not sep:
        raise ConfigError(f"pool {text!r}: expected FIRST-LAST")
    a, b = _ip(first.strip(), "pool"), _ip(last.strip(), "pool")
    if ipaddress.IPv4Address(a) > ipaddress.IPv4Address(b):
        raise ConfigError(f"pool {text!r}: first address is after the last")
    return a, b


def _firmware_overrides(raw: dict) -> dict[int, Firmware]:
    out = {}
    for key, value in raw.items():
        try:
            out[int(key)] = Firmware(value)
        except ValueError:
            raise ConfigError(f"arch_overrides: {key!r} = {value!r}: "
                              f"use one of {[f.value for f in Firmware]}") from None
    return out


def _seconds(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what}: expected a positive number of seconds, got {value!r}")
    return value


def _pools_in(network: ipaddress.IPv4Network, texts, where: str) -> tuple:
    if isinstance(texts, str) or not isinstance(texts, list):
        raise ConfigError(f"{where}: pools must be a list of \"FIRST-LAST\"")
    pools = sorted((parse_pool(t) for t in texts),
                   key=lambda p: ipaddress.IPv4Address(p[0]))
    for first, last in pools:
        if ipaddress.IPv4Address(first) not in network or \
                ipaddress.IPv4Address(last) not in network:
            raise ConfigError(f"{where}: pool {first}-{last} is not inside {network}")
    for (_a, last), (first, _b) in itertools.pairwise(pools):
        if ipaddress.IPv4Address(first) <= ipaddress.IPv4Address(last):
            raise ConfigError(f"{where}: pools overlap at {first}")
    return tuple(pools)


SUBNET_KEYS = {"network", "pools", "options", "lease_time", "max_lease_time", "always_send"}


def subnet_from(raw: dict, where: str, source: str = "config") -> Subnet:
    """A validated :class:`Subnet` from a ``[[dhcp.subnet]]``-shaped table.

    Also what the store and the CLI use, so every subnet obeys one set of
    rules.  Raises :class:`ConfigError` naming ``where``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(raw) - SUBNET_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        network = ipaddress.IPv4Network(str(raw["network"]), strict=True)
    except KeyError:
        raise ConfigError(f"{where}: network is required (e.g. \"10.1.0.0/24\")") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: network: {exc}") from None
    where = f"{where} {network}"
    pools = _pools_in(network, raw.get("pools", []), where)
    try:
        options = dhcp_options.parse_table(raw.get("options", {}), where)
        always = dhcp_options.parse_names(raw.get("always_send", []), where)
    except dhcp_options.OptionError as exc:
        raise ConfigError(str(exc)) from None
    lease = raw.get("lease_time")
    most = raw.get("max_lease_time")
    lease = None if lease is None else _seconds(lease, f"{where}: lease_time")
    most = None if most is None else _seconds(most, f"{where}: max_lease_time")
    if lease and most and lease > most:
        raise ConfigError(f"{where}: lease_time {lease} exceeds max_lease_time {most}")
    return Subnet(str(network), pools, options, lease, most, source, always)


def check_subnets(subnets) -> None:
    """No two subnets may overlap (the same network twice included)."""
    nets = sorted(((ipaddress.IPv4Network(s.network), s) for s in subnets),
                  key=lambda p: (p[0].network_address, p[0].prefixlen))
    for (a, sa), (b, sb) in itertools.pairwise(nets):
        if a.overlaps(b):
            raise ConfigError(f"subnet {b} ({sb.source}) overlaps subnet {a} ({sa.source}); "
                              f"define each network once")


def _dhcp_from(raw: dict) -> DhcpConfig:
    kwargs = dict(raw)
    subnets = kwargs.pop("subnet", [])
    if not isinstance(subnets, list):
        raise ConfigError("dhcp.subnet: use [[dhcp.subnet]] tables")
    kwargs["subnets"] = tuple(subnet_from(t, f"[[dhcp.subnet]] #{i + 1}")
                              for i, t in enumerate(subnets))
    check_subnets(kwargs["subnets"])
    if "options" in kwargs:
        try:
            kwargs["options"] = dhcp_options.parse_table(kwargs["options"], "dhcp.options")
        except dhcp_options.OptionError as exc:
            raise ConfigError(str(exc)) from None
    if "always_send" in kwargs:
        try:
            kwargs["always_send"] = dhcp_options.parse_names(kwargs["always_send"], "dhcp")
        except dhcp_options.OptionError as exc:
            raise ConfigError(str(exc)) from None
    if "relays" in kwargs:
        kwargs["relays"] = tuple(_ip(r, "dhcp.relays") for r in kwargs["relays"])
    for key in ("lease_time", "max_lease_time"):
        if key in kwargs:
            kwargs[key] = _seconds(kwargs[key], f"dhcp.{key}")
    if "pool" in kwargs:
        kwargs["pool_first"], kwargs["pool_last"] = parse_pool(kwargs.pop("pool"))
    if "dns" in kwargs:
        kwargs["dns"] = tuple(_ip(d, "dns") for d in kwargs["dns"])
    if "arch_overrides" in kwargs:
        kwargs["arch_overrides"] = _firmware_overrides(kwargs["arch_overrides"])
    if kwargs.get("unknown", "ignore") not in ("ignore", "boot"):
        raise ConfigError("dhcp.unknown: use 'ignore' or 'boot'")
    if kwargs.get("mode", "server") not in DHCP_MODES:
        raise ConfigError(f"dhcp.mode: use one of {list(DHCP_MODES)}")
    return _build(DhcpConfig, kwargs, "dhcp")


def _build(cls, kwargs: dict, section: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - names
    if unknown:
        raise ConfigError(f"[{section}]: unknown keys {sorted(unknown)}")
    return cls(**kwargs)


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """Read ``path`` (TOML) if given, then apply non-``None`` overrides.

    Overrides use the CLI's names: ``interface``, ``address``, ``pool``,
    ``state_dir``, ``netboot_dir``, ``http_port``, ``tftp_port``, and
    ``dhcp_server_port``.  Raises :class:`ConfigError` on any bad value.
    """
    raw: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    server = dict(raw.get("server", {}))
    dhcp_raw = dict(raw.get("dhcp", {}))
    variables = raw.get("variables", {})
    if not isinstance(variables, dict):
        raise ConfigError("[variables] must be a table")
    extra = set(raw) - {"server", "dhcp", "variables"}
    if extra:
        raise ConfigError(f"unknown sections {sorted(extra)}")
    ov = {k: v for k, v in overrides.items() if v is not None}
    if "pool" in ov:
        dhcp_raw["pool"] = ov.pop("pool")
    if "dhcp_server_port" in ov:
        dhcp_raw["server_port"] = ov.pop("dhcp_server_port")
    server.update(ov)
    for key in ("state_dir", "netboot_dir", "templates_dir", "kickstarts_dir"):
        if key in server:
            server[key] = Path(server[key]).expanduser().resolve()
    if "address" in server:
        server["address"] = _ip(server["address"], "address")
    server["dhcp"] = _dhcp_from(dhcp_raw)
    server["variables"] = dict(variables)
    config = _build(Config, server, "server")
    _check_served(config)
    return config


def _check_served(config: Config) -> None:
    """The served subnet is described once: by the [dhcp] keys or by a table."""
    d = config.dhcp
    here = ipaddress.IPv4Address(config.address)
    for subnet in d.subnets:
        if here in ipaddress.IPv4Network(subnet.network) and d.served_keys:
            raise ConfigError(f"[[dhcp.subnet]] {subnet.network} holds the server address "
                              f"{config.address}, which [dhcp] pool/router/dns/domain "
                              f"already describe: use one or the other")
