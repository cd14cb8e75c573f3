"""Self-check of the end-to-end harness, without the appliance.

Stand-ins in the server namespace: busybox ``udhcpd`` (DHCP, no boot file)
and busybox ``httpd`` (serves ``ks`` and ``done``). Proves that the lab
wiring, the test initrd and the firmware/NIC ROMs work before any appliance
test relies on them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .initrd import BUSYBOX, DI_KERNEL, build_test_initrd
from .lab import NS_PREFIX, SERVER_NS_TAG, NetLab, list_namespaces
from .qemu import (
    BOOT_TIMEOUT,
    FIRMWARE_ERROR_PATTERNS,
    OVMF_CODE,
    QEMU,
    FirmwareError,
    Guest,
    boot_with_retry,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="e2e lab needs root (network namespaces, taps)"),
    pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} not installed"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed"),
    pytest.mark.skipif(not DI_KERNEL.exists(), reason="debian-installer-12-netboot-amd64 missing"),
]

HTTP_PORT = 8080
POOL_FIRST, POOL_LAST = 100, 150
LEASE_SECONDS = 600
#: udhcpd's ARP probe before each offer, in ms (its default 2000 only slows tests).
UDHCPD_ARP_MS = 200
#: Seconds to wait for a stand-in server to accept connections / write a file.
SERVER_READY_TIMEOUT = 10
KICKSTART_BODY = "# plowshare harness self-check\nrootpw --plaintext lab\n"
_KS_BLOCK = re.compile(r"PLOWSHARE-KS-BEGIN\r?\n(.*?)PLOWSHARE-KS-END", re.DOTALL)


@pytest.fixture(scope="session")
def test_initrd() -> Path:
    return build_test_initrd()


@pytest.fixture
def lab():
    net = NetLab()
    try:
        net.start()
        yield net
    finally:
        net.stop()
        assert net.server_ns not in list_namespaces()


@pytest.fixture
def udhcpd(lab: NetLab, tmp_path: Path, request) -> dict:
    """busybox udhcpd on prov0 handing out .100-.150, no boot file.

    Indirect parametrisation adds config lines (a callable taking the lab).
    """
    extra = getattr(request, "param", None)
    leases = tmp_path / "udhcpd.leases"
    conf = tmp_path / "udhcpd.conf"
    conf.write_text("\n".join([
        f"start {lab.host_addr(POOL_FIRST)}",
        f"end {lab.host_addr(POOL_LAST)}",
        f"interface {lab.server_iface}",
        f"lease_file {leases}",
        f"pidfile {tmp_path / 'udhcpd.pid'}",
        f"option subnet {lab.netmask}",
        f"option lease {LEASE_SECONDS}",
        *(extra(lab) if extra else ()),
        "",
    ]))
    leases.touch()
    with open(tmp_path / "udhcpd.log", "wb") as log:
        proc = lab.popen_in_server([str(BUSYBOX), "udhcpd", "-f", "-a", str(UDHCPD_ARP_MS),
                                    str(conf)], stdout=log, stderr=subprocess.STDOUT)
    yield {"proc": proc, "leases": leases, "log": tmp_path / "udhcpd.log"}
    proc.terminate()
    proc.wait()


@pytest.fixture
def httpd(lab: NetLab, tmp_path: Path) -> dict:
    """busybox httpd on server_addr:HTTP_PORT serving ``ks`` and ``done``."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "ks").write_text(KICKSTART_BODY)
    (root / "done").write_text("ok\n")
    (root / "ready").write_text("ok\n")
    log_path = tmp_path / "httpd.log"
    with open(log_path, "wb") as log:
        proc = lab.popen_in_server([str(BUSYBOX), "httpd", "-f", "-vv", "-p",
                                    f"{lab.server_addr}:{HTTP_PORT}", "-h", str(root)],
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"http://{lab.server_addr}:{HTTP_PORT}"
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while lab.run_in_server([str(BUSYBOX), "wget", "-q", "-O", "-", f"{base}/ready"],
                            check=False).returncode != 0:
        assert time.monotonic() < deadline, "busybox httpd did not come up"
        time.sleep(0.2)
    yield {"base": base, "log": log_path}
    proc.terminate()
    proc.wait()


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


def test_lab_removes_stale_namespaces_and_spares_host(tmp_path):
    """A namespace left by a dead owner is deleted on start(); host links are untouched."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{NS_PREFIX}{SERVER_NS_TAG}-{dead.pid}x0000"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    before = _host_links()
    net = NetLab()
    try:
        net.start()
        assert stale not in list_namespaces()
        assert {net.server_ns, net.wire_ns} <= set(list_namespaces())
        net.add_tap()
        assert _host_links() == before
        assert net.run_in_server(["ip", "-4", "-o", "addr", "show", "dev", net.server_iface]
                                 ).stdout.count(f"{net.server_addr}/{net.prefix_len}") == 1
        assert net.server_link_local().startswith("fe80::")
    finally:
        net.stop()
        subprocess.run(["ip", "netns", "delete", stale], check=False, capture_output=True)
    assert not {net.server_ns, net.wire_ns} & set(list_namespaces())


def dump_leases(lab: NetLab, udhcpd: dict) -> str:
    """Ask udhcpd to write its leases, then return ``dumpleases`` output."""
    before = udhcpd["leases"].stat().st_mtime_ns
    udhcpd["proc"].send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while udhcpd["leases"].stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.1)
    return subprocess.run([str(BUSYBOX), "dumpleases", "-f", str(udhcpd["leases"])],
                          capture_output=True, text=True, check=True).stdout


def test_direct_kernel_boot_fetches_kickstart(lab, udhcpd, httpd, test_initrd, tmp_path):
    """d-i kernel + test initrd: DHCP from udhcpd, ks body printed, done called."""
    append = f"console=ttyS0 ks={httpd['base']}/ks done={httpd['base']}/done"
    guest = Guest(lab, "direct", lab.guest_mac(1), workdir=tmp_path, kernel=DI_KERNEL,
                  initrd=test_initrd, append=append)
    with guest:
        init = guest.wait_for(r"^PLOWSHARE-INIT", BOOT_TIMEOUT)
        t_init = guest.elapsed
        ip = guest.wait_for(r"^PLOWSHARE-IP: (\S+)", BOOT_TIMEOUT, start=init.end())
        guest.wait_for(r"^PLOWSHARE-DONE-(OK|FAIL)", BOOT_TIMEOUT, start=ip.end())
        rc = guest.wait_exit(BOOT_TIMEOUT)
        t_done = guest.elapsed
    log = guest.log
    print(f"\n[direct] /init after {t_init:.1f}s, powered off after {t_done:.1f}s (rc {rc})")
    assert ip.group(1).startswith(lab.host_addr(POOL_FIRST).rsplit(".", 1)[0] + ".")
    block = _KS_BLOCK.search(log)
    assert block, log
    assert block.group(1).replace("\r\n", "\n") == KICKSTART_BODY
    assert "PLOWSHARE-DONE-OK" in log
    assert "PLOWSHARE-ERROR" not in log
    guest_ip = ip.group(1).split("/")[0]
    access = httpd["log"].read_text(errors="replace")
    for path in ("/ks", "/done"):
        assert re.search(rf"^{re.escape(guest_ip)}:\d+: url:{path}$", access, re.MULTILINE), access
    assert lab.guest_mac(1) in dump_leases(lab, udhcpd)


def test_bios_pxe_rom_does_dhcp(lab, udhcpd, tmp_path):
    """SeaBIOS + iPXE ROM on a lab tap gets a lease from udhcpd, then finds nothing to boot."""
    guest = Guest(lab, "pxe-bios", lab.guest_mac(2), workdir=tmp_path, firmware="bios")
    with guest:
        guest.wait_for(r"iPXE \(http://ipxe\.org\)", BOOT_TIMEOUT)
        t_banner = guest.elapsed
        # No boot file: iPXE ends with "Nothing to boot"/"No more network devices";
        # SeaBIOS's "No bootable device" afterwards is expected, so no fail-fast here.
        guest.wait_for(r"Nothing to boot|No configuration methods succeeded|"
                       r"No more network devices", BOOT_TIMEOUT, fail_patterns=())
        t_end = guest.elapsed
    log = guest.log
    print(f"\n[pxe-bios] iPXE banner after {t_banner:.1f}s, gave up after {t_end:.1f}s")
    assert lab.host_addr(POOL_FIRST).rsplit(".", 1)[0] in log, "iPXE printed no lab address"
    assert lab.guest_mac(2) in dump_leases(lab, udhcpd)


def _pxe_offer_without_tftp(lab: NetLab) -> list[str]:
    """udhcpd config lines: option 60 PXEClient, a boot file, next server = us.

    Observed: OVMF then completes DHCP ("Station IP address is ...") and
    reports PXE-E16 ~14 s after ">>Start PXE over IPv4"; with plain offers it
    waits ~60 s first. No TFTP server runs."""
    return [f"siaddr {lab.server_addr}", "boot_file plowshare-missing.efi",
            f"option 60 {b'PXEClient'.hex()}"]


@pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed")
@pytest.mark.parametrize("udhcpd", [_pxe_offer_without_tftp], indirect=True)
def test_uefi_pxe_starts_and_fails_fast(lab, udhcpd, tmp_path):
    """OVMF's own PXE (ROM removed) runs on the tap; with no PXE offer it stops at PXE-E.."""
    guest = Guest(lab, "pxe-uefi", lab.guest_mac(3), workdir=tmp_path, firmware="uefi")
    try:
        match = boot_with_retry(guest, r">>Start PXE over IPv4", BOOT_TIMEOUT)
        assert match
        t_start = guest.elapsed
        with pytest.raises(FirmwareError) as err:
            guest.wait_for(r"PLOWSHARE-NEVER", BOOT_TIMEOUT, start=match.end(),
                           fail_patterns=FIRMWARE_ERROR_PATTERNS)
        print(f"\n[pxe-uefi] PXE start after {t_start:.1f}s, "
              f"{err.value.match.group(0).strip()!r} after {guest.elapsed:.1f}s")
        assert err.value.match.group(0).startswith("PXE-E")
        assert not guest.running, "guest must be killed at the first PXE-E line"
        assert f"Station IP address is {lab.host_addr(POOL_FIRST).rsplit('.', 1)[0]}." \
            in guest.log
        assert lab.guest_mac(3) in dump_leases(lab, udhcpd)
    finally:
        guest.stop()
