"""Build the tiny busybox initrd that end-to-end guests boot.

Contract of the built image (what a guest prints on its serial console):

* ``PLOWSHARE-INIT`` as soon as /init runs;
* ``PLOWSHARE-IP: <addr>/<prefix>`` once ``udhcpc`` configured ``eth0``;
* ``PLOWSHARE-KS-BEGIN``, the body fetched from the ``ks=`` URL (a newline is
  added when the body does not end with one), ``PLOWSHARE-KS-END``;
* ``PLOWSHARE-DONE-OK`` when the ``done=`` URL answered 2xx, else
  ``PLOWSHARE-DONE-FAIL``;
* on any failure a single ``PLOWSHARE-ERROR: <reason>`` line;
* then ``poweroff -f`` (QEMU exits).

``ks=`` and ``done=`` are read from ``/proc/cmdline``. The kernel is Debian's
d-i ``linux``; the virtio-net modules come from the d-i ``initrd.gz`` of the
same build, so the two must be from the same package (checked).

The archive is deterministic and cached under ``build/e2e/`` by a hash of
every input, so repeated sessions reuse it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "e2e"
DI_DIR = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")
DI_KERNEL = DI_DIR / "linux"
DI_INITRD = DI_DIR / "initrd.gz"
BUSYBOX = Path("/bin/busybox")

#: Bump when the layout or the scripts change in a way the hash would miss.
FORMAT_VERSION = "1"

#: Modules needed for virtio-net on the d-i kernel (any order; sorted by deps).
VIRTIO_NET_MODULES = (
    "virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
    "virtio_pci", "failover", "net_failover", "virtio_net",
)

#: Where modules land inside the test initrd (flat, one file per module).
MODULE_DIR = "lib/modules"
UDHCPC_SCRIPT_PATH = "usr/share/udhcpc/default.script"

#: DHCP discover attempts and seconds between them (udhcpc -t / -T).
DHCP_TRIES = 10
DHCP_TRY_SECONDS = 3
#: Tenths of a second to wait for eth0 to appear after insmod.
ETH0_WAIT_TENTHS = 100

#: bzImage header: offset of the 16-bit pointer to the version string, and
#: the base it is relative to (Linux boot protocol, ``kernel_version``).
_BZ_VERSION_PTR_OFFSET = 0x20E
_BZ_VERSION_BASE = 0x200

_NEWC_MAGIC = b"070701"
_NEWC_HEADER_LEN = 110
_NEWC_FIELDS = 13
_NEWC_TRAILER = "TRAILER!!!"
_DEV_CONSOLE = (5, 1)
_DEV_NULL = (1, 3)

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook: $1 is the event, the lease is in the environment.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "PLOWSHARE-IP: $ip/${mask:-24}"
    ;;
esac
exit 0
"""

INIT_TEMPLATE = """#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
fail() {{
    echo "PLOWSHARE-ERROR: $*"
    poweroff -f
    while :; do sleep 1; done
}}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run /etc
# Keep kernel messages from interleaving with our markers.
echo 1 > /proc/sys/kernel/printk
echo PLOWSHARE-INIT
for m in {modules}; do
    insmod "/{module_dir}/$m.ko" || fail "insmod $m failed"
done
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -gt {eth0_wait} ] && fail "no eth0 after loading virtio_net"
    usleep 100000
done
ip link set lo up
ip link set eth0 up || fail "cannot bring eth0 up"
udhcpc -i eth0 -n -q -t {tries} -T {try_seconds} -s /{udhcpc_script} \\
    || fail "udhcpc got no lease on eth0"
ks=""
done_url=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ks=*) ks="${{arg#ks=}}" ;;
        done=*) done_url="${{arg#done=}}" ;;
    esac
done
[ -n "$ks" ] || fail "no ks= on the kernel command line"
[ -n "$done_url" ] || fail "no done= on the kernel command line"
wget -q -O /tmp/ks "$ks" || fail "cannot fetch kickstart $ks"
echo PLOWSHARE-KS-BEGIN
cat /tmp/ks
[ -n "$(tail -c 1 /tmp/ks)" ] && echo
echo PLOWSHARE-KS-END
if wget -q -O /tmp/done "$done_url"; then
    echo PLOWSHARE-DONE-OK
else
    echo PLOWSHARE-DONE-FAIL
fi
poweroff -f
while :; do sleep 1; done
"""


class InitrdError(RuntimeError):
    """The test initrd cannot be built from the installed packages."""


def kernel_version(bzimage: Path = DI_KERNEL) -> str:
    """Return the release string (``6.1.0-50-amd64``) embedded in a bzImage."""
    data = bzimage.read_bytes()
    ptr = int.from_bytes(data[_BZ_VERSION_PTR_OFFSET:_BZ_VERSION_PTR_OFFSET + 2], "little")
    start = ptr + _BZ_VERSION_BASE
    return data[start:data.index(b"\0", start)].decode().split()[0]


def read_newc(blob: bytes):
    """Yield ``(name, mode, data)`` for each member of a newc cpio stream.

    Concatenated archives (several TRAILER!!! records) are read through.
    """
    pos = 0
    while pos + _NEWC_HEADER_LEN <= len(blob):
        if blob[pos:pos + 6] != _NEWC_MAGIC:
            # Padding between concatenated archives.
            pos += 1
            continue
        fields = [int(blob[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(_NEWC_FIELDS)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + _NEWC_HEADER_LEN
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = _align4(name_start + namesize)
        data = blob[data_start:data_start + filesize]
        pos = _align4(data_start + filesize)
        if name != _NEWC_TRAILER:
            yield name, mode, data


def _align4(n: int) -> int:
    return (n + 3) & ~3


class NewcWriter:
    """Minimal deterministic newc cpio writer (uid/gid 0, mtime 0)."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        self._ino += 1
        raw_name = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(raw_name), 0]
        header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + raw_name)
        self._out.write(b"\0" * (_align4(len(header) + len(raw_name)) - len(header) - len(raw_name)))
        self._out.write(data)
        self._out.write(b"\0" * (_align4(len(data)) - len(data)))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, rdev: tuple[int, int]) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=rdev)

    def finish(self) -> bytes:
        self._entry(_NEWC_TRAILER, 0)
        return self._out.getvalue()


def _module_depends(ko: bytes) -> list[str]:
    match = re.search(rb"\0depends=([^\0]*)\0", ko)
    if not match or not match.group(1):
        return []
    return match.group(1).decode().split(",")


def extract_modules(di_initrd: Path, wanted: tuple[str, ...], kver: str) -> list[tuple[str, bytes]]:
    """Return ``[(module, .ko bytes)]`` in load order.

    Modules the kernel has built in (``modules.builtin``) are skipped. Raises
    :class:`InitrdError` if a module or one of its dependencies is missing.
    """
    prefix = f"lib/modules/{kver}/"
    found: dict[str, bytes] = {}
    builtin: set[str] = set()
    for name, _mode, data in read_newc(gzip.decompress(di_initrd.read_bytes())):
        if not name.startswith(prefix):
            continue
        if name == prefix + "modules.builtin":
            builtin = {Path(line).stem for line in data.decode().split()}
        elif name.endswith(".ko"):
            found[Path(name).stem.replace("-", "_")] = data
    if not found:
        raise InitrdError(f"{di_initrd} has no modules for kernel {kver}")
    order: list[str] = []

    def visit(mod: str, chain: tuple[str, ...]) -> None:
        if mod in order or mod in builtin:
            return
        if mod not in found:
            raise InitrdError(f"module {mod} (needed by {chain or 'request'}) not in {di_initrd}")
        for dep in _module_depends(found[mod]):
            visit(dep, (*chain, mod))
        order.append(mod)

    for mod in wanted:
        visit(mod, ())
    return [(mod, found[mod]) for mod in order]


def _busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list-full"], check=True, capture_output=True, text=True)
    return sorted(line for line in out.stdout.split() if line)


def _inputs_digest(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def render_init(modules: list[str]) -> str:
    """The /init script text for the given module load order."""
    return INIT_TEMPLATE.format(
        modules=" ".join(modules), module_dir=MODULE_DIR, eth0_wait=ETH0_WAIT_TENTHS,
        tries=DHCP_TRIES, try_seconds=DHCP_TRY_SECONDS, udhcpc_script=UDHCPC_SCRIPT_PATH,
    )


def build_test_initrd(
    out_path: Path | str | None = None,
    *,
    build_dir: Path = DEFAULT_BUILD_DIR,
    kernel: Path = DI_KERNEL,
    di_initrd: Path = DI_INITRD,
    busybox: Path = BUSYBOX,
) -> Path:
    """Build (or reuse) the test initrd; return its path.

    The image is cached as ``build_dir/test-initrd-<hash>.cpio.gz`` where the
    hash covers busybox, the d-i initrd, the kernel release and this module's
    scripts. With ``out_path`` the cached file is also copied there and
    ``out_path`` is returned. Safe to call concurrently (atomic rename).
    """
    for need in (kernel, di_initrd, busybox):
        if not need.exists():
            raise InitrdError(f"{need} is missing (debian-installer-12-netboot-amd64 / "
                              "busybox-static installed?)")
    kver = kernel_version(kernel)
    busybox_bin = busybox.read_bytes()
    key = _inputs_digest([
        FORMAT_VERSION.encode(), kver.encode(), busybox_bin, di_initrd.read_bytes(),
        INIT_TEMPLATE.encode(), UDHCPC_SCRIPT.encode(), " ".join(VIRTIO_NET_MODULES).encode(),
    ])
    cached = Path(build_dir) / f"test-initrd-{key}.cpio.gz"
    if not cached.exists():
        modules = extract_modules(di_initrd, VIRTIO_NET_MODULES, kver)
        writer = NewcWriter()
        for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/share",
                          "usr/share/udhcpc", "lib", MODULE_DIR, "proc", "sys", "dev",
                          "tmp", "run", "etc"):
            writer.directory(directory)
        writer.chardev("dev/console", _DEV_CONSOLE)
        writer.chardev("dev/null", _DEV_NULL)
        writer.file("bin/busybox", busybox_bin, 0o755)
        for applet in _busybox_applets(busybox):
            if applet != "bin/busybox":
                writer.symlink(applet, "/bin/busybox")
        for mod, data in modules:
            writer.file(f"{MODULE_DIR}/{mod}.ko", data)
        writer.file(UDHCPC_SCRIPT_PATH, UDHCPC_SCRIPT.encode(), 0o755)
        writer.file("init", render_init([m for m, _ in modules]).encode(), 0o755)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(gzip.compress(writer.finish(), mtime=0))
        tmp.replace(cached)
    if out_path is None:
        return cached
    out = Path(out_path)
    shutil.copyfile(cached, out)
    return out
