"""The operator commands and the config they are built from."""

from __future__ import annotations

import json

import pytest

from appliance.cli import main
from appliance.config import ConfigError, load_config
from appliance.model import Firmware

MAC = "52:54:00:00:00:01"


@pytest.fixture
def state(tmp_path):
    (tmp_path / "linux").write_bytes(b"k")
    (tmp_path / "initrd").write_bytes(b"i")
    return tmp_path / "state"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_distro_profile_host_events_flow(state, tmp_path, capsys):
    s = ["--state", str(state)]
    assert run(capsys, *s, "distro", "add", "deb", "--kernel", str(tmp_path / "linux"),
               "--initrd", str(tmp_path / "initrd"))[0] == 0
    assert run(capsys, *s, "profile", "add", "p", "--distro", "deb",
               "--cmdline", "ks={{ ks_url }}")[0] == 0
    assert run(capsys, *s, "host", "add", "52-54-00-00-00-01", "--profile", "p",
               "--name", "web1", "--ip", "10.0.0.5")[0] == 0
    code, out, _ = run(capsys, *s, "host", "show", MAC, "--json")
    host = json.loads(out)
    assert code == 0 and host["mac"] == MAC and host["netboot"] is True and host["token"]
    assert run(capsys, *s, "host", "netboot", MAC, "off")[0] == 0
    assert json.loads(run(capsys, *s, "host", "show", MAC, "--json")[1])["netboot"] is False
    code, out, _ = run(capsys, *s, "host", "list")
    assert "web1" in out and "10.0.0.5" in out and "netboot=off" in out
    assert json.loads(run(capsys, *s, "events", MAC, "--json")[1]) == []


@pytest.mark.parametrize("argv", [
    ["host", "add", "not-a-mac", "--profile", "p"],
    ["host", "add", MAC, "--profile", "nosuch"],
    ["host", "show", MAC],
    ["profile", "add", "p", "--distro", "nosuch"],
    ["distro", "add", "d", "--kernel", "/nonexistent", "--initrd", "/nonexistent"],
])
def test_errors_are_one_line_and_exit_2(state, capsys, argv):
    code, _, err = run(capsys, "--state", str(state), *argv)
    assert code == 2 and err.startswith("plowshare: ") and err.count("\n") == 1


def test_config_file_and_flag_precedence(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[server]\naddress = "10.0.0.1"\nhttp_port = 8080\n'
                    '[dhcp]\npool = "10.0.0.100-10.0.0.200"\nprefix = 16\n'
                    'arch_overrides = { 9 = "efi-x64", 4242 = "bios" }\n')
    cfg = load_config(path, address="10.0.0.2", pool=None)
    assert cfg.address == "10.0.0.2" and cfg.http_port == 8080
    assert cfg.base_url == "http://10.0.0.2:8080"
    assert (cfg.dhcp.pool_first, cfg.dhcp.pool_last) == ("10.0.0.100", "10.0.0.200")
    assert cfg.dhcp.prefix == 16
    assert cfg.dhcp.arch_overrides == {9: Firmware.EFI_X64, 4242: Firmware.BIOS}


@pytest.mark.parametrize("text", [
    '[server]\naddress = "10.0.0.300"\n',
    '[server]\nnosuchkey = 1\n',
    '[dhcp]\npool = "10.0.0.200-10.0.0.100"\n',
    '[dhcp]\nunknown = "maybe"\n',
    '[dhcp]\narch_overrides = { 7 = "amiga" }\n',
    '[nosection]\n',
    'this is not toml',
])
def test_bad_config_is_refused_with_a_reason(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_subnet_commands_and_host_options(state, tmp_path, capsys):
    s = ["--state", str(state)]
    assert run(capsys, *s, "subnet", "add", "10.2.0.0/24", "--pool", "10.2.0.10-10.2.0.20",
               "--option", "routers=10.2.0.1", "--option", "interface-mtu=1400",
               "--lease-time", "600")[0] == 0
    code, out, _ = run(capsys, *s, "subnet", "list", "--json")
    assert code == 0 and json.loads(out) == [{
        "network": "10.2.0.0/24", "pools": [["10.2.0.10", "10.2.0.20"]],
        "options": {"routers": ["10.2.0.1"], "interface-mtu": 1400},
        "lease_time": 600, "max_lease_time": None}]
    for bad, message in ((["10.2.0.0/16"], "overlaps subnet 10.2.0.0/16"),
                         (["127.0.0.0/24"], "(config)"),
                         (["10.3.0.0/24", "--option", "mtu=1"], "unknown DHCP option 'mtu'"),
                         (["10.3.0.0/24", "--pool", "10.4.0.1-10.4.0.2"], "not inside")):
        code, _, err = run(capsys, *s, "subnet", "add", *bad)
        assert code == 2 and message in err, err
    assert run(capsys, *s, "subnet", "delete", "10.2.0.0/24")[0] == 0
    assert run(capsys, *s, "subnet", "delete", "10.2.0.0/24")[0] == 2

    assert run(capsys, *s, "distro", "add", "deb", "--kernel", str(tmp_path / "linux"),
               "--initrd", str(tmp_path / "initrd"))[0] == 0
    assert run(capsys, *s, "profile", "add", "p", "--distro", "deb")[0] == 0
    assert run(capsys, *s, "host", "add", MAC, "--profile", "p", "--option",
               "domain-search=a.example, b.example", "--option", "ntp-servers=10.0.0.5")[0] == 0
    host = json.loads(run(capsys, *s, "host", "show", MAC, "--json")[1])
    assert host["options"] == {"domain-search": ["a.example", "b.example"],
                               "ntp-servers": ["10.0.0.5"]}
    assert "options: {'domain-search'" in run(capsys, *s, "host", "show", MAC)[1]
    code, _, err = run(capsys, *s, "host", "add", "52:54:00:00:00:02", "--profile", "p",
                       "--option", "routers=nope")
    assert code == 2 and "option routers" in err
