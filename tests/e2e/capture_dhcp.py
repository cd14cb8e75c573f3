"""Record the DHCP requests real firmware sends, as golden packets for unit tests.

Boots a BIOS guest (SeaBIOS + iPXE ROM) and a UEFI guest (OVMF PXE, then
snponly.efi) from a real ``plowshare serve`` in a lab while a raw socket in
the server namespace records every BOOTP payload sent to port 67, and the
busybox udhcpc of the test initrd as "a plain Linux client".  Writes one
hex file per distinct client fingerprint to ``tests/data/dhcp/``.

    sudo .venv/bin/python -m tests.e2e.capture_dhcp
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .appliance_proc import REPO, PlowshareProcess
from .initrd import DI_KERNEL, build_test_initrd
from .lab import NetLab
from .qemu import Guest, boot_with_retry

OUT = REPO / "tests" / "data" / "dhcp"
SNIFFER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((sys.argv[1], 0))
out = open(sys.argv[2], "a")
while True:
    frame = s.recv(4096)
    ihl = (frame[14] & 15) * 4
    if frame[23] != 17:
        continue
    udp = frame[14 + ihl:]
    if struct.unpack("!H", udp[2:4])[0] == 67:
        out.write(udp[8:].hex() + "\n"); out.flush()
"""


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="plowshare-capture-"))
    raw = work / "requests.hex"
    with NetLab() as lab:
        server = PlowshareProcess(lab, work / "state", work / "log")
        server.cli("distro", "add", "d", "--kernel", str(DI_KERNEL),
                   "--initrd", str(build_test_initrd()))
        server.cli("profile", "add", "p", "--distro", "d", "--template", "default.ks.j2",
                   "--cmdline", "console=ttyS0 ks={{ ks_url }} done={{ done_url }}")
        for i, fw in enumerate(("bios", "uefi")):
            server.cli("host", "add", f"52:54:00:90:00:0{i}", "--profile", "p")
        server.start()
        lab.popen_in_server([sys.executable, "-c", SNIFFER, lab.server_iface, str(raw)])
        for i, fw in enumerate(("bios", "uefi")):
            guest = Guest(lab, fw, f"52:54:00:90:00:0{i}", workdir=work, firmware=fw)
            try:
                boot_with_retry(guest, r"PLOWSHARE-DONE-(OK|FAIL)", 300)
            finally:
                guest.stop()
        server.stop()
    from appliance.servers.dhcp_codec import MSG_NAMES, decode
    seen = {}
    for line in raw.read_text().split():
        req = decode(bytes.fromhex(line))
        if req is None:
            continue
        key = (req.vendor_class or "none", req.user_class or "none", req.arch, req.broadcast,
               MSG_NAMES[req.msg_type])
        seen.setdefault(key, line)
    OUT.mkdir(parents=True, exist_ok=True)
    for (vendor, user, arch, bcast, kind), line in seen.items():
        name = f"{kind}-{vendor.split(':')[0]}-{user}-arch{arch}-{'bcast' if bcast else 'ucast'}"
        name = name.replace(" ", "_").replace(".", "_")
        (OUT / f"{name}.hex").write_text(line + "\n")
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
