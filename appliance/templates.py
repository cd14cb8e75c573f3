"""Installer templates: the bundled files plus every saved version.

Contract:

* A template's name is its path under ``kickstarts/`` (``default.ks.j2``,
  ``snippets/completion.j2``).  Version 0 is the bundled file; every save
  stores version 1, 2, ... in the store, and the newest version is what
  renders.  Reverting saves an old body again as a new version, so history
  only grows.
* :meth:`TemplateEditor.save` refuses a body -- and stores nothing, so the
  previous version keeps being served -- when it does not parse, does not
  render for a sample host (undefined variable, forbidden construct, a limit
  hit), or when its rendered output fails the installer's validator
  (pykickstart, the autoinstall schema, the preseed syntax check).  Every
  refusal names the line.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .model import Host, TemplateVersion
from .store import Store

log = logging.getLogger("plowshare.templates")

IGNORED_SUFFIXES = frozenset({".md", ".txt", ".pyc"})
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")
SAMPLE_HOST = Host(mac="52:54:00:00:00:01", profile=None, name="sample-host",
                   ip="192.0.2.10", token="sample-token")


class TemplateRefused(ValueError):
    """A template was not saved; ``problems`` say where and why."""

    def __init__(self, name: str, problems: list):
        self.name, self.problems = name, problems
        lines = [f"{name}:{p.line if p.line is not None else '?'}: {p.message}"
                 for p in problems]
        super().__init__("template refused:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Problem:
    """A template-level problem (syntax or render), shaped like validate.Problem."""

    line: int | None
    column: int | None
    message: str
    severity: str = "error"


class TemplateLibrary:
    """Where template sources come from: the store first, then ``kickstarts/``."""

    def __init__(self, store: Store, kickstarts_dir: Path):
        self.store = store
        self.kickstarts_dir = Path(kickstarts_dir)

    def bundled_names(self) -> list[str]:
        if not self.kickstarts_dir.is_dir():
            return []
        return sorted(p.relative_to(self.kickstarts_dir).as_posix()
                      for p in self.kickstarts_dir.rglob("*")
                      if p.is_file() and not p.name.startswith(".")
                      and p.suffix not in IGNORED_SUFFIXES)

    def names(self) -> list[str]:
        return sorted(set(self.bundled_names()) | set(self.store.template_names()))

    def _bundled(self, name: str) -> TemplateVersion | None:
        if name not in self.bundled_names():
            return None
        path = self.kickstarts_dir / name
        return TemplateVersion(name, 0, path.read_text(), path.stat().st_mtime, "bundled")

    def get(self, name: str, version: int | None = None) -> TemplateVersion | None:
        """``version`` None: what renders now; 0: the bundled file; n: saved version n."""
        if version == 0:
            return self._bundled(name)
        saved = self.store.template(name, version)
        if saved is not None or version is not None:
            return saved
        return self._bundled(name)

    def history(self, name: str) -> list[TemplateVersion]:
        bundled = self._bundled(name)
        return ([bundled] if bundled else []) + self.store.template_history(name)

    def sources(self) -> dict[str, str]:
        """Every template's current body, for rendering (includes resolve here)."""
        out = {}
        for name in self.names():
            current = self.get(name)
            if current is not None:
                out[name] = current.body
        return out


class TemplateEditor:
    """Save, diff and revert with validation; ``renderer`` is a kickstart.Renderer."""

    def __init__(self, library: TemplateLibrary, renderer, validate, kind_of):
        self.library = library
        self.renderer = renderer
        self.validate = validate
        self.kind_of = kind_of

    def problems(self, name: str, body: str, context: dict) -> list:
        """Everything wrong with ``body`` as template ``name`` (empty: fine).

        The template itself must render for ``context``; and because a
        snippet is only as good as what includes it, every top-level
        template must still render and validate with this body in place.
        """
        overlay = {name: body}
        targets = [name] + [n for n in self.library.names()
                            if n != name and not n.startswith("snippets/")]
        found = []
        for target in targets:
            found += self._check_one(target, overlay, context, prefix=target != name)
        return found

    def _check_one(self, target: str, overlay: dict, context: dict, prefix: bool) -> list:
        from .kickstart import TemplateError

        where = f"via {target}: " if prefix else ""
        try:
            rendered = self.renderer.render(target, context, overlay=overlay)
        except TemplateError as exc:
            # the error may sit in another template (an included snippet): name it then
            own = exc.template in (None, target, "<template>")
            line = exc.lineno if own else None
            return [Problem(line, None, where + (exc.message if own else str(exc)))]
        return [Problem(p.line, p.column, where + p.message)
                for p in self.validate(self.kind_of(target), rendered)
                if p.severity == "error"]

    def save(self, name: str, body: str, context: dict, note: str = "") -> int:
        if not _NAME_OK.match(name) or ".." in name.split("/") \
                or Path(name).suffix in IGNORED_SUFFIXES:
            raise TemplateRefused(name, [Problem(None, None, "name must be a relative path "
                                                 "of letters, digits, '.', '_', '-'")])
        problems = self.problems(name, body, context)
        if problems:
            log.warning("template %s refused: %d problem(s)", name, len(problems))
            raise TemplateRefused(name, problems)
        version = self.library.store.save_template(name, body, note)
        log.info("template %s saved as version %d", name, version)
        return version

    def diff(self, name: str, a: int, b: int) -> str:
        old, new = self.library.get(name, a), self.library.get(name, b)
        if old is None or new is None:
            missing = a if old is None else b
            raise ValueError(f"{name} has no version {missing}")
        return "".join(difflib.unified_diff(
            old.body.splitlines(keepends=True), new.body.splitlines(keepends=True),
            f"{name}@{a}", f"{name}@{b}"))

    def revert(self, name: str, version: int, context: dict) -> int:
        old = self.library.get(name, version)
        if old is None:
            raise ValueError(f"{name} has no version {version}")
        return self.save(name, old.body, context, note=f"revert to version {version}")
