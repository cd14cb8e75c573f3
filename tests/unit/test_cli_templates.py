"""``plowshare template ...``, ``explain`` and ``distro import`` as an operator runs them.

Each command runs in a subprocess (it starts the render sandbox's worker
processes, as the real CLI does) against a state directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MAC = "52:54:00:00:00:42"
DI_TREE = Path("/usr/lib/debian-installer/images/12/amd64/text")


def cli(state: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "--state", str(state), *args],
                          capture_output=True, text=True, input=stdin, timeout=120, check=False)


@pytest.fixture
def state(tmp_path):
    state = tmp_path / "state"
    (tmp_path / "k").write_bytes(b"k")
    res = cli(state, "distro", "add", "d", "--kernel", str(tmp_path / "k"),
              "--initrd", str(tmp_path / "k"), "--var", "mirror=http://mirror.example/os")
    assert res.returncode == 0
    assert cli(state, "profile", "add", "p", "--distro", "d", "--template", "default.ks.j2",
               "--cmdline", "ks={{ ks_url }}", "--var", "timezone=Asia/Tokyo").returncode == 0
    assert cli(state, "host", "add", MAC, "--profile", "p", "--name", "web42",
               "--var", 'ssh_keys=["ssh-ed25519 AAAAC3Nza ops@example"]').returncode == 0
    return state


def test_edit_history_diff_revert_show(state, tmp_path):
    current = cli(state, "template", "show", "default.ks.j2").stdout
    edited = tmp_path / "ks.j2"
    edited.write_text(current.replace("text\n", "text\n# local change\n", 1))
    res = cli(state, "template", "edit", "default.ks.j2", str(edited), "--note", "mine")
    assert res.returncode == 0 and "version 1" in res.stdout, res.stderr
    history = cli(state, "template", "history", "default.ks.j2").stdout.splitlines()
    assert [line.split("\t")[0] for line in history] == ["0", "1"] and "mine" in history[1]
    assert "+# local change" in cli(state, "template", "diff", "default.ks.j2", "0", "1").stdout
    assert "# local change" not in cli(state, "template", "show", "default.ks.j2",
                                       "--version", "0").stdout
    assert cli(state, "template", "revert", "default.ks.j2", "0").returncode == 0
    assert cli(state, "template", "show", "default.ks.j2").stdout == current


def test_bad_edit_names_the_line_and_keeps_serving_the_old(state):
    res = cli(state, "template", "edit", "default.ks.j2", "-",
              stdin="text\nnetwork --hostname={{ host.nmae }}\n")
    assert res.returncode == 1
    assert "line 2" in res.stderr and "previous version stays in use" in res.stderr
    rendered = cli(state, "template", "render", "default.ks.j2", "--host", MAC)
    assert rendered.returncode == 0 and "Plowshare kickstart for web42" in rendered.stdout


def test_render_uses_layered_variables(state):
    out = cli(state, "template", "render", "default.ks.j2", "--host", MAC).stdout
    assert "timezone Asia/Tokyo" in out                  # profile variable
    assert "http://mirror.example/os" in out             # distro variable
    assert "ssh-ed25519 AAAAC3Nza ops@example" in out    # host variable (a JSON list)


def test_validate_bundled(state):
    for name in ("default.ks.j2", "debian.preseed.j2", "ubuntu-autoinstall.yaml.j2"):
        res = cli(state, "template", "validate", name)
        assert res.returncode == 0 and f"{name}: ok" in res.stdout, res.stderr


def test_explain_changes_nothing(state):
    before = json.loads(cli(state, "host", "show", MAC, "--json").stdout)
    res = cli(state, "explain", MAC, "--arch", "7", "--json")
    report = json.loads(res.stdout)
    assert report["decision"] == "install profile p"
    assert report["dhcp"]["filename"] == "ipxe/snponly.efi"
    assert f"/ks/{before['token']}" in report["cmdline"]
    assert "Plowshare kickstart for web42" in report["kickstart"]["text"]
    ipxe = json.loads(cli(state, "explain", MAC, "--ipxe", "--json").stdout)
    assert ipxe["dhcp"]["filename"].endswith(f"/boot/{MAC}.ipxe")
    after = json.loads(cli(state, "host", "show", MAC, "--json").stdout)
    assert after == before                                # token, netboot, lease untouched
    assert json.loads(cli(state, "events", MAC, "--json").stdout) == []
    unknown = cli(state, "explain", "52:54:00:99:99:99").stdout  # dhcp.unknown = "ignore"
    assert "host      unknown" in unknown and "no boot answer" in unknown
    assert "--- iPXE script ---" not in unknown
    cli(state, "host", "netboot", MAC, "off")
    local = json.loads(cli(state, "explain", MAC, "--json").stdout)
    assert local["decision"] == "local boot (netboot off)" and "kickstart" not in local
    assert "sanboot" in local["ipxe_script"]


@pytest.mark.skipif(not (DI_TREE / "debian-installer/amd64/linux").exists(),
                    reason="debian-installer-12-netboot-amd64 not installed (scripts/setup does)")
def test_distro_import_debian_netboot_tree(tmp_path):
    state = tmp_path / "state"
    config = tmp_path / "p.toml"
    config.write_text(f'[server]\nnetboot_dir = "{tmp_path / "tree"}"\n')
    res = subprocess.run([sys.executable, "-m", "appliance", "--state", str(state),
                          "--config", str(config), "distro", "import", str(DI_TREE)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "debian-12-x86_64" in res.stdout
    listed = cli(state, "distro", "list").stdout
    assert str(tmp_path / "tree" / "distros" / "debian-12-x86_64" / "linux") in listed
