"""Boot scripts and loader configs rendered from a :class:`BootSpec`.

One Jinja2 environment over the operator-shipped ``netboot/templates``
(``ipxe.j2``, ``ipxe-local.j2``, ``pxelinux.j2``, ``grub.j2``,
``grub-default.j2``), loaded once.
These templates are ours, not user code, so the environment is not sandboxed;
``StrictUndefined`` still turns a typo into an error.

The *values* are another matter: a profile's command line is rendered from
operator and host data, and none of the three script languages can quote
everything.  Before rendering we check them:

* every value is one line (each format is line based);
* iPXE has no quoting at all -- it splits on whitespace, treats the tokens
  ``||``, ``&&`` and ``;`` as command separators and a token starting with
  ``#`` as a comment -- so such tokens are refused (``${...}`` settings are
  left alone: iPXE expands them, which operators sometimes want);
* GRUB has shell-like quoting, so unsafe words are single-quoted instead.

A refused value raises :class:`BootScriptError`; the caller answers 500.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from .model import BootSpec

_IPXE_OPERATORS = frozenset({"||", "&&", ";"})
_GRUB_SAFE = re.compile(r"[A-Za-z0-9_\-.,:/=+@%()]+")


class BootScriptError(ValueError):
    """A BootSpec value cannot be expressed safely in the target script."""


def grub_word(text: str) -> str:
    """One GRUB script word with the value ``text``, quoted when needed."""
    text = str(text)
    if _GRUB_SAFE.fullmatch(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def grub_words(text: str) -> str:
    """Each whitespace-separated word of ``text`` as a GRUB word.

    Limitation: a kernel argument that relies on double quotes to hold a
    space (``foo="a b"``) does not survive the word split.
    """
    return " ".join(grub_word(w) for w in str(text).split())


def _values(spec: BootSpec, base_url: str) -> dict[str, str]:
    return {"base_url": base_url, "mac": spec.mac, "profile": spec.profile or "",
            "kernel": spec.kernel or "", "initrd": spec.initrd or "",
            "cmdline": spec.cmdline}


def _check_lines(spec: BootSpec, base_url: str) -> None:
    for name, value in _values(spec, base_url).items():
        if "\n" in value or "\r" in value or "\0" in value:
            raise BootScriptError(f"{spec.mac}: {name} spans more than one line")
    if not spec.local and not (spec.kernel and spec.initrd):
        raise BootScriptError(f"{spec.mac}: install spec without kernel or initrd")


def _check_ipxe(spec: BootSpec, base_url: str) -> None:
    _check_lines(spec, base_url)
    for name, value in _values(spec, base_url).items():
        for token in value.split():
            if token in _IPXE_OPERATORS or token.startswith("#"):
                raise BootScriptError(
                    f"{spec.mac}: {name} holds {token!r}, which iPXE cannot take literally")
    for name in ("base_url", "kernel", "initrd"):
        if len(_values(spec, base_url)[name].split()) > 1:
            raise BootScriptError(f"{spec.mac}: {name} contains whitespace")


class BootScripts:
    """Renders the boot scripts of ``templates_dir`` (templates loaded once)."""

    TEMPLATES = ("ipxe.j2", "ipxe-local.j2", "pxelinux.j2", "grub.j2", "grub-default.j2")

    def __init__(self, templates_dir: Path):
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.filters["grub_word"] = grub_word
        self.env.filters["grub_words"] = grub_words
        self._templates = {name: self.env.get_template(name) for name in self.TEMPLATES}

    def _render(self, name: str, **context) -> str:
        return self._templates[name].render(**context)

    def ipxe(self, spec: BootSpec, base_url: str) -> str:
        """The ``#!ipxe`` script: install, or local boot when ``spec.local``."""
        _check_ipxe(spec, base_url)
        name = "ipxe-local.j2" if spec.local else "ipxe.j2"
        return self._render(name, spec=spec, base_url=base_url)

    def pxelinux(self, spec: BootSpec, base_url: str) -> str:
        """A per-MAC ``pxelinux.cfg`` file.

        ``base_url`` prefixes the kernel/initrd paths: an ``http://`` URL for
        lpxelinux.0, or ``""`` for the bare path that pxelinux.0 asks the TFTP
        server for.
        """
        _check_lines(spec, base_url)
        return self._render("pxelinux.j2", spec=spec, base_url=base_url)

    def grub(self, spec: BootSpec, base_url: str) -> str:
        """A per-MAC ``grub.cfg``; kernel and initrd over TFTP from GRUB's ``$root``."""
        _check_lines(spec, base_url)
        return self._render("grub.j2", spec=spec, base_url=base_url)

    def grub_default(self) -> str:
        """The top-level ``grub/grub.cfg``: source the per-MAC file, else exit."""
        return self._render("grub-default.j2")
