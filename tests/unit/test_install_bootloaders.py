"""netboot/install-bootloaders: layout, SHA256SUMS, MANIFEST, --verify."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "netboot" / "install-bootloaders"

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/lib/ipxe/undionly.kpxe"),
    reason="Debian package ipxe not installed (/usr/lib/ipxe/undionly.kpxe absent)",
)

EXPECTED = {
    "ipxe/undionly.kpxe": "ipxe",
    "ipxe/ipxe.efi": "ipxe",
    "ipxe/snponly.efi": "ipxe",
    "pxelinux/pxelinux.0": "pxelinux",
    "pxelinux/lpxelinux.0": "pxelinux",
    "pxelinux/ldlinux.c32": "syslinux-common",
    "pxelinux/menu.c32": "syslinux-common",
    "pxelinux/libutil.c32": "syslinux-common",
    "pxelinux/libcom32.c32": "syslinux-common",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    target = tmp_path / "tree"
    result = run("--no-apt", "--target", str(target))
    if result.returncode != 0 and "missing bootloader files" in result.stderr:
        pytest.skip(f"bootloader packages incomplete: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return target


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "--target" in result.stdout and "--verify" in result.stdout


def test_unknown_argument_is_usage_error() -> None:
    result = run("--no-such-flag")
    assert result.returncode == 2
    assert "unknown argument" in result.stderr


def test_layout(tree: Path) -> None:
    installed = {
        str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()
    } - {"SHA256SUMS", "MANIFEST"}
    assert installed == set(EXPECTED)
    for rel in EXPECTED:
        path = tree / rel
        assert not path.is_symlink()
        assert path.stat().st_size > 0
        assert path.stat().st_mode & 0o777 == 0o644
    assert (tree / "pxelinux/pxelinux.0").read_bytes() == Path(
        "/usr/lib/PXELINUX/pxelinux.0"
    ).read_bytes()
    # ipxe.efi is a symlink into /boot in Debian's package: a real copy must land here.
    assert (tree / "ipxe/ipxe.efi").read_bytes() == Path("/usr/lib/ipxe/ipxe.efi").read_bytes()


def test_sha256sums_match_files_and_sha256sum_c(tree: Path) -> None:
    lines = (tree / "SHA256SUMS").read_text().splitlines()
    sums = {}
    for line in lines:
        digest, rel = line.split("  ", 1)
        sums[rel] = digest
    assert set(sums) == set(EXPECTED)
    for rel, digest in sums.items():
        assert hashlib.sha256((tree / rel).read_bytes()).hexdigest() == digest
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=tree, capture_output=True, text=True, check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_manifest_records_package_and_version(tree: Path) -> None:
    rows = [
        line.split("\t")
        for line in (tree / "MANIFEST").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert {row[0]: row[1] for row in rows} == EXPECTED
    for rel, pkg, version, source in rows:
        expected = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", pkg],
            capture_output=True, text=True, check=True,
        ).stdout
        assert version == expected
        assert source.startswith("/usr/lib/")


def test_verify_passes(tree: Path) -> None:
    result = run("--verify", "--target", str(tree))
    assert result.returncode == 0, result.stderr


def test_verify_fails_on_corruption(tree: Path) -> None:
    victim = tree / "ipxe/undionly.kpxe"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = run("--verify", "--target", str(tree))
    assert result.returncode != 0
    assert "ipxe/undionly.kpxe: FAILED" in result.stderr


def test_verify_fails_on_missing_file(tree: Path) -> None:
    (tree / "pxelinux/menu.c32").unlink()
    result = run("--verify", "--target", str(tree))
    assert result.returncode != 0
    assert "pxelinux/menu.c32" in result.stderr


def test_verify_without_sums_fails(tmp_path: Path) -> None:
    result = run("--verify", "--target", str(tmp_path))
    assert result.returncode != 0
    assert "SHA256SUMS" in result.stderr


def test_rerun_is_idempotent_and_repairs(tree: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
    result = run("--no-apt", "--target", str(tree))
    assert result.returncode == 0, result.stderr
    assert "0 file(s) updated" in result.stderr
    after = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten, no temp files left behind

    (tree / "pxelinux/ldlinux.c32").write_bytes(b"corrupt")
    result = run("--no-apt", "--target", str(tree))
    assert result.returncode == 0, result.stderr
    assert "installed pxelinux/ldlinux.c32" in result.stderr
    assert run("--verify", "--target", str(tree)).returncode == 0


def test_with_grub_puts_grub_where_shim_looks(tmp_path: Path) -> None:
    """shim fetches ``grubx64.efi`` from its own TFTP directory: the same signed
    GRUB as grubnetx64.efi, both listed in SHA256SUMS and MANIFEST."""
    target = tmp_path / "tree"
    result = run("--no-apt", "--with-grub", "--target", str(target))
    assert result.returncode == 0, result.stderr
    grub = target / "grub"
    assert (grub / "grubx64.efi").read_bytes() == (grub / "grubnetx64.efi").read_bytes()
    assert (grub / "shimx64.efi").read_bytes()[:2] == b"MZ"  # a PE image
    sums = (target / "SHA256SUMS").read_text()
    manifest = (target / "MANIFEST").read_text()
    for name in ("shimx64.efi", "grubnetx64.efi", "grubx64.efi"):
        assert f"  grub/{name}\n" in sums and f"grub/{name}\t" in manifest
