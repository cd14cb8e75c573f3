"""Rendering installer templates and kernel command lines for one host.

Templates are user code.  They render in :mod:`appliance.sandbox` (worker
processes with time, memory and output limits, Jinja2's sandbox and
``StrictUndefined``) and see only the plain context built here -- no store,
no config object, no callables.

Every template and command line sees the same names::

    host.mac  host.name  host.ip  ks_url  done_url
    appliance.address  appliance.base_url  profile  distro

plus the *variables*, as top-level names, layered host > profile > distro >
global (the config's ``[variables]``); a variable never replaces one of the
names above.  Host variables are also visible as ``host.<name>``.
"""

from __future__ import annotations

from .model import Distro, Host, Profile
from .sandbox import TemplateError
from .templates import TemplateLibrary

RESERVED = frozenset({"host", "ks_url", "done_url", "appliance", "profile", "distro"})


def layered_variables(host: Host, profile: Profile | None, distro: Distro | None,
                      global_vars: dict | None) -> dict:
    """host > profile > distro > global, reserved names dropped."""
    merged: dict = {}
    for layer in (global_vars or {}, distro.variables if distro else {},
                  profile.variables if profile else {}, host.variables):
        merged.update(layer)
    return {k: v for k, v in merged.items() if k not in RESERVED}


def install_context(host: Host, ip: str | None, profile: Profile | None,
                    distro: Distro | None, base_url: str, address: str,
                    token: str | None, global_vars: dict | None = None) -> dict:
    """The plain-data context for one host's install."""
    ks_url = f"{base_url}/ks/{token}" if token else ""
    done_url = f"{base_url}/done/{token}" if token else ""
    context = layered_variables(host, profile, distro, global_vars)
    context.update({
        "host": {**{k: v for k, v in host.variables.items() if k not in ("mac", "name", "ip")},
                 "mac": host.mac, "name": host.name or host.mac.replace(":", "-"),
                 "ip": ip or ""},
        "ks_url": ks_url,
        "done_url": done_url,
        "appliance": {"address": address, "base_url": base_url},
        "profile": profile.name if profile else "",
        "distro": distro.name if distro else "",
    })
    return context


class Renderer:
    """Renders library templates and one-off strings through a sandbox.

    ``sandbox`` is an :class:`appliance.sandbox.RenderSandbox` (started by
    the caller) or, in unit tests, :class:`appliance.sandbox_inline.InlineSandbox`.
    """

    def __init__(self, sandbox, library: TemplateLibrary):
        self.sandbox = sandbox
        self.library = library

    def render(self, name: str, context: dict, overlay: dict | None = None) -> str:
        """Render ``name``; ``overlay`` replaces sources (previews of unsaved edits)."""
        sources = self.library.sources()
        if overlay:
            sources.update(overlay)
        if name not in sources:
            raise TemplateError(f"no template named {name!r}", template=name)
        return self.sandbox.render(name, sources, context)

    def render_source(self, name: str, body: str, context: dict) -> str:
        return self.render(name, context, overlay={name: body})

    def render_string(self, source: str, context: dict) -> str:
        return self.sandbox.render_string(source, context)
