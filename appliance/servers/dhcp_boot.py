"""What a PXE/iPXE/HTTP-boot client is sent to next: the request's
:class:`~appliance.model.Machine`, the policy's answer for it, and that answer
mapped to BOOTP fields and options.

Shared by the full server (:mod:`appliance.servers.dhcp`), proxyDHCP
(:mod:`appliance.servers.proxydhcp`) and ``plowshare explain``, so all three
always send one machine to the same place.  Pure: no sockets, no store writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..arch import classify, describe
from ..config import Config
from ..model import BootSpec, Machine
from . import dhcp_codec as c
from .relay import trusted_relay_info

log = logging.getLogger("plowshare.dhcp")


def machine_of(req: c.DhcpRequest, ctx) -> Machine:
    """The :class:`Machine` a request describes (``ctx``: a DHCP or proxyDHCP context)."""
    firmware, http = classify(req.arch, ctx.config.dhcp.arch_overrides)
    vendor = req.vendor_class or ""
    sub = c.relay_suboptions(trusted_relay_info(req, ctx))
    return Machine(
        mac=req.mac, firmware=firmware, arch=req.arch,
        ipxe=req.user_class == "iPXE" or req.ipxe_options,
        vendor_class=req.vendor_class, user_class=req.user_class,
        interface=ctx.interface, http_client=http or vendor.startswith("HTTPClient"),
        relay=req.giaddr if req.giaddr != "0.0.0.0" else None,
        circuit_id=sub.get(c.RELAY_CIRCUIT_ID), remote_id=sub.get(c.RELAY_REMOTE_ID))


def is_boot_client(req: c.DhcpRequest) -> bool:
    vendor = req.vendor_class or ""
    return (vendor.startswith(("PXEClient", "HTTPClient"))
            or req.user_class == "iPXE" or req.ipxe_options)


def boot_options(machine: Machine, spec: BootSpec, config: Config,
                 uuid: bytes | None = None) -> tuple[str, list]:
    """(filename, options) that send ``machine`` to its next boot stage.

    Pure: this is also what ``plowshare explain`` prints.  ``uuid`` is the
    client's option 97, echoed as the PXE spec asks.  An ``imported`` spec
    sends the file its rules chose (an http(s) URL for iPXE is its script)
    and names its next-server / server-name in option 66.
    """
    filename = spec.script_url if machine.ipxe else spec.loader or ""
    tftp_server = config.address
    if spec.imported:
        filename = spec.filename or ""
        tftp_server = spec.server_name or spec.next_server or config.address
    opts: list = []
    if machine.ipxe:
        opts.append((c.OPT_IPXE_ENCAP, bytes([c.IPXE_NO_PXEDHCP, 1, 1])))
    elif machine.http_client:
        opts.append(("vendor_class_id", b"HTTPClient"))
    else:
        opts.append(("vendor_class_id", b"PXEClient"))
        opts.append(("vendor_specific", bytes([c.PXE_DISCOVERY_CONTROL, 1,
                                               c.PXE_DISCOVERY_USE_BOOTFILE, c.OPT_END])))
    if uuid is not None:
        opts.append(("pxe_client_machine_identifier", uuid))
    if not machine.http_client and not machine.ipxe:
        opts.append(("tftp_server_name", tftp_server.encode()))
    opts.append(("boot-file-name", filename.encode()))
    return filename, opts


@dataclass(frozen=True)
class BootAnswer:
    """What a boot client is sent to next: the policy's answer mapped to the wire."""

    machine: Machine
    spec: BootSpec
    filename: str
    options: list

    @property
    def note(self) -> str:
        stage = "ipxe-script" if self.machine.ipxe else "loader"
        what = "local" if self.spec.local else f"install {self.spec.profile}"
        if self.spec.imported:
            stage, what = "imported", f"next-server {self.spec.next_server or '-'}"
        return f"{stage} {self.filename} ({what}, {self.machine.firmware.value})"


def boot_answer(req: c.DhcpRequest, ctx) -> BootAnswer | None:
    """Ask the policy about ``req``'s machine; ``None`` (logged) when it says nothing.

    Shared by the full server and proxyDHCP, so both always send the same
    machine to the same place.  ``ctx`` needs ``config`` and ``policy``.
    """
    if not is_boot_client(req):
        return None
    machine = machine_of(req, ctx)
    spec = ctx.policy.boot_spec(machine)
    if spec is None:
        log.info("%s no boot answer (arch %s, vendor %r, user class %r)", req.mac,
                 describe(req.arch), req.vendor_class, req.user_class)
        return None
    if spec.imported and not spec.filename:
        log.info("%s imported boot rules give no filename (%s)", req.mac, spec.rule)
        return None
    filename, opts = boot_options(machine, spec, ctx.config, req.uuid)
    return BootAnswer(machine, spec, filename, opts)
