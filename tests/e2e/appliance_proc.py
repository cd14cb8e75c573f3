"""Run the real ``plowshare`` CLI and server inside a lab, for e2e tests and the demo.

The server runs as its own process in the lab's server namespace (exactly
as an operator runs ``plowshare serve``); the operator commands run in the
test's namespace against the same state directory, as they would on the
appliance while it serves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from .initrd import DI_KERNEL, build_test_initrd
from .lab import NetLab
from .qemu import FIRMWARE_ERROR_PATTERNS, Guest, GuestError, boot_with_retry

REPO = Path(__file__).resolve().parents[2]
NETBOOT_TREE = REPO / "netboot" / "tree"
READY_TIMEOUT = 30
POLL = 0.2
POOL_FIRST, POOL_LAST = 100, 199
EVENT_POLL = 0.5  # seconds between two reads of a timeline while a guest boots

Until = Callable[[list[dict]], bool]


class PlowshareProcess:
    """``plowshare serve`` on the lab's ``prov0``, plus the CLI against its state."""

    def __init__(self, lab: NetLab, state: Path, log_path: Path):
        self.lab = lab
        self.state = Path(state)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True) -> str:
        cmd = [sys.executable, "-m", "appliance", "--state", str(self.state), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60,
                             check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def host(self, mac: str) -> dict:
        return json.loads(self.cli("host", "show", mac, "--json"))

    def events(self, mac: str) -> list[dict]:
        return json.loads(self.cli("events", mac, "--json"))

    def wait_events(self, mac: str, until: Until, timeout: float, *,
                    guest: Guest | None = None, since: float | None = None,
                    fail_patterns: Sequence[str] = FIRMWARE_ERROR_PATTERNS) -> list[dict]:
        """Poll ``mac``'s timeline until ``until(events)`` holds; return those events.

        ``events`` are the ones recorded at or after ``since`` (default: the
        start of ``guest``'s current boot).  With ``guest``, fail at once when
        its console shows one of ``fail_patterns`` (:class:`~.qemu.FirmwareError`,
        which :func:`~.qemu.boot_with_retry` may retry) or QEMU exited; the
        timeline is read before the console, so a boot that reached its goal
        and then failed (e.g. "No bootable device" after a local-boot script)
        still counts.  Timeout: AssertionError with the events and both logs.
        """
        if since is None:
            since = guest.started_epoch if guest is not None else 0.0
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self.events(mac) if e["ts"] >= since]
            if until(events):
                return events
            if guest is not None:
                guest.check(fail_patterns)
            if time.monotonic() > deadline:
                tail = guest.log[-2000:] if guest is not None else ""
                raise AssertionError(f"{mac}: timeline incomplete after {timeout}s: "
                                     f"{[(e['kind'], e['detail']) for e in events]}\n"
                                     f"guest console tail:\n{tail}\nserver:\n{self.log()}")
            time.sleep(EVENT_POLL)

    def boot(self, guest: Guest, until: Until, timeout: float, *,
             fail_patterns: Sequence[str] = FIRMWARE_ERROR_PATTERNS, **retry) -> list[dict]:
        """Boot ``guest`` until ``until(events of this boot)`` holds; return them.

        One retry for OVMF's known flake (:func:`~.qemu.boot_with_retry`;
        ``retry`` goes to it); any other failure (one of ``fail_patterns`` on
        the console) raises at once with the server's log attached.  The
        guest keeps running: stop it.
        """
        try:
            return boot_with_retry(guest, wait=lambda g: self.wait_events(
                g.mac, until, timeout, guest=g, fail_patterns=fail_patterns), **retry)
        except GuestError as exc:  # a timeout already carries the server's log
            raise AssertionError(f"{exc}\nserver log:\n{self.log()}") from None

    def start(self, config_path: Path | str | None = None,
              extra_args: Sequence[str] = (), pool: bool = True) -> PlowshareProcess:
        """Start ``plowshare serve``; ``config_path`` becomes ``--config`` (the
        flags given here still override it), ``extra_args`` go after them.
        ``pool=False``: no ``--pool`` flag (the config describes the subnet)."""
        lab = self.lab
        net = lab.network
        cmd = [sys.executable, "-m", "appliance", "--state", str(self.state), "serve",
               "--interface", lab.server_iface, "--address", lab.server_addr,
               "--netboot", str(NETBOOT_TREE), "--verbose"]
        if pool:
            cmd += ["--pool", f"{net[POOL_FIRST]}-{net[POOL_LAST]}"]
        if config_path is not None:
            cmd += ["--config", str(config_path)]
        cmd += list(extra_args)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = lab.popen_in_server(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=REPO, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"http://{self.lab.server_addr}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"plowshare exited {self.proc.returncode}:\n{self.log()}")
            res = self.lab.run_in_server(["curl", "-fsS", "-m", "2", url], check=False)
            if res.returncode == 0:
                return
            time.sleep(POLL)
        raise AssertionError(f"plowshare not ready in {READY_TIMEOUT}s:\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self, tail: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])


CMDLINE = "console=ttyS0 ks={{ ks_url }} done={{ done_url }}"


@contextmanager
def install_lab(work: Path, hosts: dict[str, list[str]]):
    """A lab and a started ``plowshare serve`` with the test installer as distro
    and profile ``testinst`` (Debian's netboot kernel, the busybox initrd that
    plays installer) and one host per MAC in ``hosts`` (extra ``host add``
    arguments as values).  Yields (lab, server); on exit the server must stop
    cleanly on SIGTERM."""
    initrd = build_test_initrd()
    lab = NetLab().start()
    server = PlowshareProcess(lab, work / "state", work / "plowshare.log")
    try:
        server.cli("distro", "add", "testinst", "--kernel", str(DI_KERNEL),
                   "--initrd", str(initrd))
        server.cli("profile", "add", "testinst", "--distro", "testinst",
                   "--template", "default.ks.j2", "--cmdline", CMDLINE)
        for mac, args in hosts.items():
            server.cli("host", "add", mac, "--profile", "testinst", *args)
        server.start()
        yield lab, server
    finally:
        code = server.stop()
        lab.stop()
    assert code == 0, f"plowshare did not stop cleanly on SIGTERM (exit {code})"
