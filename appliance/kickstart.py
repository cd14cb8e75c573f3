"""Sandboxed rendering of installer templates and kernel command lines.

Templates are user code.  They render in Jinja2's ``SandboxedEnvironment``
with ``StrictUndefined`` (a typo is an error, not an empty string), and see
only the plain context built by :func:`install_context` -- no store, no
config object, no callables.  Issue 3 adds time/memory/output limits; the
output cap below already stops the cheapest resource-exhaustion payloads.

Every template and command line sees the same names::

    host.mac  host.name  host.ip  ks_url  done_url
    appliance.address  appliance.base_url  profile  distro
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .model import Distro, Host, Profile

MAX_OUTPUT = 1 << 20  # bytes a rendered template may produce


class TemplateError(ValueError):
    """A template failed to load or render; ``lineno`` when Jinja2 knows it."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message if lineno is None else f"line {lineno}: {message}")
        self.lineno = lineno


def install_context(host: Host, ip: str | None, profile: Profile | None,
                    distro: Distro | None, base_url: str, address: str,
                    token: str | None) -> dict:
    """The plain-data context for one host's install."""
    ks_url = f"{base_url}/ks/{token}" if token else ""
    done_url = f"{base_url}/done/{token}" if token else ""
    return {
        "host": {"mac": host.mac, "name": host.name or host.mac.replace(":", "-"),
                 "ip": ip or "", **{k: v for k, v in host.variables.items()
                                    if k not in ("mac", "name", "ip")}},
        "ks_url": ks_url,
        "done_url": done_url,
        "appliance": {"address": address, "base_url": base_url},
        "profile": profile.name if profile else "",
        "distro": distro.name if distro else "",
    }


class Renderer:
    """Loads templates from ``kickstarts_dir`` and renders them sandboxed."""

    def __init__(self, kickstarts_dir: Path):
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(kickstarts_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )

    def _run(self, template: jinja2.Template, context: dict) -> str:
        out, size = [], 0
        try:
            for chunk in template.generate(**context):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise TemplateError(f"output exceeds {MAX_OUTPUT} bytes")
                out.append(chunk)
        except jinja2.TemplateError as exc:
            raise TemplateError(str(exc), getattr(exc, "lineno", None)) from None
        except (ArithmeticError, MemoryError, RecursionError) as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}") from None
        return "".join(out)

    def render_string(self, source: str, context: dict) -> str:
        try:
            template = self.env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), exc.lineno) from None
        return self._run(template, context)

    def render(self, name: str, context: dict) -> str:
        try:
            template = self.env.get_template(name)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"no template named {name!r}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), exc.lineno) from None
        return self._run(template, context)
