"""Per-machine files that TFTP generates from the boot policy.

TFTP keeps no session state: the machine is recovered from the path the
loader asks for, and the answer comes from the same :class:`BootSpec` the
DHCP offer and the iPXE script came from.

* ``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`` (pxelinux: BIOS);
* ``grub/grub.cfg-01-aa-bb-cc-dd-ee-ff`` (GRUB, EFI x64);
* ``grub/grub.cfg``: the same for every machine.  Debian's signed
  grubnetx64 reads only this file (no per-MAC search of its own), so it
  sources the per-MAC file by the booting MAC and otherwise exits to the
  firmware (the next boot option: the disk), as pxelinux's ``default`` would;
* ``distro/<name>/kernel`` and ``.../initrd``: the distro's own files (the
  same ones HTTP serves at that path), for GRUB -- Debian's signed GRUB has
  no HTTP client built in and may not load modules under Secure Boot.

pxelinux's fallbacks (hex-IP names, ``default``) are *not* generated: a
machine without a per-MAC answer gets "file not found" and pxelinux moves
on, which is what an unknown MAC should get.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .bootscripts import BootScriptError
from .model import Firmware, Machine, norm_mac
from .policy import BootPolicy

log = logging.getLogger("plowshare.tftp")

_PXELINUX = re.compile(r"^(?:pxelinux/)?pxelinux\.cfg/01-([0-9a-f]{2}(?:-[0-9a-f]{2}){5})$")
_GRUB_DEFAULT = "grub/grub.cfg"
_DISTRO = re.compile(r"^distro/([^/]+)/(kernel|initrd)$")
_GRUB = re.compile(r"^grub/grub\.cfg-01-([0-9a-f]{2}(?:-[0-9a-f]{2}){5})$")


class BootFiles:
    def __init__(self, policy: BootPolicy, scripts, base_url: str):
        self.policy = policy
        self.scripts = scripts
        self.base_url = base_url

    def __call__(self, path: str, client=None) -> bytes | Path | None:
        """The generated content (or file) for ``path``, or ``None`` to fall through."""
        match = _DISTRO.match(path.lstrip("/"))
        if match:
            return self._distro_file(*match.groups())
        path = path.lower().lstrip("/")
        match = _PXELINUX.match(path)
        if match:
            return self._render(match.group(1), Firmware.BIOS, self.scripts.pxelinux)
        if path == _GRUB_DEFAULT:
            return self.scripts.grub_default().encode()
        match = _GRUB.match(path)
        if match:
            return self._render(match.group(1), Firmware.EFI_X64, self.scripts.grub)
        return None

    def _render(self, mac_text: str, firmware: Firmware, render) -> bytes | None:
        mac = norm_mac(mac_text)
        spec = self.policy.boot_spec(Machine(mac=mac, firmware=firmware, ipxe=True))
        if spec is None:
            return None
        try:
            return render(spec, self.base_url).encode()
        except BootScriptError as exc:
            log.warning("%s boot script not generated: %s", mac, exc)
            return None

    def _distro_file(self, name: str, part: str) -> Path | None:
        distro = self.policy.store.distro(name)
        if distro is None:
            log.info("- tftp %s: no distro %r", part, name[:64])
            return None
        path = Path(distro.kernel if part == "kernel" else distro.initrd)
        if not path.is_absolute():
            log.error("- tftp %s: distro %s: %s is not an absolute path", part, name, path)
            return None
        return path
