"""The composition root on loopback: one store behind HTTP and TFTP, supervised.

DHCP and router advertisements need an interface and are exercised in the
namespace tests (tests/e2e); here the same Appliance object serves HTTP and
TFTP on 127.0.0.1 and is checked with real clients (curl, tftp-hpa).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
import subprocess

import pytest

from appliance.app import MAX_RESTARTS, Appliance
from appliance.config import load_config
from appliance.model import Distro, Host, Profile

MAC = "52:54:00:aa:00:01"
pytestmark = pytest.mark.skipif(not shutil.which("tftp") or not shutil.which("curl"),
                                reason="needs tftp-hpa and curl (scripts/setup installs them)")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def appliance(tmp_path):
    tree = tmp_path / "tree"
    (tree / "ipxe").mkdir(parents=True)
    (tree / "ipxe" / "undionly.kpxe").write_bytes(bytes(range(256)) * 300)
    cfg = load_config(None, address="127.0.0.1", state_dir=str(tmp_path / "state"),
                      netboot_dir=str(tree), http_port=free_port(),
                      tftp_port=free_port(socket.SOCK_DGRAM))
    cfg = dataclasses.replace(cfg, http_bind="127.0.0.1", tftp_bind="127.0.0.1",
                              router_advertisements=False,
                              dhcp=dataclasses.replace(cfg.dhcp, enabled=False))
    app = Appliance(cfg)
    app.start()
    (tmp_path / "k").write_bytes(b"kernel")
    app.store.add_distro(Distro("d", str(tmp_path / "k"), str(tmp_path / "k")))
    app.store.add_profile(Profile("p", "d", "default.ks.j2", "ks={{ ks_url }}"))
    app.store.add_host(Host(MAC, "p", name="loop1"), 3600)
    yield app
    app.stop()


def tftp_get(app, name: str, out) -> subprocess.CompletedProcess:
    return subprocess.run(["tftp", "127.0.0.1", str(app.config.tftp_port), "-m", "binary",
                           "-c", "get", name, str(out)], capture_output=True, text=True,
                          timeout=30, check=False)


def test_http_and_tftp_answer_from_one_store(appliance, tmp_path):
    url = f"{appliance.config.base_url}/boot/{MAC}.ipxe"
    script = subprocess.run(["curl", "-fsS", url], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    token = appliance.store.host(MAC).token
    assert "/distro/d/kernel" in script and f"/ks/{token}" in script

    out = tmp_path / "cfg"
    tftp_get(appliance, f"pxelinux.cfg/01-{MAC.replace(':', '-')}", out)
    assert f"ks={appliance.config.base_url}/ks/{token}" in out.read_text()

    appliance.store.set_netboot(MAC, False, 60)
    tftp_get(appliance, f"pxelinux.cfg/01-{MAC.replace(':', '-')}", out)
    assert "LOCALBOOT 0" in out.read_text()

    binary = tmp_path / "undionly"
    tftp_get(appliance, "ipxe/undionly.kpxe", binary)
    src = appliance.config.netboot_dir / "ipxe" / "undionly.kpxe"
    assert hashlib.sha256(binary.read_bytes()).digest() == \
        hashlib.sha256(src.read_bytes()).digest()


def test_supervisor_restarts_a_dead_server(appliance, tmp_path):
    tftp = appliance.servers["tftp"]
    tftp.stop()  # as if its thread had died
    assert not tftp.is_alive()
    assert appliance.supervise_once() is True
    assert tftp.is_alive()
    out = tmp_path / "again"
    tftp_get(appliance, "ipxe/undionly.kpxe", out)
    assert out.stat().st_size == 256 * 300


def test_supervisor_gives_up_after_repeated_deaths(appliance):
    tftp = appliance.servers["tftp"]
    for _ in range(MAX_RESTARTS):
        tftp.stop()
        assert appliance.supervise_once() is True
    tftp.stop()
    assert appliance.supervise_once() is False
