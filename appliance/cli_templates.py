"""CLI commands that render: ``template ...``, ``explain`` and ``distro import``.

They open the state like the other commands, plus a render sandbox (the same
worker processes the server uses), because templates are user code here too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .model import norm_mac
from .store import StoreError


def add_parsers(sub) -> None:
    t = sub.add_parser("template", help="installer templates: edit, history, render")
    ts = t.add_subparsers(dest="action", required=True)
    ts.add_parser("list")
    p = ts.add_parser("show")
    p.add_argument("name")
    p.add_argument("--version", type=int)
    p = ts.add_parser("edit", help="save FILE as the next version of NAME (validated)")
    p.add_argument("name")
    p.add_argument("file", help="the new body ('-' reads standard input)")
    p.add_argument("--note", default="")
    p = ts.add_parser("history")
    p.add_argument("name")
    p = ts.add_parser("diff")
    p.add_argument("name")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p = ts.add_parser("revert")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = ts.add_parser("render")
    p.add_argument("name")
    p.add_argument("--host", required=True, metavar="MAC")
    p = ts.add_parser("validate")
    p.add_argument("name")

    e = sub.add_parser("explain", help="what a MAC would boot now (changes nothing)")
    e.add_argument("mac")
    e.add_argument("--arch", type=int, help="client architecture (option 93), default 0")
    e.add_argument("--ipxe", action="store_true", help="as if the request came from iPXE")
    e.add_argument("--json", action="store_true")


def sample_context(app) -> dict:
    from .kickstart import install_context
    from .templates import SAMPLE_HOST

    cfg = app.config
    return install_context(SAMPLE_HOST, SAMPLE_HOST.ip, None, None, cfg.base_url,
                           cfg.address, SAMPLE_HOST.token, cfg.variables)


def _editor(app):
    from .templates import TemplateEditor
    from .validate import kind_of, validate

    return TemplateEditor(app.library, app.renderer, validate, kind_of)


def _print_problems(problems) -> None:
    for p in problems:
        where = f"line {p.line}" if p.line is not None else "?"
        print(f"{where}: {p.message}", file=sys.stderr)


def cmd_template(app, args) -> int:
    lib, action = app.library, args.action
    if action == "list":
        for name in lib.names():
            history = lib.history(name)
            print(f"{name}\tversion {history[-1].version}\t({len(history)} in history)")
        return 0
    if action == "show":
        found = lib.get(args.name, args.version)
        if found is None:
            raise StoreError(f"no template {args.name}"
                             + (f" version {args.version}" if args.version is not None else ""))
        sys.stdout.write(found.body)
        return 0
    if action == "history":
        import datetime
        for v in lib.history(args.name):
            stamp = datetime.datetime.fromtimestamp(v.ts).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{v.version}\t{stamp}\t{v.note}")
        return 0
    if action == "diff":
        sys.stdout.write(_editor(app).diff(args.name, args.a, args.b))
        return 0
    return _template_write(app, args)


def _template_write(app, args) -> int:
    from .kickstart import TemplateError
    from .templates import TemplateRefused

    editor = _editor(app)
    try:
        if args.action == "edit":
            body = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            version = editor.save(args.name, body, sample_context(app), args.note)
            print(f"{args.name} saved as version {version}")
        elif args.action == "revert":
            version = editor.revert(args.name, args.version, sample_context(app))
            print(f"{args.name} reverted to version {args.version} as version {version}")
        elif args.action == "render":
            host = app.store.host(norm_mac(args.host))
            if host is None:
                raise StoreError(f"no host {args.host}")
            sys.stdout.write(app.renderer.render(args.name, app.policy.install_context(host)))
        elif args.action == "validate":
            current = app.library.get(args.name)
            if current is None:
                raise StoreError(f"no template {args.name}")
            problems = editor.problems(args.name, current.body, sample_context(app))
            _print_problems(problems)
            print(f"{args.name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
    except TemplateRefused as exc:
        _print_problems(exc.problems)
        print(f"plowshare: {args.name} not saved; the previous version stays in use",
              file=sys.stderr)
        return 1
    except TemplateError as exc:
        print(f"plowshare: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_explain(app, args) -> int:
    from .explain import explain, format_report

    report = explain(norm_mac(args.mac), args.arch if args.arch is not None else 0,
                     args.ipxe, app)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0


def cmd_distro_import(store, cfg, args) -> int:
    from .distro_import import cli_progress, detect, import_media

    media = detect(Path(args.path))
    with cli_progress() as progress:
        distro = import_media(media, cfg.netboot_dir, name=args.name,
                              mode="link" if args.link else "copy", progress=progress)
    store.add_distro(distro)
    print(f"distro {distro.name} imported ({distro.breed} {distro.arch}): "
          f"{distro.kernel}, {distro.initrd}")
    return 0
