"""CLI commands for ISC dhcpd.conf files and tenants.

``import-dhcpd FILE [--tenant NAME] [--dry-run] [--json] [--allow-include DIR]``
prints what the import changes (JSON with ``--json``) and applies it in one
transaction unless ``--dry-run``.  Exit status: 0 applied or previewed,
1 refused (parse error, dangerous statements, unknown tenant, a write that
failed: nothing changed), 2 usage.  ``export-dhcpd [--tenant NAME]`` prints
the store as a dhcpd.conf (a tenant's export: its hosts only).
``tenant add NAME``, ``tenant assign NAME MAC... [--range FIRST-LAST...]``,
``tenant list``.
"""

from __future__ import annotations

import dataclasses
import json

from .config import Config
from .dhcpd_conf import DhcpdConfError
from .dhcpd_conf.export import export
from .dhcpd_conf.importer import apply, load
from .dhcpd_conf.ledger import Issue
from .dhcpd_conf.plan import ImportPlan, Snapshot, plan
from .model import norm_mac
from .store import Store, StoreError
from .subnets import served_subnet


def add_parsers(sub) -> None:
    i = sub.add_parser("import-dhcpd", help="import an ISC dhcpd.conf (hosts, subnets, "
                                            "boot logic)")
    i.add_argument("file")
    i.add_argument("--tenant", help="a tenant's upload: only its MACs and ranges")
    i.add_argument("--dry-run", action="store_true", help="show the changes, apply nothing")
    i.add_argument("--json", action="store_true")
    i.add_argument("--allow-include", metavar="DIR",
                   help="follow `include` statements, only for files under DIR")
    e = sub.add_parser("export-dhcpd", help="print the store as a dhcpd.conf")
    e.add_argument("--tenant")
    t = sub.add_parser("tenant", help="tenants: who owns which MACs and addresses")
    ts = t.add_subparsers(dest="action", required=True)
    ts.add_parser("add").add_argument("name")
    a = ts.add_parser("assign", help="give MACs (and address ranges) to a tenant")
    a.add_argument("name")
    a.add_argument("macs", nargs="*", metavar="MAC")
    a.add_argument("--range", action="append", default=[], metavar="FIRST-LAST")
    ts.add_parser("list").add_argument("--json", action="store_true")


def _config_subnets(cfg: Config) -> list:
    served = served_subnet(cfg)
    return [served, *(s for s in cfg.dhcp.subnets if s != served)]


def plan_json(result: ImportPlan, applied: bool) -> dict:
    def host(h):
        out = dataclasses.asdict(h)
        out.pop("token", None)
        return out

    return {
        "source": result.source, "tenant": result.tenant, "applied": applied,
        "added": [host(h) for h in result.added],
        "changed": [host(h) for h in result.changed],
        "removed": [h.mac for h in result.removed], "unchanged": result.unchanged,
        "subnets_added": [s.network for s in result.subnets_added],
        "subnets_changed": [s.network for s in result.subnets_changed],
        **{k: [str(i) for i in getattr(result, k)]
           for k in ("errors", "conflicts", "rejections", "warnings")},
    }


def _summary(result: ImportPlan, applied: bool) -> str:
    lines = []
    for label, issues in (("error", result.errors), ("conflict", result.conflicts),
                          ("rejected", result.rejections), ("warning", result.warnings)):
        lines += [f"{label}: {i}" for i in issues]
    lines += [f"add     {h.mac} {h.name or '-'} {h.ip or '-'} ({len(h.boot_rules)} boot rules)"
              for h in result.added]
    lines += [f"change  {h.mac} {h.name or '-'} {h.ip or '-'}" for h in result.changed]
    lines += [f"remove  {h.mac} {h.name or '-'}" for h in result.removed]
    lines += [f"subnet  {s.network} (new)" for s in result.subnets_added]
    lines += [f"subnet  {s.network} (changed)" for s in result.subnets_changed]
    state = "refused: nothing changed" if not result.ok else \
        "applied" if applied else "dry run: nothing changed"
    lines.append(f"{result.source}: {len(result.added)} added, {len(result.changed)} changed, "
                 f"{len(result.removed)} removed, {len(result.unchanged)} unchanged, "
                 f"{len(result.subnets_added) + len(result.subnets_changed)} subnets, "
                 f"{len(result.conflicts)} conflicts, {len(result.rejections)} rejected, "
                 f"{len(result.warnings)} warnings -- {state}")
    return "\n".join(lines)


def cmd_import(store: Store, cfg: Config, args) -> int:
    try:
        config = load(args.file, args.allow_include)
    except DhcpdConfError as exc:
        print(json.dumps({"applied": False, "errors": [str(exc)]}) if args.json
              else f"error: {exc}")
        return 1
    result = plan(config, Snapshot.of(store, _config_subnets(cfg)), args.tenant)
    applied, status = False, 0 if result.ok else 1
    if result.ok and not args.dry_run:
        try:
            apply(result, store, cfg.token_ttl)
            applied = True
        except StoreError as exc:
            result.errors.append(Issue(args.file, str(exc)))
            status = 1
    print(json.dumps(plan_json(result, applied), indent=2) if args.json
          else _summary(result, applied))
    return status


def cmd_export(store: Store, cfg: Config, args) -> int:
    if args.tenant is not None and args.tenant not in store.tenants():
        raise StoreError(f"no tenant {args.tenant!r}")
    hosts = [h for h in store.hosts() if args.tenant is None or h.tenant == args.tenant]
    subnets = [] if args.tenant else [*_config_subnets(cfg), *store.subnets()]
    print(export(hosts, subnets, f"plowshare ({args.tenant or 'operator'})"), end="")
    return 0


def _range(text: str) -> tuple[str, str]:
    first, sep, last = text.partition("-")
    if not sep:
        raise ValueError(f"--range {text!r}: expected FIRST-LAST")
    return first.strip(), last.strip()


def cmd_tenant(store: Store, cfg: Config, args) -> int:
    if args.action == "add":
        store.add_tenant(args.name)
        print(f"tenant {args.name} added")
    elif args.action == "assign":
        macs = [norm_mac(m) for m in args.macs]
        store.assign_tenant(args.name, macs, [_range(r) for r in args.range])
        print(f"tenant {args.name}: {len(macs)} MACs, {len(args.range)} ranges assigned")
    else:
        macs, ranges = store.tenant_macs(), store.tenant_ranges()
        rows = [{"name": t, "macs": sorted(m for m, o in macs.items() if o == t),
                 "ranges": [list(r) for r in ranges.get(t, [])]} for t in store.tenants()]
        if args.json:
            print(json.dumps(rows, indent=2))
        for row in [] if args.json else rows:
            spans = ",".join("-".join(r) for r in row["ranges"]) or "-"
            print(f"{row['name']}\t{len(row['macs'])} MACs\t{spans}")
    return 0


COMMANDS = {"import-dhcpd": cmd_import, "export-dhcpd": cmd_export, "tenant": cmd_tenant}
