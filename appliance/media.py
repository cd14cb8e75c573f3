"""Recognise installer media: what a directory holds, without writing anything.

:func:`detect` (pure: reads, never writes) turns a directory into a
  :class:`Media`: breed, architecture, version, a suggested distro name and
  the kernel/initrd to use.  Recognised layouts and their quirks:

  - **Debian/Ubuntu netboot tree** (``netboot.tar.gz``, or the
    ``debian-installer-12-netboot-<arch>`` package under
    ``/usr/lib/debian-installer/images/12/<arch>/{text,gtk}``):
    ``{debian,ubuntu}-installer/<arch>/linux`` + ``initrd.gz``.  Accepted entry
    points: the tree root (``.../text``), the ``debian-installer`` dir, the
    ``<arch>`` dir itself, or the level above the flavours (``images/12/amd64``,
    which picks ``text``, else ``gtk``).  The tree root holds symlinks
    (``pxelinux.0`` -> ``debian-installer/amd64/pxelinux.0``); kernel and initrd
    are regular files.  Version comes from ``version.info`` ("Debian version:
    12 (bookworm)") or from an ``images/<N>/`` path component.
  - **RHEL family tree or mounted DVD/boot ISO**: ``.treeinfo`` (INI) plus
    ``images/pxeboot/vmlinuz`` + ``initrd.img``.  ``.treeinfo`` comes in two
    formats, often both in one file: the old ``[general] family/name/version/
    arch`` and productmd's ``[release] name/short/version`` + ``[tree] arch``.
    ``[images-<arch>] kernel=/initrd=`` (paths relative to the tree) wins over
    the fixed paths.  Without ``.treeinfo`` the architecture is read from the
    kernel image header.
  - **Ubuntu live ISO**: ``casper/vmlinuz`` + ``casper/initrd``;
    ``.disk/info`` gives version and architecture.

  Kernel and initrd must resolve (after symlinks) to regular files inside the
  media root: a crafted tree cannot make an import run as root publish
  ``/etc/shadow`` on the unauthenticated boot network.
"""

from __future__ import annotations

import configparser
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("plowshare.distro")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ARCHES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64",
          "i386": "i386", "i686": "i386", "armhf": "armhf", "ppc64el": "ppc64le",
          "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
INSTALLER_DIRS = {"debian-installer": "debian", "ubuntu-installer": "ubuntu"}


class MediaError(ValueError):
    """The path is not media we can import, or the import cannot proceed; says why."""


@dataclass(frozen=True)
class Media:
    """What :func:`detect` found.  Paths are absolute and resolved."""

    breed: str
    arch: str
    version: str | None
    suggested_name: str
    kernel: Path
    initrd: Path
    root: Path


# -- detection ------------------------------------------------------------------
def detect(path: Path) -> Media:
    """Recognise installer media at ``path``; raise :class:`MediaError` if it is none."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file or directory")
    if path.is_file():
        hint = " (mount it first: mount -o loop,ro FILE /mnt)" if path.suffix == ".iso" else ""
        raise MediaError(f"{path}: is a file, not a directory{hint}")
    path = path.resolve()
    for finder in (_debian_entry, _redhat, _casper):
        media = finder(path)
        if media is not None:
            log.debug("%s: %s", path, media)
            return media
    raise MediaError(
        f"{path}: not recognised as installer media; looked for "
        "{debian,ubuntu}-installer/<arch>/linux + initrd.gz (also from the <arch> dir or "
        "an images/<N>/<arch> dir with text/), .treeinfo or images/pxeboot/vmlinuz + "
        "initrd.img, and casper/vmlinuz + casper/initrd")


def _debian_entry(path: Path) -> Media | None:
    """Map the accepted entry points onto a netboot tree root."""
    if path.parent.name in INSTALLER_DIRS:
        return _debian_arch(path.parent.parent, path)
    if path.name in INSTALLER_DIRS:
        return _debian_tree(path.parent)
    for root in (path, path / "text", path / "gtk"):
        media = _debian_tree(root)
        if media is not None:
            return media
    return None


def _debian_tree(root: Path) -> Media | None:
    arch_dirs = [d for name in INSTALLER_DIRS if (root / name).is_dir()
                 for d in sorted((root / name).iterdir()) if (d / "linux").exists()]
    if not arch_dirs:
        return None
    if len(arch_dirs) > 1:
        raise MediaError(f"{root}: several architectures ({', '.join(map(str, arch_dirs))}); "
                         "point at one of these directories")
    return _debian_arch(root, arch_dirs[0])


def _debian_arch(root: Path, arch_dir: Path) -> Media:
    breed = INSTALLER_DIRS[arch_dir.parent.name]
    kernel = _inside(root, arch_dir / "linux", "kernel")
    initrd = _inside(root, arch_dir / "initrd.gz", "initrd", kernel)
    arch = ARCHES.get(arch_dir.name, arch_dir.name)
    version = _debian_version(root)
    flavour = "-gtk" if root.name == "gtk" else ""
    return Media(breed, arch, version, _name(breed, version, arch) + flavour, kernel, initrd,
                 root)


def _redhat(root: Path) -> Media | None:
    treeinfo = root / ".treeinfo"
    if not treeinfo.is_file() and not (root / "images" / "pxeboot").is_dir():
        return None
    info = _read_treeinfo(treeinfo) if treeinfo.is_file() else {}
    images = info.get("images", {})
    kernel = _inside(root, root / images.get("kernel", "images/pxeboot/vmlinuz"), "kernel")
    initrd = _inside(root, root / images.get("initrd", "images/pxeboot/initrd.img"),
                     "initrd", kernel)
    arch = ARCHES.get(info.get("arch"), info.get("arch")) or _sniff_arch(kernel)
    version = info.get("version")
    name = _name(info.get("product") or "redhat", version, arch)
    return Media("redhat", arch, version, name, kernel, initrd, root)


def _read_treeinfo(path: Path) -> dict:
    """``.treeinfo`` -> {product, version, arch, images: {kernel, initrd}}, both formats."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(path.read_text(errors="replace"), source=str(path))
    except configparser.Error as exc:
        raise MediaError(f"{path}: not a valid .treeinfo: {exc}") from None
    get = lambda sec, key: cp.get(sec, key, fallback="").strip()
    arch = get("tree", "arch") or get("general", "arch")
    family = get("release", "name") or get("general", "family")
    product = get("release", "short") or _short_family(family)
    images = dict(cp.items(f"images-{arch}")) if cp.has_section(f"images-{arch}") else {}
    return {"arch": arch, "product": product, "images": images,
            "version": get("release", "version") or get("general", "version") or None}


def _short_family(family: str) -> str:
    """"Rocky Linux" -> "Rocky", "Red Hat Enterprise Linux" -> "rhel", "CentOS" kept."""
    if family.lower().startswith("red hat enterprise linux"):
        return "rhel"
    words = family.split()
    return " ".join(words[:-1]) if len(words) > 1 and words[-1].lower() == "linux" else family


def _casper(root: Path) -> Media | None:
    if not (root / "casper" / "vmlinuz").exists():
        return None
    kernel = _inside(root, root / "casper" / "vmlinuz", "kernel")
    candidates = [root / "casper" / n for n in ("initrd", "initrd.lz", "initrd.gz")]
    initrd = next((c for c in candidates if c.exists()), candidates[0])
    initrd = _inside(root, initrd, "initrd", kernel)
    disk_info = root / ".disk" / "info"
    info = disk_info.read_text(errors="replace") if disk_info.is_file() else ""
    match = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", info)
    version = match.group(1) if match else None
    words = re.findall(r"\b(amd64|arm64|i386|ppc64el|s390x|riscv64)\b", info)
    arch = ARCHES[words[0]] if words else _sniff_arch(kernel)
    return Media("ubuntu", arch, version, _name("ubuntu", version, arch), kernel, initrd, root)


def _inside(root: Path, candidate: Path, what: str, kernel: Path | None = None) -> Path:
    """``candidate`` resolved, a regular file inside ``root``; else a MediaError."""
    if not candidate.exists():
        found = f"found kernel {kernel} but " if kernel else ""
        raise MediaError(f"{root}: {found}no {what} (looked for {candidate})")
    real = candidate.resolve()
    if not real.is_relative_to(root.resolve()) or not real.is_file():
        raise MediaError(f"{candidate}: {what} must be a regular file inside {root} "
                         f"(it resolves to {real})")
    return real


def _sniff_arch(kernel: Path) -> str:
    """Architecture from a kernel image header (x86 bzImage, arm64 Image)."""
    with kernel.open("rb") as f:
        head = f.read(0x240)
    if len(head) >= 0x238 and head[0x202:0x206] == b"HdrS":
        xloadflags = struct.unpack_from("<H", head, 0x236)[0]
        return "x86_64" if xloadflags & 1 else "i386"
    if head[0x38:0x3C] == b"ARM\x64":
        return "aarch64"
    raise MediaError(f"{kernel}: cannot tell the architecture (no .treeinfo, unknown "
                     "kernel image format)")


def _debian_version(root: Path) -> str | None:
    """First line of version.info ("Debian version:  12 (bookworm)"), else images/<N>/."""
    info = root / "version.info"
    first = info.read_text(errors="replace").partition("\n")[0] if info.is_file() else ""
    match = re.search(r"\b(\d+(?:\.\d+)*)\b", first)
    match = match or re.search(r"/images/(\d+(?:\.\d+)*)/", root.as_posix() + "/")
    return match.group(1) if match else None


def _name(product: str, version: str | None, arch: str) -> str:
    raw = "-".join(p for p in (product, version, arch) if p)
    name = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-._")
    return name[:64] or "distro"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid distro name (URL segment and directory)."""
    if not NAME_RE.fullmatch(name or ""):
        raise MediaError(f"distro name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -, "
                         "starting with a letter or digit")
    return name
