"""The ``plowshare`` command: the server and the operator's tools.

Every command works against the state directory the server uses, while it
runs (SQLite WAL lets readers and one writer share it).  Errors print one
line to stderr and exit with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
from pathlib import Path

from . import dhcp_options
from .cli_dhcpd import COMMANDS as DHCPD_COMMANDS
from .cli_subnets import cmd_subnet
from .config import Config, ConfigError, load_config
from .model import Distro, Host, Profile, UefiLoader, norm_mac
from .store import Store, StoreError

DEFAULT_STATE = str(Config.state_dir)


def _var(text: str) -> tuple[str, object]:
    """``KEY=VALUE``; VALUE is JSON when it parses as a list, object, number or bool."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with an identifier KEY: {text!r}")
    try:
        parsed = json.loads(value)
        if isinstance(parsed, (list, dict, int, float, bool)):
            return key, parsed
    except ValueError:
        pass
    return key, value


def _add_var_flag(parser) -> None:
    parser.add_argument("--var", type=_var, action="append", default=[], metavar="KEY=VALUE",
                        help="template variable (repeatable; JSON values allowed)")


_LOADERS = [x.value for x in UefiLoader]
_LOADER_HELP = ("first binary for UEFI x64 PXE: ipxe (snponly.efi) or grub "
                "(shim -> GRUB, for Secure Boot)")


def _host_parser(sub) -> None:
    h = sub.add_parser("host", help="machines, by MAC").add_subparsers(
        dest="action", required=True)
    ha = h.add_parser("add")
    ha.add_argument("mac")
    ha.add_argument("--profile", required=True)
    ha.add_argument("--name")
    ha.add_argument("--ip")
    ha.add_argument("--no-netboot", action="store_true")
    ha.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="DHCP option for this host only, by ISC name (repeatable)")
    ha.add_argument("--uefi-loader", choices=_LOADERS,
                    help=_LOADER_HELP + "; default: the profile's")
    _add_var_flag(ha)
    h.add_parser("list")
    hs = h.add_parser("show")
    hs.add_argument("mac")
    hs.add_argument("--json", action="store_true")
    hn = h.add_parser("netboot")
    hn.add_argument("mac")
    hn.add_argument("onoff", choices=["on", "off"], metavar="on|off")
    hl = h.add_parser("uefi-loader", help="set a host's UEFI loader")
    hl.add_argument("mac")
    hl.add_argument("loader", choices=[*_LOADERS, "profile"],
                    help=_LOADER_HELP + "; profile: follow the profile's")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plowshare", description=__doc__.splitlines()[0])
    p.add_argument("--state", help=f"state directory (default {DEFAULT_STATE})")
    p.add_argument("--config", help="TOML config file (flags override it)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run DHCP, TFTP and HTTP in the foreground")
    s.add_argument("--config", dest="serve_config", metavar="FILE", help="TOML config file")
    s.add_argument("--state", dest="serve_state", metavar="DIR", help="state directory")
    s.add_argument("--interface", help="provisioning interface (DHCP, RA)")
    s.add_argument("--address", help="this appliance's address on that network")
    s.add_argument("--pool", help="dynamic pool FIRST-LAST")
    s.add_argument("--netboot", help="netboot tree served over TFTP and HTTP")
    s.add_argument("--http-port", type=int)
    s.add_argument("--tftp-port", type=int)
    s.add_argument("--verbose", "-v", action="store_true")

    d = sub.add_parser("distro", help="installer kernels and initrds").add_subparsers(
        dest="action", required=True)
    da = d.add_parser("add")
    da.add_argument("name")
    da.add_argument("--kernel", required=True)
    da.add_argument("--initrd", required=True)
    da.add_argument("--arch", default="x86_64")
    _add_var_flag(da)
    d.add_parser("list")
    di = d.add_parser("import", help="register installer media (netboot tree, RHEL tree/ISO)")
    di.add_argument("path")
    di.add_argument("--name")
    di.add_argument("--link", action="store_true",
                    help="hard-link into the netboot tree instead of copying")

    pr = sub.add_parser("profile", help="distro + template + kernel args").add_subparsers(
        dest="action", required=True)
    pa = pr.add_parser("add")
    pa.add_argument("name")
    pa.add_argument("--distro", required=True)
    pa.add_argument("--template")
    pa.add_argument("--cmdline", default="")
    pa.add_argument("--uefi-loader", choices=_LOADERS, default=UefiLoader.IPXE.value,
                    help=_LOADER_HELP + " (default: ipxe)")
    _add_var_flag(pa)

    _host_parser(sub)
    from .cli_subnets import add_parser as add_subnet_parser
    from .cli_templates import add_parsers
    add_parsers(sub)
    add_subnet_parser(sub)
    from .cli_dhcpd import add_parsers as add_dhcpd_parsers
    add_dhcpd_parsers(sub)

    dh = sub.add_parser("dhcp", help="DHCP state").add_subparsers(dest="action", required=True)
    dh.add_parser("rogues", help="other DHCP servers seen on the provisioning network"
                  ).add_argument("--json", action="store_true")

    e = sub.add_parser("events", help="a machine's boot timeline")
    e.add_argument("mac")
    e.add_argument("--json", action="store_true")
    return p


def _config(args) -> Config:
    if args.cmd == "serve":  # `plowshare serve --state X` == `plowshare --state X serve`
        args.state = args.serve_state or args.state
        args.config = args.serve_config or args.config
    over = {"state_dir": args.state}
    if args.cmd == "serve":
        over.update(interface=args.interface, address=args.address, pool=args.pool,
                    netboot_dir=args.netboot, http_port=args.http_port,
                    tftp_port=args.tftp_port)
    return load_config(args.config, **over)


def _host_dict(store: Store, host: Host) -> dict:
    out = dataclasses.asdict(host)
    lease = store.lease_for_mac(host.mac)
    out["lease"] = dataclasses.asdict(lease) if lease else None
    return out


def _cmd_distro(store: Store, cfg: Config, args) -> int:
    if args.action == "import":
        from .cli_templates import cmd_distro_import
        return cmd_distro_import(store, cfg, args)
    if args.action == "list":
        for d in store.distros():
            print(f"{d.name}\t{d.arch}\t{d.kernel}\t{d.initrd}")
        return 0
    paths = []
    for label, path in (("kernel", args.kernel), ("initrd", args.initrd)):
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_file():
            raise StoreError(f"{label} {path}: not a file")
        paths.append(str(resolved))
    store.add_distro(Distro(args.name, paths[0], paths[1], args.arch,
                            variables=dict(args.var)))
    print(f"distro {args.name} added")
    return 0


def _cmd_host(store: Store, cfg: Config, args) -> int:
    if args.action == "add":
        options = dict(dhcp_options.parse_assignment(text) for text in args.option)
        host = Host(mac=norm_mac(args.mac), profile=args.profile, name=args.name,
                    ip=args.ip, netboot=not args.no_netboot, variables=dict(args.var),
                    options=options,
                    uefi_loader=UefiLoader(args.uefi_loader) if args.uefi_loader else None)
        store.add_host(host, cfg.token_ttl)
        print(f"host {host.mac} added (netboot {'off' if args.no_netboot else 'on'})")
    elif args.action == "list":
        for host in store.hosts():
            lease = store.lease_for_mac(host.mac)
            ip = host.ip or (lease.ip if lease else "-")
            print(f"{host.mac}\t{host.name or '-'}\t{ip}\t{host.profile or '-'}\t"
                  f"netboot={'on' if host.netboot else 'off'}")
    elif args.action == "show":
        host = store.host(norm_mac(args.mac))
        if host is None:
            raise StoreError(f"no host {args.mac}")
        data = _host_dict(store, host)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for key, value in data.items():
                print(f"{key}: {value}")
    elif args.action == "netboot":
        host = store.set_netboot(norm_mac(args.mac), args.onoff == "on", cfg.token_ttl)
        print(f"host {host.mac} netboot {args.onoff}")
    elif args.action == "uefi-loader":
        loader = None if args.loader == "profile" else UefiLoader(args.loader)
        host = store.set_uefi_loader(norm_mac(args.mac), loader)
        print(f"host {host.mac} uefi-loader {args.loader}")
    return 0


def _cmd_events(store: Store, cfg: Config, args) -> int:
    events = store.events(norm_mac(args.mac))
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in events], indent=2))
        return 0
    for ev in events:
        stamp = datetime.datetime.fromtimestamp(ev.ts).strftime("%H:%M:%S.%f")[:-3]
        print(f"{stamp}  {ev.kind:<16} {ev.detail}")
    return 0


def _cmd_dhcp(store: Store, cfg: Config, args) -> int:
    from .servers.rogue import rogue_summary

    rogues = rogue_summary(store.events_of_kind("dhcp-rogue"))
    if args.json:
        print(json.dumps(rogues, indent=2))
        return 0
    for r in rogues:
        stamp = datetime.datetime.fromtimestamp(r["last"]).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r['server']}\t{r['mac']}\tlast {stamp}\toffered {r['offered'] or '-'}"
              f"\t{r['events']} events")
    return 0


def _cmd_profile(store: Store, cfg: Config, args) -> int:
    store.add_profile(Profile(args.name, args.distro, args.template, args.cmdline,
                              variables=dict(args.var),
                              uefi_loader=UefiLoader(args.uefi_loader)))
    print(f"profile {args.name} added")
    return 0


def _serve(cfg: Config, args) -> int:
    from .app import Appliance

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # SIGHUP re-reads the same file with the same flags
    return Appliance(cfg, config_loader=lambda: _config(args)).run()


COMMANDS = {"distro": _cmd_distro, "profile": _cmd_profile, "host": _cmd_host,
            "events": _cmd_events, "subnet": cmd_subnet, "dhcp": _cmd_dhcp,
            **DHCPD_COMMANDS}


def _with_appliance(cfg: Config, args) -> int:
    """Commands that render run against an opened (not serving) Appliance."""
    from .app import Appliance
    from .cli_templates import cmd_explain, cmd_template

    app = Appliance(cfg)
    app.open()
    try:
        return (cmd_template if args.cmd == "template" else cmd_explain)(app, args)
    finally:
        app.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args)
        if args.cmd == "serve":
            return _serve(cfg, args)
        if args.cmd in ("template", "explain"):
            return _with_appliance(cfg, args)
        store = Store(cfg.db_path).open()
        try:
            return COMMANDS[args.cmd](store, cfg, args)
        finally:
            store.close()
    except (ConfigError, StoreError, ValueError) as exc:
        print(f"plowshare: {exc}", file=sys.stderr)
        return 2
