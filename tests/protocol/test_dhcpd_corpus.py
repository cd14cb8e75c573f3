"""The corpus against the real ISC dhcpd: ``dhcpd -t`` (syntax check only,
no interfaces needed) is the oracle.  Every file it accepts must parse;
every file under bad/ it rejects, and we reject it at the line it names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.dhcpd_conf import DhcpdConfError, parse

DATA = Path(__file__).resolve().parents[1] / "data" / "dhcpd"
GOOD = sorted(DATA.glob("*.conf"))
BAD = sorted((DATA / "bad").glob("*.conf"))
DHCPD = shutil.which("dhcpd") or "/usr/sbin/dhcpd"
DHCPD_TIMEOUT = 60


def dhcpd_check(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    assert Path(DHCPD).exists(), "isc-dhcp-server is missing: run scripts/setup"
    return subprocess.run(
        [DHCPD, "-t", "-4", "-cf", str(path), "-lf", str(tmp_path / "leases"),
         "-pf", str(tmp_path / "pid")],
        capture_output=True, text=True, timeout=DHCPD_TIMEOUT, check=False)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def test_corpus_is_big_enough():
    assert len(GOOD) >= 10 and len(BAD) >= 3
    assert len([p for p in GOOD if p.name.startswith("cobbler-")]) >= 3


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_dhcpd_accepts_and_so_do_we(path, tmp_path):
    result = dhcpd_check(path, tmp_path)
    assert result.returncode == 0, result.stderr
    config = parse(read(path), str(path))
    assert config.body, "a corpus file parsed to nothing"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_dhcpd_rejects_and_so_do_we_at_its_line(path, tmp_path):
    result = dhcpd_check(path, tmp_path)
    assert result.returncode != 0
    found = re.search(rf"{re.escape(path.name)} line (\d+):", result.stderr)
    assert found, result.stderr
    with pytest.raises(DhcpdConfError) as err:
        parse(read(path), str(path))
    assert err.value.line == int(found.group(1)), (str(err.value), result.stderr)
    assert err.value.filename == str(path)
    assert str(err.value).startswith(f"{path}:{err.value.line}:{err.value.col}: ")


def test_dhcpd_with_an_include_we_refuse_without_a_callback(tmp_path):
    inner = tmp_path / "hosts.conf"
    inner.write_text("host a { hardware ethernet 52:54:00:00:00:01; }\n")
    outer = tmp_path / "dhcpd.conf"
    outer.write_text(f'authoritative;\ninclude "{inner}";\n')
    assert dhcpd_check(outer, tmp_path).returncode == 0
    config = parse(outer.read_text(), str(outer))
    [node] = config.dangerous()
    assert (node.kind, node.pos.line, node.args[0].text) == ("include", 2, str(inner))
