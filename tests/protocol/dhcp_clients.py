"""Real DHCP clients run once in a lab's wire namespace: ISC dhclient and
busybox udhcpc, returning what they learned (lease file / script env)."""

from __future__ import annotations

import os
import signal

from tests.e2e.lab import NetLab

CLIENT_TIMEOUT = 90

UDHCPC_SCRIPT = """\
#!/bin/sh
[ "$1" = bound ] || exit 0
for v in ip router dns domain ntpsrv mtu staticroutes search lease subnet; do
  eval "echo $v=\\$$v"
done > "$OUT"
"""


def dhclient(lab: NetLab, port: str, tmp_path, conf_text: str) -> dict[str, str]:
    """Run dhclient once on ``port`` with ``conf_text`` as its dhclient.conf;
    the options of its lease file by name, plus ``fixed-address``."""
    conf, lease, pid = (tmp_path / f"{port}.{x}" for x in ("conf", "leases", "pid"))
    conf.write_text(conf_text)
    lease.unlink(missing_ok=True)
    try:
        lab.run_in_wire(["dhclient", "-1", "-v", "-sf", "/bin/true", "-cf", str(conf),
                         "-lf", str(lease), "-pf", str(pid), port], timeout=CLIENT_TIMEOUT)
    finally:
        if pid.exists():  # dhclient went to the background to renew: stop it
            try:
                os.kill(int(pid.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
    out = {}
    for line in lease.read_text().splitlines():
        words = line.strip().rstrip(";").split(None, 2)
        if words and words[0] == "option" and len(words) == 3:
            out[words[1]] = words[2]
        elif words and words[0] == "fixed-address":
            out["fixed-address"] = words[1]
    return out


def udhcpc(lab: NetLab, port: str, tmp_path, *flags: str) -> dict[str, str]:
    """Run busybox udhcpc once on ``port`` with extra ``flags`` (e.g. ``-O mtu``);
    the variables it exported to its script."""
    script, out = tmp_path / "udhcpc.sh", tmp_path / f"{port}.env"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out.unlink(missing_ok=True)
    lab.run_in_wire(["env", f"OUT={out}", "busybox", "udhcpc", "-i", port, "-f", "-q", "-n",
                     "-t", "5", "-T", "2", *flags, "-s", str(script)], timeout=CLIENT_TIMEOUT)
    return dict(line.split("=", 1) for line in out.read_text().splitlines())
