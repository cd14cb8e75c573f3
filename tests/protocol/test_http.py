"""HttpServer (waitress) on loopback, driven by the real curl."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.bootscripts import BootScripts
from appliance.config import Config
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.model import Distro, Host, Profile
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers.http import HttpServer
from appliance.store import Store
from appliance.templates import TemplateLibrary
from appliance.web import Services, create_app

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

MAC = "52:54:00:aa:bb:01"
KERNEL = bytes(range(256)) * 4096  # 1 MiB
INITRD = b"initrd" * 1000


@pytest.fixture
def server(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.gz").write_bytes(INITRD)
    ks_dir = tmp_path / "ks"
    ks_dir.mkdir()
    (ks_dir / "test.ks").write_text("# ks for {{ host.mac }}\n")
    netboot = tmp_path / "netboot"
    netboot.mkdir()
    (netboot / "file.bin").write_bytes(b"N" * 100)
    (tmp_path / "secret.txt").write_text("outside the tree\n")
    config = dataclasses.replace(Config(), address="127.0.0.1", state_dir=tmp_path,
                                 netboot_dir=netboot, kickstarts_dir=ks_dir)
    store = Store(tmp_path / "db").open()
    store.add_distro(Distro("deb12", str(tmp_path / "vmlinuz"), str(tmp_path / "initrd.gz")))
    store.add_profile(Profile("deb12", "deb12", "test.ks",
                              "console=ttyS0 ks={{ ks_url }} done={{ done_url }}"))
    host = store.add_host(Host(MAC, "deb12", ip="127.0.0.1"), token_ttl=3600)
    renderer = Renderer(InlineSandbox(), TemplateLibrary(store, ks_dir))
    app = create_app(Services(config, store, BootPolicy(store, config, renderer),
                              EventLog(store), BootScripts(config.templates_dir), renderer))

    @app.get("/boom")  # a view that always raises: the server must survive it
    def boom():
        raise RuntimeError("boom")

    srv = HttpServer(app, "127.0.0.1", 0)
    srv.start()
    assert srv.is_alive() and srv.port != 0
    srv.url = f"http://127.0.0.1:{srv.port}"
    srv.token, srv.store, srv.tmp = host.token, store, tmp_path
    yield srv
    srv.stop()
    store.close()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--max-time", "10", *args],
                          capture_output=True, timeout=20, check=False)


def code(*args: str) -> str:
    return curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout.decode()


def test_range_and_full_download(server, tmp_path):
    out = tmp_path / "part"
    r = curl("-r", "0-99", "-o", str(out), "-w", "%{http_code}",
             f"{server.url}/distro/deb12/kernel")
    assert r.stdout == b"206"
    assert out.read_bytes() == KERNEL[:100]
    r = curl("-r", "1000-1999", f"{server.url}/distro/deb12/kernel")
    assert r.stdout == KERNEL[1000:2000]
    assert curl(f"{server.url}/distro/deb12/kernel").stdout == KERNEL
    assert curl(f"{server.url}/distro/deb12/initrd").stdout == INITRD


def test_head(server):
    r = curl("-I", f"{server.url}/distro/deb12/kernel")
    head = r.stdout.decode().lower()
    assert head.startswith("http/1.1 200")
    assert f"content-length: {len(KERNEL)}" in head and "accept-ranges: bytes" in head
    assert "server: plowshare" in head


def test_boot_flow(server):
    r = curl(f"{server.url}/boot/{MAC}.ipxe")
    assert r.stdout.startswith(b"#!ipxe") and server.token.encode() in r.stdout
    assert curl(f"{server.url}/ks/{server.token}").stdout == f"# ks for {MAC}\n".encode()
    assert curl("-X", "POST", f"{server.url}/done/{server.token}").stdout == b"ok\n"
    assert code(f"{server.url}/done/{server.token}") == "404"
    assert b"sanboot" in curl(f"{server.url}/boot/{MAC}.ipxe").stdout
    kinds = [e.kind for e in server.store.events(MAC)]
    assert kinds == ["http-script", "kickstart", "install-done", "http-script"]


def test_containment_and_errors(server):
    assert curl(f"{server.url}/netboot/file.bin").stdout == b"N" * 100
    assert code("--path-as-is", f"{server.url}/netboot/../secret.txt") == "404"
    assert code("--path-as-is", f"{server.url}/netboot/%2e%2e/secret.txt") == "404"
    assert code(f"{server.url}/boot/junk.ipxe") == "400"
    assert code(f"{server.url}/boot/52:54:00:00:00:99.ipxe") == "404"
    assert code(f"{server.url}/boom") == "500"
    assert code(f"{server.url}/healthz") == "200"  # still serving after the 500


def test_parallel_downloads(server):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: curl(f"{server.url}/distro/deb12/kernel").stdout,
                                range(16)))
    assert all(body == KERNEL for body in results)


def test_stop_frees_the_port(server):
    port = server.port
    server.stop()
    assert not server.is_alive()
    assert curl(f"http://127.0.0.1:{port}/healthz").returncode != 0
    again = HttpServer(server.app, "127.0.0.1", port)
    again.start()
    try:
        assert code(f"http://127.0.0.1:{port}/healthz") == "200"
    finally:
        again.stop()


def test_restart_same_controller_keeps_its_port(server):
    """The supervisor's recovery path: stop() then start() on the same object."""
    port = server.port
    server.stop()
    server.start()
    assert server.port == port and server.is_alive()
    assert code(f"http://127.0.0.1:{port}/healthz") == "200"
