"""Real firmware netboots from Plowshare, installs once, then boots locally.

One lab and one ``plowshare serve`` for the module; each firmware gets its
own host.  A guest's first boot must go PXE ROM -> iPXE -> HTTP script ->
kernel + initrd over HTTP -> kickstart rendered for its own MAC -> the
completion callback; the host's netboot flag must then be off, and the
second boot must get the local-boot script without fetching a kernel.
"""

from __future__ import annotations

import os
import re

import pytest

from .appliance_proc import install_lab
from .qemu import Guest, boot_with_retry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BOOT_TIMEOUT = 300            # TCG: BIOS reaches /init in ~20 s, UEFI ~35 s; be generous
LOCAL_TIMEOUT = 240
MACS = {"bios": "52:54:00:e2:e0:01", "uefi": "52:54:00:e2:e0:02"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    with install_lab(work, {mac: ["--name", f"e2e-{fw}"] for fw, mac in MACS.items()}) as (lab, server):
        yield lab, server, work


def _kickstart(log: str) -> str:
    m = re.search(r"PLOWSHARE-KS-BEGIN\r?\n(.*?)PLOWSHARE-KS-END", log, re.DOTALL)
    assert m, "guest printed no kickstart"
    return m.group(1)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_netboot_once(served, firmware):
    lab, server, work = served
    mac = MACS[firmware]
    host = server.host(mac)
    assert host["netboot"] is True and host["token"]

    guest = Guest(lab, f"{firmware}-1", mac, workdir=work, firmware=firmware)
    try:
        boot_with_retry(guest, r"PLOWSHARE-DONE-(OK|FAIL)", BOOT_TIMEOUT)
        guest.wait_exit(60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver log:\n{server.log()}") from None
    finally:
        guest.stop()
    log = guest.log
    assert "PLOWSHARE-DONE-OK" in log, log[-3000:]
    ks = _kickstart(log)
    assert f"Plowshare kickstart for e2e-{firmware} ({mac})" in ks
    assert f"/done/{host['token']}" in ks  # the completion callback from the snippet

    host = server.host(mac)
    assert host["netboot"] is False and host["token"] is None
    first = server.events(mac)
    kinds = [e["kind"] for e in first]
    for kind in ("dhcp-discover", "dhcp-offer", "dhcp-ack", "http-script", "http-kernel",
                 "http-initrd", "kickstart", "install-done"):
        assert kind in kinds, f"{kind} missing from timeline {kinds}"
    if firmware == "uefi":
        assert "tftp-done" in kinds  # OVMF fetched iPXE over TFTP

    second = Guest(lab, f"{firmware}-2", mac, workdir=work, firmware=firmware,
                   tap=guest.tap)
    try:
        second.start()
        new = server.wait_events(mac, lambda evs: any(
            e["kind"] == "http-script" and e["detail"].startswith("local") for e in evs),
            LOCAL_TIMEOUT, guest=second)
    finally:
        second.stop()
    assert not [e for e in new if e["kind"] in ("http-kernel", "http-initrd", "kickstart")]
