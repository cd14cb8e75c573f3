"""distro_import: detect installer media, place kernel/initrd in the netboot tree."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from appliance import distro_import
from appliance import media as media_mod
from appliance.distro_import import MediaError, cli_progress, detect, import_media

pytestmark = pytest.mark.timeout(120)

DI = Path("/usr/lib/debian-installer/images/12/amd64")
DI_KERNEL = DI / "text/debian-installer/amd64/linux"
needs_di = pytest.mark.skipif(
    not DI_KERNEL.is_file(),
    reason=f"{DI_KERNEL} missing: install Debian package debian-installer-12-netboot-amd64")

# .treeinfo of Rocky-9.4-x86_64-minimal.iso as productmd writes it (both formats in one file)
TREEINFO_BOTH = """\
[checksums]
images/efiboot.img = sha256:5a4bd8ec5a0bb6aa5fd4a4a1c3cbfa1fb0a3a8b0c48a6e4a47c3f1b4a2b6c2d1
images/install.img = sha256:0c2a1c7cf1cbd0bb1b8b34d8e2c4f8b1a1e9d2d0a6f7b2a8c3c4d5e6f7a8b9c0
images/pxeboot/initrd.img = sha256:8f1e5f8c2f6a5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918f7e6d5c4b
images/pxeboot/vmlinuz = sha256:1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809

[general]
; WARNING.0 = This section provides compatibility with pre-productmd treeinfos.
; WARNING.1 = Read productmd documentation for details about new format.
arch = x86_64
family = Rocky Linux
name = Rocky Linux 9.4
packagedir = Minimal/Packages
platforms = x86_64,xen
repository = Minimal
timestamp = 1714846478
variant = Minimal
variants = AppStream,BaseOS,Minimal
version = 9.4

[header]
type = productmd.treeinfo
version = 1.2

[images-x86_64]
efiboot.img = images/efiboot.img
initrd = images/pxeboot/initrd.img
kernel = images/pxeboot/vmlinuz

[images-xen]
initrd = images/pxeboot/initrd.img
kernel = images/pxeboot/vmlinuz

[media]
discnum = 1
totaldiscs = 1

[release]
is_layered = false
name = Rocky Linux
short = Rocky
version = 9.4

[stage2]
mainimage = images/install.img

[tree]
arch = x86_64
build_timestamp = 1714846478
platforms = x86_64,xen
variants = AppStream,BaseOS,Minimal
"""

# only the pre-productmd section, as older composes and third-party trees have it
TREEINFO_GENERAL = """\
[general]
name = Rocky Linux 9.4
family = Rocky Linux
timestamp = 1714846478
variant = BaseOS
version = 9.4
packagedir = BaseOS/Packages
arch = x86_64

[stage2]
mainimage = images/install.img

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""

# only productmd's sections
TREEINFO_RELEASE = """\
[header]
type = productmd.treeinfo
version = 1.2

[release]
name = Rocky Linux
short = Rocky
version = 9.4

[tree]
arch = x86_64
build_timestamp = 1714846478
platforms = x86_64,xen
variants = BaseOS

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rhel_tree(root: Path, treeinfo: str | None = TREEINFO_BOTH) -> Path:
    pxe = root / "images" / "pxeboot"
    pxe.mkdir(parents=True)
    (pxe / "vmlinuz").write_bytes(b"K" * 3000)
    (pxe / "initrd.img").write_bytes(b"I" * 5000)
    (root / "images" / "install.img").write_bytes(b"squashfs")
    if treeinfo is not None:
        (root / ".treeinfo").write_text(treeinfo)
    return root


# -- real Debian netboot tree ----------------------------------------------------------
@needs_di
@pytest.mark.parametrize("entry", ["text", "text/debian-installer/amd64",
                                   "text/debian-installer", "."])
def test_debian_entry_points(entry):
    media = detect(DI / entry)
    assert (media.breed, media.arch, media.version) == ("debian", "x86_64", "12")
    assert media.suggested_name == "debian-12-x86_64"
    assert media.root == (DI / "text").resolve()
    assert media.kernel == DI_KERNEL.resolve()
    assert media.initrd == DI_KERNEL.with_name("initrd.gz").resolve()
    assert media_mod._sniff_arch(media.kernel) == "x86_64"


@needs_di
def test_debian_copy_import(tmp_path):
    media = detect(DI / "text")
    d = import_media(media, tmp_path, mode="copy")
    assert (d.name, d.arch, d.breed) == ("debian-12-x86_64", "x86_64", "debian")
    target = tmp_path.resolve() / "distros" / "debian-12-x86_64"
    assert Path(d.kernel) == target / "linux" and Path(d.initrd) == target / "initrd.gz"
    assert sha(Path(d.kernel)) == sha(media.kernel)
    assert sha(Path(d.initrd)) == sha(media.initrd)
    assert os.stat(d.kernel).st_ino != os.stat(media.kernel).st_ino
    assert stat.S_IMODE(os.stat(d.initrd).st_mode) == 0o644
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=target, check=False,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "initrd.gz", "linux"]


@needs_di
def test_debian_link_import(tmp_path):
    media = detect(DI / "text")
    d = import_media(media, tmp_path, name="bookworm", mode="link")
    tree = tmp_path.resolve()
    for placed, orig in ((Path(d.kernel), media.kernel), (Path(d.initrd), media.initrd)):
        assert not placed.is_symlink() and placed.is_file()
        assert placed.resolve().is_relative_to(tree)
        assert sha(placed) == sha(orig)


def test_link_falls_back_to_copy_across_filesystems(tmp_path, monkeypatch, caplog):
    media = detect(rhel_tree(tmp_path / "media"))

    def exdev(src, dst):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(distro_import.os, "link", exdev)
    d = import_media(media, tmp_path / "tree", mode="link")
    assert Path(d.kernel).read_bytes() == media.kernel.read_bytes()
    assert not Path(d.kernel).is_symlink()
    assert "copying instead" in caplog.text


def test_link_is_a_hard_link_on_one_filesystem(tmp_path):
    media = detect(rhel_tree(tmp_path / "media"))
    d = import_media(media, tmp_path / "tree", mode="link")
    assert os.stat(d.kernel).st_ino == os.stat(media.kernel).st_ino


# -- RHEL family ---------------------------------------------------------------------
@pytest.mark.parametrize("treeinfo", [TREEINFO_BOTH, TREEINFO_GENERAL, TREEINFO_RELEASE],
                         ids=["both", "general", "release"])
def test_rhel_treeinfo_formats(tmp_path, treeinfo):
    media = detect(rhel_tree(tmp_path, treeinfo))
    assert (media.breed, media.arch, media.version) == ("redhat", "x86_64", "9.4")
    assert media.suggested_name == "rocky-9.4-x86_64"
    assert media.kernel == tmp_path.resolve() / "images/pxeboot/vmlinuz"
    assert media.initrd == tmp_path.resolve() / "images/pxeboot/initrd.img"


def test_rhel_images_section_wins(tmp_path):
    root = rhel_tree(tmp_path, TREEINFO_RELEASE.replace(
        "images/pxeboot/vmlinuz", "isolinux/vmlinuz").replace(
        "images/pxeboot/initrd.img", "isolinux/initrd.img"))
    (root / "isolinux").mkdir()
    (root / "isolinux/vmlinuz").write_bytes(b"other kernel")
    (root / "isolinux/initrd.img").write_bytes(b"other initrd")
    media = detect(root)
    assert media.kernel.read_bytes() == b"other kernel"
    assert media.initrd.read_bytes() == b"other initrd"


def test_rhel_import_names_and_reimport(tmp_path):
    media = detect(rhel_tree(tmp_path / "media"))
    d = import_media(media, tmp_path / "tree")
    assert Path(d.kernel).name == "vmlinuz" and Path(d.initrd).name == "initrd.img"
    media.kernel.write_bytes(b"new kernel")
    again = import_media(media, tmp_path / "tree")
    assert again == d and Path(d.kernel).read_bytes() == b"new kernel"
    target = Path(d.kernel).parent
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "initrd.img", "vmlinuz"]


def test_reimport_under_same_name_removes_previous_files(tmp_path):
    rhel = detect(rhel_tree(tmp_path / "rhel"))
    casper = tmp_path / "live" / "casper"
    casper.mkdir(parents=True)
    (casper / "vmlinuz").write_bytes(_bzimage())
    (casper / "initrd").write_bytes(b"i")
    import_media(rhel, tmp_path / "tree", name="x")
    d = import_media(detect(tmp_path / "live"), tmp_path / "tree", name="x")
    assert sorted(p.name for p in Path(d.kernel).parent.iterdir()) == [
        "SHA256SUMS", "initrd", "vmlinuz"]


def test_rhel_without_treeinfo_reads_arch_from_kernel(tmp_path):
    root = rhel_tree(tmp_path, None)
    (root / "images/pxeboot/vmlinuz").write_bytes(_bzimage())
    media = detect(root)
    assert (media.breed, media.arch, media.version) == ("redhat", "x86_64", None)


def _bzimage() -> bytes:
    head = bytearray(0x400)
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x236, 1)  # XLF_KERNEL_64
    return bytes(head)


def test_ubuntu_live_iso(tmp_path):
    (tmp_path / "casper").mkdir()
    (tmp_path / "casper/vmlinuz").write_bytes(_bzimage())
    (tmp_path / "casper/initrd").write_bytes(b"initrd")
    (tmp_path / ".disk").mkdir()
    (tmp_path / ".disk/info").write_text(
        'Ubuntu-Server 24.04.1 LTS "Noble Numbat" - Release amd64 (20240827.1)')
    media = detect(tmp_path)
    assert (media.breed, media.arch, media.version) == ("ubuntu", "x86_64", "24.04.1")
    assert media.suggested_name == "ubuntu-24.04.1-x86_64"


# -- errors --------------------------------------------------------------------------
def test_empty_dir(tmp_path):
    with pytest.raises(MediaError, match=r"not recognised.*-installer/<arch>/linux.*\.treeinfo.*casper/vmlinuz"):
        detect(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        detect(tmp_path / "nope")


def test_iso_file_says_mount_it(tmp_path):
    (tmp_path / "x.iso").write_bytes(b"")
    with pytest.raises(MediaError, match="mount"):
        detect(tmp_path / "x.iso")


def test_kernel_without_initrd(tmp_path):
    arch = tmp_path / "debian-installer" / "amd64"
    arch.mkdir(parents=True)
    (arch / "linux").write_bytes(b"k")
    with pytest.raises(MediaError, match=r"found kernel .*linux but no initrd.*initrd\.gz"):
        detect(tmp_path)
    rhel = rhel_tree(tmp_path / "rhel")
    (rhel / "images/pxeboot/initrd.img").unlink()
    with pytest.raises(MediaError, match=r"no initrd.*initrd\.img"):
        detect(rhel)


def test_several_arches_ask_for_one(tmp_path):
    for arch in ("amd64", "arm64"):
        (tmp_path / "debian-installer" / arch).mkdir(parents=True)
        (tmp_path / "debian-installer" / arch / "linux").write_bytes(b"k")
        (tmp_path / "debian-installer" / arch / "initrd.gz").write_bytes(b"i")
    with pytest.raises(MediaError, match="several architectures"):
        detect(tmp_path)
    assert detect(tmp_path / "debian-installer/arm64").arch == "aarch64"


@pytest.mark.parametrize("name", ["a/b", "..", "../evil", ".hidden", "", "x" * 65, "a b"])
def test_bad_names(tmp_path, name):
    media = detect(rhel_tree(tmp_path / "media"))
    with pytest.raises(MediaError, match="distro name"):
        import_media(media, tmp_path / "tree", name=name)
    assert not (tmp_path / "tree" / "distros").exists() or not any(
        (tmp_path / "tree" / "distros").iterdir())


@pytest.mark.parametrize("bad", ["../" * 30 + "etc/hostname", "/etc/hostname"],
                         ids=["dotdot", "absolute"])
def test_treeinfo_cannot_point_outside_the_media(tmp_path, bad):
    root = rhel_tree(tmp_path, TREEINFO_RELEASE.replace("images/pxeboot/vmlinuz", bad))
    with pytest.raises(MediaError, match="inside"):
        detect(root)


def test_symlink_out_of_the_media_is_refused(tmp_path):
    root = rhel_tree(tmp_path / "media")
    (root / "images/pxeboot/initrd.img").unlink()
    (root / "images/pxeboot/initrd.img").symlink_to("/etc/hostname")
    with pytest.raises(MediaError, match="inside"):
        detect(root)


def test_source_growing_during_copy_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(distro_import, "CHUNK", 1000)
    media = detect(rhel_tree(tmp_path / "media"))

    def grow(done, total, filename):
        if filename == "initrd.img":
            with media.initrd.open("ab") as f:
                f.write(b"more")
    with pytest.raises(MediaError, match="expected 5000.*change during the import"):
        import_media(media, tmp_path / "tree", progress=grow)
    assert list((tmp_path / "tree" / "distros" / "rocky-9.4-x86_64").iterdir()) == []


# -- progress ------------------------------------------------------------------------
def test_progress_monotonic_to_total(tmp_path, monkeypatch):
    monkeypatch.setattr(distro_import, "CHUNK", 1000)
    media = detect(rhel_tree(tmp_path / "media"))
    calls = []
    import_media(media, tmp_path / "tree", progress=lambda *a: calls.append(a))
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1] == 8000
    assert {c[1] for c in calls} == {8000}
    assert calls[0][2] == "vmlinuz" and calls[-1][2] == "initrd.img"
    assert len(calls) > 4


def test_cli_progress_plain_stream_prints_a_line_per_file(tmp_path):
    media = detect(rhel_tree(tmp_path / "media"))
    out = io.StringIO()
    with cli_progress(out) as progress:
        import_media(media, tmp_path / "tree", progress=progress)
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines[:2]] == ["vmlinuz", "initrd.img"]
    assert lines[-1] == "import complete" and len(lines) == 3


def test_cli_progress_tty_uses_rich(tmp_path):
    pytest.importorskip("rich")

    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    with cli_progress(out) as progress:
        progress(0, 100, "linux")
        progress(100, 100, "linux")
    assert "linux" in out.getvalue() and progress.bar is None


def test_debian_version_from_path_without_version_info(tmp_path):
    arch = tmp_path / "images/13/arm64/text/debian-installer/arm64"
    arch.mkdir(parents=True)
    (arch / "linux").write_bytes(b"k")
    (arch / "initrd.gz").write_bytes(b"i")
    media = detect(tmp_path / "images/13/arm64")
    assert (media.version, media.arch, media.suggested_name) == ("13", "aarch64",
                                                                 "debian-13-aarch64")


@needs_di
def test_debian_gtk_flavour_gets_its_own_name():
    assert detect(DI / "gtk").suggested_name == "debian-12-x86_64-gtk"
