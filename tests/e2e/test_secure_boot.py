"""UEFI Secure Boot netboot: shim -> GRUB -> per-MAC grub.cfg, with real signed binaries.

The guest is OVMF's Secure Boot build with Microsoft's keys enrolled
(``firmware="uefi-sb"``).  A host whose UEFI loader is ``grub`` must go:
OVMF PXE -> ``grub/shimx64.efi`` (signed by Microsoft) -> ``grub/grubx64.efi``
(signed by Debian, checked by shim) -> ``grub/grub.cfg`` -> the per-MAC
``grub.cfg-01-<mac>`` -> the Debian d-i kernel (signed by Debian, checked by
GRUB through shim) + the test initrd over TFTP (Debian's signed GRUB has no
HTTP client) -> kickstart over HTTP -> completion callback.  The kernel's own "Secure boot enabled" line proves the firmware
really enforced it.

The counter-test: the same firmware handed iPXE (unsigned ``snponly.efi``,
the default loader) must refuse to run it -- so the first test cannot pass
with Secure Boot silently off.
"""

from __future__ import annotations

import os

import pytest

from .appliance_proc import install_lab
from .qemu import FIRMWARE_ERROR_PATTERNS, Guest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BOOT_TIMEOUT = 900        # TCG with SMM: OVMF secboot + shim + GRUB's HTTP are slow; be generous
REFUSE_TIMEOUT = 600
MACS = {"grub": "52:54:00:e2:5b:01", "ipxe": "52:54:00:e2:5b:02"}
#: Printed when the firmware says Secure Boot is on: by the kernel's EFI stub,
#: by the kernel (arch/x86 setup), and by its lockdown code.
SB_LINES = ("EFI stub: UEFI Secure Boot is enabled", "secureboot: Secure boot enabled",
            "Kernel is locked down from EFI Secure Boot")
#: What each stage prints when a signature check refuses the next binary.
REFUSED = (r"Access Denied", r"prohibited by secure boot policy", r"bad shim signature",
           r"Verification failed[^\r\n]*")
#: OVMF BdsDxe's line when it will not start a boot option (EFI_ACCESS_DENIED:
#: the image failed the db/dbx check).
OVMF_REFUSED = r"BdsDxe: failed to (load|start) Boot\w+[^\r\n]*Access Denied"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-sb")
    with install_lab(work, {mac: ["--name", f"sb-{loader}", "--uefi-loader", loader]
                                for loader, mac in MACS.items()}) as (lab, server):
        yield lab, server, work


def _served(events: list[dict]) -> list[str]:
    return [e["detail"].lstrip("/") for e in events if e["kind"] == "tftp-done"]


def test_secure_boot_shim_grub_install(served):
    lab, server, work = served
    mac = MACS["grub"]
    host = server.host(mac)
    assert host["uefi_loader"] == "grub" and host["netboot"] is True

    guest = Guest(lab, "sb-grub", mac, workdir=work, firmware="uefi-sb")
    try:
        events = server.boot(guest, lambda evs: any(e["kind"] == "install-done" for e in evs),
                             BOOT_TIMEOUT, fail_patterns=(*FIRMWARE_ERROR_PATTERNS, *REFUSED))
        guest.wait_exit(120)
    finally:
        guest.stop()
    log = guest.log
    assert "PLOWSHARE-DONE-OK" in log, log[-3000:]
    for line in SB_LINES:
        assert line in log, f"no {line!r}: Secure Boot was not on?\n{log[-3000:]}"

    kinds = [e["kind"] for e in events]
    offers = [e["detail"] for e in events if e["kind"] == "dhcp-offer"]
    assert any("grub/shimx64.efi" in d for d in offers), offers
    served_files = _served(events)
    per_mac = "grub/grub.cfg-01-" + mac.replace(":", "-")
    for path in ("grub/shimx64.efi", "grub/grubx64.efi", "grub/grub.cfg", per_mac,
                 "distro/testinst/kernel", "distro/testinst/initrd"):
        assert path in served_files, f"{path} not served over TFTP: {served_files}"
    assert "ipxe/snponly.efi" not in served_files
    for kind in ("kickstart", "install-done"):
        assert kind in kinds, f"{kind} missing from timeline {kinds}"
    assert server.host(mac)["netboot"] is False


def test_secure_boot_refuses_unsigned_ipxe(served):
    """The same firmware, handed the default loader (unsigned iPXE), stops there."""
    lab, server, work = served
    mac = MACS["ipxe"]
    server.cli("host", "uefi-loader", mac, "ipxe")
    guest = Guest(lab, "sb-ipxe", mac, workdir=work, firmware="uefi-sb")
    try:
        guest.start()
        guest.wait_for(OVMF_REFUSED, REFUSE_TIMEOUT,
                       fail_patterns=[p for p in FIRMWARE_ERROR_PATTERNS if "PXE-E" not in p])
        events = [e for e in server.events(mac) if e["ts"] >= guest.started_epoch]
    finally:
        guest.stop()
    assert "ipxe/snponly.efi" in _served(events), events  # the firmware did fetch it...
    kinds = [e["kind"] for e in events]
    assert "http-script" not in kinds and "http-kernel" not in kinds, kinds  # ...and never ran it
    assert server.host(mac)["netboot"] is True
