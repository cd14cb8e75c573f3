"""BootScripts: iPXE / pxelinux / GRUB rendered from a BootSpec."""

from __future__ import annotations

import pytest

from appliance.bootscripts import BootScriptError, BootScripts, grub_word
from appliance.config import Config
from appliance.model import BootSpec, Firmware

MAC = "52:54:00:12:34:56"
BASE = "http://10.0.0.1"
TOKEN = "tok_ABC-123"
CMDLINE = f"console=ttyS0 ks={BASE}/ks/{TOKEN} done={BASE}/done/{TOKEN}"


def install_spec(firmware=Firmware.BIOS, cmdline=CMDLINE, **kw) -> BootSpec:
    return BootSpec(mac=MAC, firmware=firmware, local=False, loader=None,
                    script_url=f"{BASE}/boot/{MAC}.ipxe", profile="deb12",
                    kernel="/distro/deb12/kernel", initrd="/distro/deb12/initrd",
                    cmdline=cmdline, token=TOKEN, **kw)


def local_spec(firmware=Firmware.BIOS) -> BootSpec:
    return BootSpec(mac=MAC, firmware=firmware, local=True, loader=None,
                    script_url=f"{BASE}/boot/{MAC}.ipxe", profile="deb12")


@pytest.fixture(scope="module")
def scripts() -> BootScripts:
    return BootScripts(Config().templates_dir)


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.EFI_X64])
def test_ipxe_install(scripts, firmware):
    out = scripts.ipxe(install_spec(firmware), BASE)
    assert out.startswith("#!ipxe\n")
    assert (f"kernel {BASE}/distro/deb12/kernel initrd=initrd {CMDLINE} || goto failed"
            in lines(out))
    assert f"initrd --name initrd {BASE}/distro/deb12/initrd || goto failed" in lines(out)
    assert "boot || goto failed" in lines(out)
    # the failure path prints and hands back to the firmware
    tail = lines(out)[lines(out).index(":failed"):]
    assert tail[1].startswith("echo ") and tail[-1] == "exit 1"
    assert "sanboot" not in out


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.EFI_X64, Firmware.EFI_ARM64])
def test_ipxe_local_branches_at_run_time(scripts, firmware):
    out = scripts.ipxe(local_spec(firmware), BASE)
    ls = lines(out)
    assert ls[0] == "#!ipxe"
    assert "kernel" not in out and "initrd" not in out
    # BIOS: sanboot the first disk; anything else (EFI): exit 1 to the boot manager
    assert "iseq ${platform} pcbios || goto firmware" in ls
    assert "sanboot --no-describe --drive 0x80 || goto firmware" in ls
    assert ls.index("iseq ${platform} pcbios || goto firmware") < ls.index(
        "sanboot --no-describe --drive 0x80 || goto firmware") < ls.index(":firmware")
    assert ls[-1] == "exit 1"


def test_pxelinux(scripts):
    out = scripts.pxelinux(install_spec(), BASE)
    ls = lines(out)
    assert "DEFAULT install" in ls and "LABEL install" in ls
    assert f"KERNEL {BASE}/distro/deb12/kernel" in ls
    assert f"INITRD {BASE}/distro/deb12/initrd" in ls
    assert f"APPEND {CMDLINE}" in ls
    tftp = lines(scripts.pxelinux(install_spec(), ""))
    assert "KERNEL /distro/deb12/kernel" in tftp
    local = lines(scripts.pxelinux(local_spec(), BASE))
    assert "DEFAULT local" in local and "LOCALBOOT 0" in local
    assert not any(ln.startswith(("KERNEL", "APPEND")) for ln in local)


def test_grub(scripts):
    out = lines(scripts.grub(install_spec(Firmware.EFI_X64), BASE))
    # from GRUB's $root: the TFTP server it came from (signed GRUB has no http)
    assert f"linux /distro/deb12/kernel {CMDLINE}" in out
    assert "initrd /distro/deb12/initrd" in out
    assert out.index("boot") < len(out) - 1 and out[-1] == "exit"
    local = lines(scripts.grub(local_spec(Firmware.EFI_X64), BASE))
    assert local[-1] == "exit" and not any(ln.startswith("linux") for ln in local)


def test_grub_quotes_what_grub_would_interpret(scripts):
    out = scripts.grub(install_spec(Firmware.EFI_X64, cmdline="a=$x b=1;reboot c='q'"), BASE)
    assert "'a=$x' 'b=1;reboot' 'c='\\''q'\\'''" in out
    assert grub_word("ok=1,2:/x") == "ok=1,2:/x"


@pytest.mark.parametrize("cmdline", ["console=ttyS0 || chain http://evil/x",
                                     "a && reboot", "a ; reboot", "a #comment"])
def test_ipxe_refuses_operator_tokens(scripts, cmdline):
    with pytest.raises(BootScriptError):
        scripts.ipxe(install_spec(cmdline=cmdline), BASE)


@pytest.mark.parametrize("method", ["ipxe", "pxelinux", "grub"])
def test_every_format_refuses_newlines(scripts, method):
    with pytest.raises(BootScriptError):
        getattr(scripts, method)(install_spec(cmdline="a\nboot http://evil/x"), BASE)


@pytest.mark.parametrize("imported", [False, True])
def test_local_scripts_say_why(scripts, imported):
    """A host booted by imported dhcpd.conf rules (netboot on, no profile) is
    not told "netboot is off" when its file sends iPXE to our script URL."""
    spec = BootSpec(mac=MAC, firmware=Firmware.EFI_X64, local=True, loader=None,
                    script_url=f"{BASE}/boot/{MAC}.ipxe", imported=imported,
                    profile=None if imported else "deb12")
    why = "has imported boot rules and no install profile" if imported else "netboot is off"
    ipxe = lines(scripts.ipxe(spec, BASE))
    assert ipxe[0] == "#!ipxe"
    assert f"echo Plowshare: {MAC} {why}, booting from the local disk" in ipxe
    grub = lines(scripts.grub(spec, BASE))
    assert f"echo 'Plowshare: {MAC} {why}, booting from the local disk'" in grub
    pxelinux = scripts.pxelinux(spec, BASE)
    assert ("imported boot rules, no install profile" in pxelinux) == imported
    assert ("netboot is off" in pxelinux) != imported
    if imported:
        assert not any("netboot is off" in ln for ln in ipxe + grub)
