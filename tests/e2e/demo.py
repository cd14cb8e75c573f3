"""The README's demo: a VM netboots from Plowshare in an isolated network.

Builds a lab (two network namespaces joined by a bridge), starts
``plowshare serve`` on the lab's provisioning interface, registers Debian's
netboot kernel with a tiny busybox initrd that plays the installer, a profile
whose kickstart comes from ``kickstarts/default.ks.j2`` and one host, then
PXE-boots a QEMU guest with real firmware (SeaBIOS + iPXE ROM, or OVMF with
``--uefi``).  The guest fetches its kickstart, calls the completion URL and
powers off; the demo prints the kickstart it got and the machine's timeline,
then boots it once more to show that netboot is now off.

Run it through ``scripts/demo`` (root: network namespaces).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from .appliance_proc import PlowshareProcess
from .initrd import DI_KERNEL, build_test_initrd
from .lab import NetLab
from .qemu import Guest, boot_with_retry

MAC = "52:54:00:de:00:01"
BOOT_TIMEOUT = 300
LOCAL_WAIT = 240
CMDLINE = "console=ttyS0 ks={{ ks_url }} done={{ done_url }}"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _second_boot(lab, server, guest, work, firmware, seen: int) -> None:
    again = Guest(lab, "demo-2", MAC, workdir=work, firmware=firmware, tap=guest.tap)
    again.start()
    deadline = time.monotonic() + LOCAL_WAIT
    try:
        while time.monotonic() < deadline:
            new = server.events(MAC)[seen:]
            if any(e["kind"] == "http-script" and e["detail"].startswith("local") for e in new):
                print("second boot got the local-boot script (no kernel fetched)")
                return
            time.sleep(1)
        print("second boot did not reach the local-boot script in time", file=sys.stderr)
    finally:
        again.stop()


def run(firmware: str, work: Path) -> int:
    say("building the test initrd and the lab network")
    initrd = build_test_initrd()
    with NetLab() as lab:
        print(f"server namespace {lab.server_ns}: {lab.server_iface} {lab.server_addr}/24")
        server = PlowshareProcess(lab, work / "state", work / "plowshare.log")
        server.cli("distro", "add", "demo", "--kernel", str(DI_KERNEL), "--initrd", str(initrd))
        server.cli("profile", "add", "demo", "--distro", "demo", "--template", "default.ks.j2",
                   "--cmdline", CMDLINE)
        server.cli("host", "add", MAC, "--profile", "demo", "--name", "demo-vm")
        say("plowshare serve")
        server.start()
        try:
            say(f"netbooting a {firmware.upper()} guest ({MAC}); this takes 20-60 s under TCG")
            guest = Guest(lab, "demo-1", MAC, workdir=work, firmware=firmware)
            try:
                boot_with_retry(guest, r"PLOWSHARE-DONE-(OK|FAIL)", BOOT_TIMEOUT)
                guest.wait_exit(60)
            finally:
                guest.stop()
            ks = re.search(r"PLOWSHARE-KS-BEGIN\r?\n(.*?)PLOWSHARE-KS-END", guest.log, re.DOTALL)
            say("the kickstart the guest fetched")
            print(ks.group(1).replace("\r", "") if ks else "(none)")
            say("timeline")
            print(server.cli("events", MAC))
            print(server.cli("host", "show", MAC).split("\nvariables")[0])
            say("booting the same guest again: netboot is off now")
            _second_boot(lab, server, guest, work, firmware, len(server.events(MAC)))
            print(server.cli("events", MAC).rstrip().splitlines()[-1])
            ok = "PLOWSHARE-DONE-OK" in guest.log
        finally:
            server.stop()
    say("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uefi", action="store_true", help="boot with OVMF's UEFI PXE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plowshare-demo-"))
    try:
        return run("uefi" if args.uefi else "bios", work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
