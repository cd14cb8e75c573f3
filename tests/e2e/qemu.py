"""QEMU guests with real firmware, attached to a :class:`~tests.e2e.lab.NetLab` tap.

``Guest`` runs ``qemu-system-x86_64`` inside the lab's wire namespace with
the serial console written to ``<workdir>/<name>-boot<k>.log`` (one file per
boot; ``log`` is the current boot's text).

Firmware:

* ``bios``: SeaBIOS with QEMU's default NIC option ROM (Debian's ipxe-qemu
  iPXE), serial console enabled through ``-M graphics=off``.
* ``uefi``: OVMF (read-only code + a per-guest copy of the vars store) with
  ``romfile=`` on the NIC, so OVMF's own PXE runs, not iPXE.
* ``uefi-sb``: the same with Secure Boot on: Debian's secboot OVMF build
  (SMM, so ``smm=on`` and a secure pflash) and a vars store with Microsoft's
  keys enrolled (``OVMF_VARS_4M.ms.fd``), so only Microsoft-signed binaries
  (shim) run first.

KVM is used only when the CPU shows vmx/svm and /dev/kvm is usable;
otherwise TCG with ``-cpu max`` (see NETBOOT-NOTES.md for why).

``wait_for`` raises a specific :class:`GuestError` subclass instead of
waiting out the timeout: :class:`FirmwareError` when a fail-fast pattern
appears (the guest is killed at once: OVMF would otherwise spend minutes on
PXEv6/HTTP boot), :class:`GuestExited` when QEMU exited without a match,
:class:`GuestTimeout` on timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self, TypeVar

from .lab import NetLab

T = TypeVar("T")
QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
FIRMWARES = ("bios", "uefi", "uefi-sb")
MEMORY_MB = 512
#: Seconds to wait for one guest to reach a milestone (TCG: BIOS ~20 s, UEFI ~35 s).
BOOT_TIMEOUT = 120
#: Seconds per guest when several boot at once on few cores.
CONCURRENT_BOOT_TIMEOUT = 300
POLL_INTERVAL = 0.1
#: Seconds to let QEMU exit after SIGTERM before SIGKILL.
KILL_GRACE = 5
#: Characters of console output quoted in exception messages.
LOG_TAIL_CHARS = 2000

FIRMWARE_ERROR_PATTERNS: tuple[str, ...] = (
    r"PXE-E\w\w[^\r\n]*",
    r"KVM internal error[^\r\n]*",
    r"No bootable device[^\r\n]*",
    r"PLOWSHARE-ERROR:[^\r\n]*",
)
"""Default fail-fast list. Pass another (e.g. without "No bootable device")
when a boot legitimately ends there, such as a second boot that goes local."""

PXE_FLAKE_PATTERN = r"PXE-E07"
"""OVMF's occasional ``PXE-E07: Network device error`` under load (notes)."""


class GuestError(AssertionError):
    """A guest did not reach the awaited console output. ``log`` holds the text."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- console tail ---\n{log[-LOG_TAIL_CHARS:]}")
        self.log = log


class FirmwareError(GuestError):
    """A fail-fast pattern (firmware error) appeared; ``match`` is that match."""

    def __init__(self, message: str, log: str, match: re.Match) -> None:
        super().__init__(message, log)
        self.match = match


class GuestExited(GuestError):
    """QEMU exited before the awaited output appeared."""


class GuestTimeout(GuestError):
    """The awaited output did not appear in time."""


def kvm_usable() -> bool:
    """True when hardware virtualisation is advertised and /dev/kvm is usable."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"vmx", "svm"}) and os.access("/dev/kvm", os.R_OK | os.W_OK)


def accel_args() -> list[str]:
    """QEMU acceleration arguments for this machine."""
    if kvm_usable():
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg", "-cpu", "max"]


class Guest:
    """One QEMU VM on a lab tap.

    ``firmware`` is one of :data:`FIRMWARES`. Without ``kernel`` the guest
    network-boots (``bootindex=1`` on the NIC); with ``kernel`` (and
    optionally ``initrd``/``append``) QEMU boots it directly. ``tap`` defaults
    to a new tap from ``lab.add_tap()``. ``workdir`` (e.g. pytest's tmp_path)
    holds the console logs, QEMU's stderr and the OVMF vars copy.
    ``extra_args`` are appended to the QEMU command line.
    """

    def __init__(self, lab: NetLab, name: str, mac: str, *, workdir: Path | str,
                 firmware: str = "bios", tap: str | None = None,
                 kernel: Path | str | None = None, initrd: Path | str | None = None,
                 append: str | None = None, memory_mb: int = MEMORY_MB,
                 extra_args: Sequence[str] = ()) -> None:
        if firmware not in FIRMWARES:
            raise ValueError(f"firmware must be one of {FIRMWARES}, not {firmware!r}")
        self.lab, self.name, self.mac, self.firmware = lab, name, mac, firmware
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tap = tap or lab.add_tap()
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.memory_mb = memory_mb
        self.extra_args = list(extra_args)
        self.vars_path = self.workdir / f"{name}-OVMF_VARS.fd"
        self.boots = 0
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.started_epoch: float | None = None  # time.time() of the current boot's start
        self._stderr_path = self.workdir / f"{name}-qemu.stderr"

    # -- command line --------------------------------------------------------
    def command(self) -> list[str]:
        """The qemu-system-x86_64 argument list (without the netns wrapper)."""
        nic = f"virtio-net-pci,netdev=n0,mac={self.mac}"
        secure = self.firmware == "uefi-sb"
        machine = "q35,smm=on,graphics=off" if secure else "q35,graphics=off"
        args = [QEMU, "-M", machine, *accel_args(), "-m", str(self.memory_mb),
                "-smp", "1", "-display", "none", "-monitor", "none", "-no-reboot",
                "-serial", f"file:{self.log_path}",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no"]
        if self.firmware != "bios":
            nic += ",romfile="
            code = OVMF_CODE_SECBOOT if secure else OVMF_CODE
            args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_path}"]
        if secure:
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        if self.kernel is None:
            nic += ",bootindex=1"
        else:
            args += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                args += ["-initrd", str(self.initrd)]
            if self.append is not None:
                args += ["-append", self.append]
        return [*args, "-device", nic, *self.extra_args]

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Self:
        """Start a new boot (a new log file); the previous run must have ended.

        The OVMF vars copy is created on the first UEFI boot and kept across
        boots of the same guest (like a real machine's NVRAM).
        """
        if self.running:
            raise RuntimeError(f"guest {self.name} is already running")
        if self.firmware != "bios" and not self.vars_path.exists():
            vars_file = OVMF_VARS_MS if self.firmware == "uefi-sb" else OVMF_VARS
            shutil.copyfile(vars_file, self.vars_path)
        self.boots += 1
        self.log_path = self.workdir / f"{self.name}-boot{self.boots}.log"
        self.log_path.write_bytes(b"")
        with open(self._stderr_path, "ab") as stderr:
            self.proc = self.lab.popen_in_wire(self.command(), stdout=stderr, stderr=stderr)
        self.started_at = time.monotonic()
        self.started_epoch = time.time()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def elapsed(self) -> float:
        """Seconds since the current boot started."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    @property
    def log(self) -> str:
        """Console text of the current boot so far (undecodable bytes replaced)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    @property
    def qemu_stderr(self) -> str:
        """What QEMU itself printed (errors about ROMs, taps, firmware)."""
        return self._stderr_path.read_text(errors="replace") if self._stderr_path.exists() else ""

    def check(self, fail_patterns: Sequence[str] = FIRMWARE_ERROR_PATTERNS,
              start: int = 0) -> None:
        """Raise now if this boot already failed: :class:`FirmwareError` (and kill
        the guest) when one of ``fail_patterns`` is on the console at or after
        ``start``, :class:`GuestExited` when QEMU has exited.  For callers that
        wait on something other than the console (e.g. the server's events).
        """
        exited = not self.running
        text = self.log
        bad = [m for m in (re.compile(p, re.MULTILINE).search(text, start)
                           for p in fail_patterns) if m]
        if bad:
            first = min(bad, key=lambda m: m.start())
            self.stop()
            raise FirmwareError(f"{self.name}: {first.group(0).strip()!r} after "
                                f"{self.elapsed:.1f}s", text, first)
        if exited:
            raise GuestExited(f"{self.name}: QEMU exited ({self.proc.returncode}); "
                              f"qemu stderr: {self.qemu_stderr.strip()}", text)

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT, *,
                 fail_patterns: Sequence[str] = FIRMWARE_ERROR_PATTERNS,
                 start: int = 0) -> re.Match:
        """Wait until ``pattern`` (a regex, MULTILINE) matches the console at or after ``start``.

        Returns the match (``match.end()`` is a good ``start`` for the next
        wait). Raises :class:`FirmwareError` (and kills the guest) as soon as
        one of ``fail_patterns`` matches after ``start`` and before any match
        of ``pattern``; :class:`GuestExited` / :class:`GuestTimeout` otherwise.
        """
        wanted = re.compile(pattern, re.MULTILINE)
        fails = [re.compile(p, re.MULTILINE) for p in fail_patterns]
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running
            text = self.log
            match = wanted.search(text, start)
            bad = [m for m in (f.search(text, start) for f in fails) if m]
            first_bad = min(bad, key=lambda m: m.start()) if bad else None
            if match and (first_bad is None or match.start() < first_bad.start()):
                return match
            if first_bad is not None:
                self.stop()
                raise FirmwareError(f"{self.name}: {first_bad.group(0).strip()!r} while waiting "
                                    f"for {pattern!r} after {self.elapsed:.1f}s", text, first_bad)
            if exited:
                raise GuestExited(f"{self.name}: QEMU exited ({self.proc.returncode}) before "
                                  f"{pattern!r}; qemu stderr: {self.qemu_stderr.strip()}", text)
            if time.monotonic() > deadline:
                raise GuestTimeout(f"{self.name}: no {pattern!r} within {timeout}s", text)
            time.sleep(POLL_INTERVAL)

    def wait_exit(self, timeout: float = BOOT_TIMEOUT) -> int:
        """Wait for QEMU to exit (guest poweroff); return its exit code."""
        if self.proc is None:
            raise RuntimeError(f"guest {self.name} was never started")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestTimeout(f"{self.name}: still running after {timeout}s", self.log) from None

    def stop(self) -> None:
        """Kill QEMU (no-op when it is not running). Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def boot_with_retry(guest: Guest, pattern: str | None = None,
                    timeout: float = BOOT_TIMEOUT, *,
                    fail_patterns: Sequence[str] = FIRMWARE_ERROR_PATTERNS,
                    retry_pattern: str = PXE_FLAKE_PATTERN, attempts: int = 2,
                    wait: Callable[[Guest], T] | None = None) -> re.Match | T:
    """Start ``guest`` and wait for ``pattern``; on a fail-fast error matching
    ``retry_pattern`` (OVMF's PXE-E07 flake) stop and boot again, up to
    ``attempts`` boots in all. Other errors propagate at once.

    ``wait`` replaces the console wait: it is called with the guest after
    each start, its result is returned, and a :class:`FirmwareError` it
    raises (see :meth:`Guest.check`) is retried the same way.
    """
    if (pattern is None) == (wait is None):
        raise ValueError("give exactly one of pattern and wait")
    for attempt in range(1, attempts + 1):
        guest.start()
        try:
            if wait is not None:
                return wait(guest)
            return guest.wait_for(pattern, timeout, fail_patterns=fail_patterns)
        except FirmwareError as err:
            guest.stop()
            if attempt == attempts or not re.search(retry_pattern, err.match.group(0)):
                raise
    raise AssertionError("unreachable")
