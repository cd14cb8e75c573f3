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
from collections.abc import Sequence
from pathlib import Path

from .lab import NetLab

REPO = Path(__file__).resolve().parents[2]
NETBOOT_TREE = REPO / "netboot" / "tree"
READY_TIMEOUT = 30
POLL = 0.2
POOL_FIRST, POOL_LAST = 100, 199


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
