"""The Secure Boot path: the UEFI loader choice (policy, store, CLI, DHCP) and
the GRUB files TFTP generates for it (checked by GRUB's own parser)."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from appliance.bootfiles import BootFiles
from appliance.bootscripts import BootScripts
from appliance.cli import main
from appliance.config import load_config
from appliance.kickstart import Renderer
from appliance.model import Distro, Firmware, Host, Machine, Profile, UefiLoader
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers.dhcp_boot import boot_options
from appliance.servers.tftp_engine import Accept, Refuse, decide_rrq
from appliance.store import SCHEMA_VERSION, Store, StoreError
from appliance.templates import TemplateLibrary

MAC = "52:54:00:5b:00:01"
OTHER = "52:54:00:5b:00:02"
SHIM = "grub/shimx64.efi"
SNP = "ipxe/snponly.efi"


@pytest.fixture
def policy(tmp_path):
    cfg = load_config(None, address="10.0.0.1", state_dir=str(tmp_path),
                      kickstarts_dir=str(tmp_path))
    store = Store(cfg.db_path).open()
    (tmp_path / "kernel").write_bytes(b"K" * 3000)
    (tmp_path / "initrd").write_bytes(b"I" * 5000)
    store.add_distro(Distro("deb", str(tmp_path / "kernel"), str(tmp_path / "initrd")))
    store.add_profile(Profile("p", "deb", "default.ks.j2", "console=ttyS0 ks={{ ks_url }}"))
    store.add_profile(Profile("sb", "deb", "default.ks.j2", "ks={{ ks_url }}",
                              uefi_loader=UefiLoader.GRUB))
    store.add_host(Host(MAC, "p", uefi_loader=UefiLoader.GRUB), 3600)
    store.add_host(Host(OTHER, "p"), 3600)
    yield BootPolicy(store, cfg, Renderer(InlineSandbox(), TemplateLibrary(store, tmp_path)))
    store.close()


@pytest.fixture
def files(policy):
    return BootFiles(policy, BootScripts(policy.config.templates_dir), policy.config.base_url)


# -- policy ------------------------------------------------------------------------
@pytest.mark.parametrize(("mac", "firmware", "loader"), [
    (MAC, Firmware.EFI_X64, SHIM),
    (MAC, Firmware.BIOS, "ipxe/undionly.kpxe"),          # no shim for BIOS: iPXE as before
    (MAC, Firmware.EFI_ARM64, "ipxe/arm64/snponly.efi"),  # no shim installed for arm64
    (OTHER, Firmware.EFI_X64, SNP),                      # default: iPXE
])
def test_loader_follows_the_hosts_choice(policy, mac, firmware, loader):
    assert policy.boot_spec(Machine(mac, firmware)).loader == loader


def test_host_inherits_profile_choice_and_can_override_it(policy):
    store = policy.store
    store.add_host(Host(OTHER, "sb"), 3600)
    assert policy.boot_spec(Machine(OTHER, Firmware.EFI_X64)).loader == SHIM
    store.set_uefi_loader(OTHER, UefiLoader.IPXE)
    assert policy.boot_spec(Machine(OTHER, Firmware.EFI_X64)).loader == SNP
    store.set_uefi_loader(OTHER, None)
    assert policy.boot_spec(Machine(OTHER, Firmware.EFI_X64)).loader == SHIM


def test_netboot_off_still_gets_shim_so_grub_can_exit(policy):
    policy.store.set_netboot(MAC, False, 60)
    spec = policy.boot_spec(Machine(MAC, Firmware.EFI_X64))
    assert spec.local and spec.loader == SHIM


def test_ipxe_and_http_boot_clients(policy):
    assert policy.boot_spec(Machine(MAC, Firmware.EFI_X64, ipxe=True)).loader is None
    spec = policy.boot_spec(Machine(MAC, Firmware.EFI_X64, http_client=True))
    assert spec.loader == f"http://10.0.0.1/netboot/{SHIM}"


def test_dhcp_offer_names_shim(policy):
    machine = Machine(MAC, Firmware.EFI_X64, arch=7, vendor_class="PXEClient:Arch:00007")
    filename, opts = boot_options(machine, policy.boot_spec(machine), policy.config)
    assert filename == SHIM and ("boot-file-name", SHIM.encode()) in opts


# -- store -------------------------------------------------------------------------
def test_store_round_trip(policy):
    assert policy.store.host(MAC).uefi_loader is UefiLoader.GRUB
    assert policy.store.host(OTHER).uefi_loader is None
    assert policy.store.profile("sb").uefi_loader is UefiLoader.GRUB
    assert policy.store.profile("p").uefi_loader is UefiLoader.IPXE
    with pytest.raises(StoreError):
        policy.store.set_uefi_loader("52:54:00:ff:ff:ff", UefiLoader.GRUB)


def test_schema_4_database_migrates(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '4');
        CREATE TABLE distros (name TEXT PRIMARY KEY, kernel TEXT NOT NULL,
            initrd TEXT NOT NULL, arch TEXT NOT NULL, breed TEXT NOT NULL,
            variables TEXT NOT NULL DEFAULT '{}');
        INSERT INTO distros VALUES ('deb', '/k', '/i', 'x86_64', 'generic', '{}');
        CREATE TABLE profiles (name TEXT PRIMARY KEY, distro TEXT NOT NULL,
            template TEXT, cmdline TEXT NOT NULL DEFAULT '', variables TEXT NOT NULL DEFAULT '{}');
        INSERT INTO profiles VALUES ('p', 'deb', NULL, '', '{}');
        CREATE TABLE hosts (mac TEXT PRIMARY KEY, name TEXT, ip TEXT UNIQUE, profile TEXT,
            netboot INTEGER NOT NULL, token TEXT UNIQUE, token_expires REAL,
            variables TEXT NOT NULL DEFAULT '{}', options TEXT NOT NULL DEFAULT '{}',
            boot_rules TEXT NOT NULL DEFAULT '[]', tenant TEXT, source TEXT);
        INSERT INTO hosts (mac, profile, netboot) VALUES ('52:54:00:5b:00:01', 'p', 0);
    """)
    con.commit()
    con.close()
    store = Store(db).open()
    try:
        assert store.host(MAC).uefi_loader is None and store.host(MAC).profile == "p"
        assert store.profile("p").uefi_loader is UefiLoader.IPXE
        assert store.set_uefi_loader(MAC, UefiLoader.GRUB).uefi_loader is UefiLoader.GRUB
        assert store._query("SELECT value FROM meta WHERE key='schema'")[0][0] == \
            str(SCHEMA_VERSION)
    finally:
        store.close()


# -- CLI ---------------------------------------------------------------------------
def test_cli_flags(tmp_path, capsys):
    (tmp_path / "k").write_bytes(b"k")
    s = ["--state", str(tmp_path / "state")]
    assert main([*s, "distro", "add", "deb", "--kernel", str(tmp_path / "k"),
                 "--initrd", str(tmp_path / "k")]) == 0
    assert main([*s, "profile", "add", "p", "--distro", "deb", "--uefi-loader", "grub"]) == 0
    assert main([*s, "host", "add", MAC, "--profile", "p"]) == 0
    assert main([*s, "host", "add", OTHER, "--profile", "p", "--uefi-loader", "ipxe"]) == 0
    capsys.readouterr()

    def show(mac):
        capsys.readouterr()
        assert main([*s, "host", "show", mac, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["uefi_loader"]
    assert show(MAC) is None and show(OTHER) == "ipxe"
    assert main([*s, "host", "uefi-loader", MAC, "grub"]) == 0
    assert show(MAC) == "grub"
    assert main([*s, "host", "uefi-loader", MAC, "profile"]) == 0
    assert show(MAC) is None
    assert main([*s, "host", "uefi-loader", "52:54:00:ff:ff:ff", "grub"]) == 2
    assert "no host" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*s, "host", "uefi-loader", MAC, "shim"])


# -- generated GRUB files ------------------------------------------------------------
def test_top_level_grub_cfg_sources_the_per_mac_file_then_exits(files):
    text = files("grub/grub.cfg").decode()
    assert text == files("/grub/grub.cfg").decode()  # GRUB asks with a leading slash
    assert '"$net_default_mac"' in text
    assert 'source "$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6"' in text
    assert text.rstrip().splitlines()[-1] == "exit"


def test_per_mac_grub_cfg(files, policy):
    text = files(f"grub/grub.cfg-01-{MAC.replace(':', '-')}").decode()
    token = policy.store.host(MAC).token
    assert f"linux /distro/deb/kernel console=ttyS0 ks=http://10.0.0.1/ks/{token}" in text
    assert "initrd /distro/deb/initrd" in text
    assert files("grub/grub.cfg-01-52-54-00-ff-ff-ff") is None  # unknown: top-level exits


def test_distro_files_for_grub(files, policy, tmp_path):
    assert files("distro/deb/kernel") == tmp_path / "kernel"
    assert files("/distro/deb/initrd") == tmp_path / "initrd"
    assert files("distro/nope/kernel") is None
    assert files("distro/deb/other") is None
    got = decide_rrq("/distro/deb/kernel", "octet", {}, str(tmp_path / "empty-root"), files)
    assert isinstance(got, Accept) and got.size == 3000
    got.source.close()
    missing = decide_rrq("distro/nope/kernel", "octet", {}, str(tmp_path), files)
    assert isinstance(missing, Refuse)


def _grub_check(path) -> subprocess.CompletedProcess:
    return subprocess.run(["grub-script-check", str(path)], capture_output=True, text=True,
                          check=False)


def test_grub_configs_parse_with_grub_script_check(files, policy, tmp_path):
    """GRUB's own parser (grub-common, in scripts/setup) accepts every generated file."""
    bad = tmp_path / "bad.cfg"
    bad.write_text("if [ x ]; then\n  echo unterminated\n")
    assert _grub_check(bad).returncode != 0  # the checker does reject broken scripts
    policy.store.add_host(Host(OTHER, "p", netboot=False), 60)
    for path in ("grub/grub.cfg", f"grub/grub.cfg-01-{MAC.replace(':', '-')}",
                 f"grub/grub.cfg-01-{OTHER.replace(':', '-')}"):
        cfg = tmp_path / "check.cfg"
        cfg.write_bytes(files(path))
        res = _grub_check(cfg)
        assert res.returncode == 0, (path, res.stdout, res.stderr)
