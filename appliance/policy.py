"""What a machine boots: the one decision DHCP, TFTP and HTTP all consult.

:meth:`BootPolicy.boot_spec` is cheap (a few indexed reads), has no side
effects and gives the same answer to every protocol during one boot, so the
DHCP offer, the TFTP file and the iPXE script can never disagree.  ``None``
means "do not offer this machine anything to boot" (unknown MAC with
``unknown = "ignore"``, a firmware we have no loader for, or a broken
profile -- each logged).  Netboot off is *not* ``None``: it is a spec with
``local=True`` so each loader can answer "boot from disk" for its firmware.

Precedence: a host with a ``profile`` boots Plowshare's own way (loader,
iPXE script, kernel).  A host with no profile but ``boot_rules`` (imported
from a dhcpd.conf) boots what its rules say for this request
(:mod:`appliance.boot_rules`): the spec is ``imported`` and carries the
rule's filename / next-server / server-name.  Netboot off wins over both.

The first binary depends on the firmware and on the host's UEFI loader
choice (falling back to its profile's): iPXE by default; for
``UefiLoader.GRUB`` a UEFI x64 PXE client gets shim (Secure Boot), which runs
GRUB, which reads the per-MAC grub.cfg (:mod:`appliance.bootfiles`) -- with
netboot off too, so a Secure Boot machine is never handed a binary it refuses.
"""

from __future__ import annotations

import logging

from .arch import IPXE_LOADERS, SHIM_LOADERS
from .boot_rules import decide
from .config import Config
from .kickstart import Renderer, TemplateError, install_context
from .model import BootSpec, Host, Machine, UefiLoader
from .store import Store

log = logging.getLogger("plowshare.policy")


class BootPolicy:
    def __init__(self, store: Store, config: Config, renderer: Renderer):
        self.store = store
        self.config = config
        self.renderer = renderer

    def script_url(self, mac: str) -> str:
        return f"{self.config.base_url}/boot/{mac}.ipxe"

    def _host(self, mac: str) -> Host | None:
        host = self.store.host(mac)
        if host is not None:
            return host
        dhcp = self.config.dhcp
        if dhcp.unknown == "boot" and dhcp.default_profile:
            return Host(mac=mac, profile=dhcp.default_profile, netboot=True)
        return None

    def uefi_loader(self, host: Host) -> UefiLoader:
        """The host's UEFI loader choice, else its profile's, else iPXE."""
        if host.uefi_loader is not None:
            return host.uefi_loader
        profile = self.store.profile(host.profile) if host.profile else None
        return profile.uefi_loader if profile else UefiLoader.IPXE

    def _loader(self, machine: Machine, host: Host) -> tuple[bool, str | None]:
        """(can boot, first binary) -- ``None`` binary when already in iPXE."""
        if machine.ipxe:
            return True, None
        loader = IPXE_LOADERS.get(machine.firmware)
        if self.uefi_loader(host) is UefiLoader.GRUB:
            shim = SHIM_LOADERS.get(machine.firmware)
            if shim is None:
                log.info("%s wants shim+GRUB but firmware %s has none; iPXE instead",
                         machine.mac, machine.firmware.value)
            loader = shim or loader
        if loader is None:
            return False, None
        if machine.http_client:
            return True, f"{self.config.base_url}/netboot/{loader}"
        return True, loader

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        host = self._host(machine.mac)
        if host is None:
            return None
        if host.profile is None and host.boot_rules and host.netboot:
            return self._imported_spec(machine, host)
        ok, loader = self._loader(machine, host)
        if not ok:
            log.warning("%s no loader for firmware %s (arch %s)",
                        machine.mac, machine.firmware.value, machine.arch)
            return None
        base = BootSpec(mac=machine.mac, firmware=machine.firmware, local=True,
                        loader=loader, script_url=self.script_url(machine.mac),
                        profile=host.profile)
        if not host.netboot:
            return base
        return self._install_spec(base, host)

    def _imported_spec(self, machine: Machine, host: Host) -> BootSpec:
        decision = decide(host.boot_rules, machine)
        rule = decision.describe(host.boot_rules)
        log.debug("%s imported rules: %s", machine.mac, rule)
        return BootSpec(mac=machine.mac, firmware=machine.firmware, local=True, loader=None,
                        script_url=self.script_url(machine.mac), imported=True,
                        filename=decision.filename, next_server=decision.next_server,
                        server_name=decision.server_name, rule=rule)

    def _resolve(self, host: Host):
        """(profile, distro, ip) for ``host``; ip falls back to its lease."""
        profile = self.store.profile(host.profile) if host.profile else None
        distro = self.store.distro(profile.distro) if profile else None
        ip = host.ip
        if ip is None:
            lease = self.store.lease_for_mac(host.mac)
            ip = lease.ip if lease else None
        return profile, distro, ip

    def _install_spec(self, base: BootSpec, host: Host) -> BootSpec | None:
        profile, distro, ip = self._resolve(host)
        if profile is None or distro is None:
            log.warning("%s netboot on but profile %r or its distro is missing",
                        host.mac, host.profile)
            return None
        context = install_context(host, ip, profile, distro, self.config.base_url,
                                  self.config.address, host.token, self.config.variables)
        try:
            cmdline = self.renderer.render_string(profile.cmdline, context)
        except TemplateError as exc:
            log.warning("%s profile %s cmdline does not render: %s",
                        host.mac, profile.name, exc)
            return None
        return BootSpec(
            mac=base.mac, firmware=base.firmware, local=False, loader=base.loader,
            script_url=base.script_url, profile=profile.name,
            kernel=f"/distro/{distro.name}/kernel", initrd=f"/distro/{distro.name}/initrd",
            cmdline=" ".join(cmdline.split()), token=host.token)

    def install_context(self, host: Host) -> dict:
        """The template context for ``host``'s current install (kickstart rendering)."""
        profile, distro, ip = self._resolve(host)
        return install_context(host, ip, profile, distro, self.config.base_url,
                               self.config.address, host.token, self.config.variables)
