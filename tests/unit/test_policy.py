"""BootPolicy: one answer per machine, shared by DHCP, TFTP and HTTP."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.config import load_config
from appliance.kickstart import Renderer
from appliance.model import Distro, Firmware, Host, Machine, Profile
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.store import Store
from appliance.templates import TemplateLibrary

MAC = "52:54:00:00:00:01"


@pytest.fixture
def policy(tmp_path):
    cfg = load_config(None, address="10.0.0.1", state_dir=str(tmp_path),
                      kickstarts_dir=str(tmp_path))
    store = Store(cfg.db_path).open()
    (tmp_path / "k").write_bytes(b"k")
    store.add_distro(Distro("deb", str(tmp_path / "k"), str(tmp_path / "k")))
    store.add_profile(Profile("p", "deb", "default.ks.j2",
                              "console=ttyS0 ks={{ ks_url }}   done={{ done_url }} "
                              "hostname={{ host.name }}"))
    store.add_host(Host(MAC, "p", name="n1"), 3600)
    yield BootPolicy(store, cfg, Renderer(InlineSandbox(), TemplateLibrary(store, tmp_path)))
    store.close()


def test_install_spec_carries_token_urls_and_files(policy):
    spec = policy.boot_spec(Machine(MAC, Firmware.BIOS, ipxe=True))
    token = policy.store.host(MAC).token
    assert not spec.local and spec.token == token
    assert spec.kernel == "/distro/deb/kernel" and spec.initrd == "/distro/deb/initrd"
    assert spec.cmdline == (f"console=ttyS0 ks=http://10.0.0.1/ks/{token} "
                            f"done=http://10.0.0.1/done/{token} hostname=n1")
    assert spec.loader is None  # already in iPXE
    assert spec.script_url == f"http://10.0.0.1/boot/{MAC}.ipxe"


@pytest.mark.parametrize(("firmware", "loader"), [
    (Firmware.BIOS, "ipxe/undionly.kpxe"),
    (Firmware.EFI_X64, "ipxe/snponly.efi"),
])
def test_loader_per_firmware(policy, firmware, loader):
    assert policy.boot_spec(Machine(MAC, firmware)).loader == loader


def test_http_boot_client_gets_a_url_loader(policy):
    spec = policy.boot_spec(Machine(MAC, Firmware.EFI_X64, http_client=True))
    assert spec.loader == "http://10.0.0.1/netboot/ipxe/snponly.efi"


@pytest.mark.parametrize("firmware", [Firmware.UNKNOWN, Firmware.OTHER, Firmware.UBOOT,
                                      Firmware.EFI_IA32])
def test_firmware_without_loader_gets_nothing(policy, firmware):
    assert policy.boot_spec(Machine(MAC, firmware)) is None


def test_netboot_off_is_local_not_silence(policy):
    policy.store.set_netboot(MAC, False, 60)
    spec = policy.boot_spec(Machine(MAC, Firmware.EFI_X64))
    assert spec.local and spec.kernel is None and spec.token is None
    assert spec.loader == "ipxe/snponly.efi"


def test_unknown_mac_ignored_by_default(policy):
    assert policy.boot_spec(Machine("52:54:00:99:99:99", ipxe=True)) is None


def test_unknown_mac_boots_default_profile_when_configured(policy):
    dhcp = dataclasses.replace(policy.config.dhcp, unknown="boot", default_profile="p")
    policy.config = dataclasses.replace(policy.config, dhcp=dhcp)
    spec = policy.boot_spec(Machine("52:54:00:99:99:99", ipxe=True))
    assert spec is not None and not spec.local and spec.profile == "p"


def test_broken_cmdline_template_gives_no_answer(policy):
    policy.store.add_profile(Profile("bad", "deb", None, "ks={{ nosuchvar }}"))
    policy.store.add_host(Host(MAC, "bad"), 60)
    assert policy.boot_spec(Machine(MAC, ipxe=True)) is None


def test_same_answer_every_time(policy):
    m = Machine(MAC, Firmware.BIOS, ipxe=True)
    assert policy.boot_spec(m) == policy.boot_spec(m)
