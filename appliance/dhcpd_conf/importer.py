"""Reading a dhcpd.conf for import, and applying an import plan.

Contract: :func:`load` is the only I/O of an import: it reads the file
and, only when the operator named an ``allow_include`` directory, the files
an ``include`` names that resolve (symlinks followed) inside it; any other
``include`` stays a ``Dangerous`` node, which :func:`.plan.plan` refuses
with its line.  :func:`apply` writes a plan in one store transaction (see
:mod:`appliance.store_import`): a failed import changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import ast
from .lexer import DhcpdConfError, Pos
from .parser import parse
from .plan import ImportPlan

log = logging.getLogger("plowshare.dhcpd")
MAX_FILE_BYTES = 64 * 1024 * 1024


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DhcpdConfError(f"file larger than {MAX_FILE_BYTES} bytes", str(path), 0, 0)
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def load(path: Path | str, allow_include: Path | str | None = None) -> ast.Config:
    """The parsed file; ``DhcpdConfError`` (file:line:col) when it does not parse
    or an allowed-directory include points outside that directory."""
    path = Path(path)
    try:
        text = _read(path)
    except OSError as exc:
        raise DhcpdConfError(f"cannot read: {exc.strerror}", str(path), 0, 0) from None
    if allow_include is None:
        return parse(text, str(path))
    root = Path(allow_include).resolve()

    def include(name: str, pos: Pos) -> tuple[str, str]:
        target = (path.parent / name).resolve()
        if not target.is_relative_to(root):
            raise DhcpdConfError(f"include {name!r}: outside the allowed directory {root}",
                                 pos.file, pos.line, pos.col)
        try:
            return _read(target), str(target)
        except OSError as exc:
            raise DhcpdConfError(f"include {name!r}: {exc.strerror}",
                                 pos.file, pos.line, pos.col) from None

    return parse(text, str(path), include)


def apply(result: ImportPlan, store, token_ttl: float) -> None:
    """Write ``result`` (which must be ``ok``) in one transaction."""
    if not result.ok:
        raise ValueError("an import with errors is never applied")
    store.apply_import(result.added, result.changed, [h.mac for h in result.removed],
                       [*result.subnets_added, *result.subnets_changed], token_ttl)
    for host in result.added:
        log.info("%s imported from %s (%s)", host.mac, result.source, host.name or "-")
    for host in result.changed:
        log.info("%s updated from %s", host.mac, result.source)
    for host in result.removed:
        log.info("%s removed: %s no longer lists it", host.mac, result.source)
