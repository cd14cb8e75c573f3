"""A throw-away provisioning network made of two network namespaces.

Layout (``<id>`` is unique per lab, ``<n>`` is the subnet index)::

    ps-srv-<id>                         ps-net-<id>
    lo (up)                             br0 (bridge, STP off, no IP)
    prov0 10.99.<n>.1/24 + fe80::/64 ====  up0 (veth peer, enslaved)
                                        tap0, tap1, ... (one per guest)

The appliance (or a stand-in server) runs in the server namespace on
``prov0``; QEMU guests run in the wire namespace attached to the taps.
Nothing touches the host's own interfaces and nothing is routed out.

Contract:

* ``start()`` first removes namespaces left behind by labs whose owner
  process is dead (the owner's pid is part of every name), then builds the
  layout. ``stop()`` kills every process still inside the lab's namespaces
  and deletes them; it is idempotent and safe after a partial ``start()``.
* Both are also available as a context manager.
* IPv6 is enabled on ``prov0`` with DAD off, so its link-local address is
  usable at once (needed for router advertisements). The wire namespace has
  IPv6 disabled on its own interfaces; it still bridges IPv6 frames.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Self

NS_PREFIX = "ps-"
SERVER_NS_TAG = "srv"
WIRE_NS_TAG = "net"
SERVER_IFACE = "prov0"
UPLINK_IFACE = "up0"
BRIDGE = "br0"
SUBNET_BASE = "10.99"
PREFIX_LEN = 24
SERVER_HOST = 1
#: Subnet indexes a lab picks from when none is given (``10.99.<n>.0/24``).
SUBNET_INDEX_RANGE = (1, 254)
#: Seconds a harness command may take before it counts as hung.
COMMAND_TIMEOUT = 30
#: Seconds to wait for a process inside a namespace to exit after SIGTERM.
TERM_GRACE = 3
#: Random hex digits in a lab id (besides the owner pid).
ID_RANDOM_BYTES = 2
#: Seconds to wait for prov0's link-local address to appear.
LINK_LOCAL_WAIT = 5
POLL_INTERVAL = 0.1

#: prctl(2) option: signal to get when the parent thread dies.
_PR_SET_PDEATHSIG = 1

# any tag: server, wire and peer namespaces (add_peer_namespace) alike
_NS_NAME = re.compile(rf"^{NS_PREFIX}[a-z]+-(\d+)x[0-9a-f]+$")


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
         **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    proc = subprocess.run(list(cmd), timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr or ''}".strip())
    return proc


def list_namespaces() -> list[str]:
    """Names of all named network namespaces on the host."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _die_with_parent() -> None:
    """preexec hook: SIGTERM this child when the test process dies (even by SIGKILL).

    Survives ``ip netns exec``'s execve, so it reaches QEMU itself.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace_processes(ns: str, grace: float = TERM_GRACE) -> None:
    """SIGTERM, then SIGKILL, every process whose network namespace is ``ns``."""
    def pids() -> list[int]:
        out = _run(["ip", "netns", "pids", ns], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        remaining = pids()
        if not remaining:
            return
        for pid in remaining:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids():
            time.sleep(POLL_INTERVAL)


def delete_namespace(ns: str) -> None:
    """Kill what runs in ``ns`` and delete it; a missing namespace is fine."""
    if ns not in list_namespaces():
        return
    kill_namespace_processes(ns)
    _run(["ip", "netns", "delete", ns], check=False)


def cleanup_stale_namespaces() -> list[str]:
    """Delete lab namespaces whose owner process is gone; return their names.

    Namespaces of labs owned by live processes (another test session) are
    left alone.
    """
    removed = []
    for ns in list_namespaces():
        match = _NS_NAME.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            delete_namespace(ns)
            removed.append(ns)
    return removed


class NetLab:
    """Server namespace + wire namespace joined by a veth, with taps for guests.

    ``subnet_index`` picks ``10.99.<n>.0/24`` (random when None; namespaces
    are isolated, so two labs may share one without harm).
    """

    def __init__(self, subnet_index: int | None = None, lab_id: str | None = None) -> None:
        self.lab_id = lab_id or f"{os.getpid()}x{secrets.token_hex(ID_RANDOM_BYTES)}"
        self.subnet_index = (subnet_index if subnet_index is not None
                             else secrets.choice(range(SUBNET_INDEX_RANGE[0],
                                                       SUBNET_INDEX_RANGE[1] + 1)))
        self.server_ns = f"{NS_PREFIX}{SERVER_NS_TAG}-{self.lab_id}"
        self.wire_ns = f"{NS_PREFIX}{WIRE_NS_TAG}-{self.lab_id}"
        self.taps: list[str] = []
        self.peer_namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._started = False

    # -- addresses -----------------------------------------------------------
    @property
    def network(self) -> ipaddress.IPv4Network:
        """The lab subnet, e.g. ``10.99.7.0/24``."""
        return ipaddress.IPv4Network(f"{SUBNET_BASE}.{self.subnet_index}.0/{PREFIX_LEN}")

    @property
    def subnet(self) -> str:
        """The lab subnet as text (``10.99.7.0/24``)."""
        return str(self.network)

    @property
    def prefix_len(self) -> int:
        return PREFIX_LEN

    @property
    def netmask(self) -> str:
        return str(self.network.netmask)

    @property
    def server_addr(self) -> str:
        """The server's IPv4 address on ``prov0`` (``10.99.<n>.1``)."""
        return self.host_addr(SERVER_HOST)

    @property
    def server_iface(self) -> str:
        return SERVER_IFACE

    def host_addr(self, host: int) -> str:
        """Address ``host`` in the lab subnet (``host_addr(100)`` -> ``10.99.<n>.100``)."""
        return str(self.network.network_address + host)

    def guest_mac(self, index: int) -> str:
        """A locally administered QEMU-style MAC unique to this lab and index."""
        return f"52:54:00:{self.subnet_index:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"

    def server_link_local(self) -> str:
        """The IPv6 link-local address of ``prov0`` (waits briefly for it)."""
        deadline = time.monotonic() + LINK_LOCAL_WAIT
        while True:
            out = self.run_in_server(["ip", "-6", "-o", "addr", "show", "dev", SERVER_IFACE,
                                      "scope", "link"]).stdout
            match = re.search(r"inet6 (fe80::[0-9a-f:]+)/", out)
            if match:
                return match.group(1)
            if time.monotonic() > deadline:
                raise LabError(f"no link-local address on {SERVER_IFACE}: {out!r}")
            time.sleep(POLL_INTERVAL)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Self:
        """Build the namespaces, veth, bridge and ``prov0`` address. Idempotent."""
        if self._started:
            return self
        if os.geteuid() != 0:
            raise LabError("network labs need root")
        cleanup_stale_namespaces()
        self._started = True
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self) -> None:
        srv, wire = self.server_ns, self.wire_ns
        _run(["ip", "netns", "add", srv])
        _run(["ip", "netns", "add", wire])
        # Wire namespace: pure L2, no addresses of its own.
        for key in ("all", "default"):
            self._sysctl(wire, f"net.ipv6.conf.{key}.disable_ipv6", "1")
        _run(["ip", "-n", wire, "link", "set", "lo", "up"])
        _run(["ip", "-n", wire, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
              "forward_delay", "0", "mcast_snooping", "0"])
        # Server namespace: IPv6 on, no DAD delay on prov0.
        for key in ("all", "default"):
            self._sysctl(srv, f"net.ipv6.conf.{key}.disable_ipv6", "0")
            self._sysctl(srv, f"net.ipv6.conf.{key}.accept_dad", "0")
        _run(["ip", "-n", srv, "link", "set", "lo", "up"])
        _run(["ip", "-n", srv, "link", "add", SERVER_IFACE, "type", "veth",
              "peer", "name", UPLINK_IFACE, "netns", wire])
        self._sysctl(srv, f"net.ipv6.conf.{SERVER_IFACE}.disable_ipv6", "0")
        self._sysctl(srv, f"net.ipv6.conf.{SERVER_IFACE}.accept_dad", "0")
        _run(["ip", "-n", srv, "addr", "add", f"{self.server_addr}/{PREFIX_LEN}",
              "dev", SERVER_IFACE])
        _run(["ip", "-n", wire, "link", "set", UPLINK_IFACE, "master", BRIDGE])
        _run(["ip", "-n", wire, "link", "set", UPLINK_IFACE, "up"])
        _run(["ip", "-n", wire, "link", "set", BRIDGE, "up"])
        _run(["ip", "-n", srv, "link", "set", SERVER_IFACE, "up"])

    @staticmethod
    def _sysctl(ns: str, key: str, value: str) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def add_client_port(self, name: str, mac: str) -> str:
        """A veth in the wire namespace with ``mac``, its peer on ``br0``.

        For real DHCP clients (udhcpc, dhclient) and raw test packets that
        run as processes in the wire namespace rather than as QEMU guests.
        Returns the client-side interface name.
        """
        wire = self.wire_ns
        _run(["ip", "-n", wire, "link", "add", name, "address", mac, "type", "veth",
              "peer", "name", f"{name}b"])
        _run(["ip", "-n", wire, "link", "set", f"{name}b", "master", BRIDGE])
        _run(["ip", "-n", wire, "link", "set", f"{name}b", "up"])
        _run(["ip", "-n", wire, "link", "set", name, "up"])
        return name

    def add_tap(self, name: str | None = None) -> str:
        """Create a tap in the wire namespace, enslave it to ``br0``, bring it up.

        Returns its name (``tap<k>`` when ``name`` is None). QEMU run in the
        wire namespace attaches with ``-netdev tap,ifname=<name>``.
        """
        name = name or f"tap{len(self.taps)}"
        if name in self.taps:
            return name
        _run(["ip", "-n", self.wire_ns, "tuntap", "add", "dev", name, "mode", "tap"])
        self.taps.append(name)
        _run(["ip", "-n", self.wire_ns, "link", "set", name, "master", BRIDGE])
        _run(["ip", "-n", self.wire_ns, "link", "set", name, "up"])
        return name

    def stop(self) -> None:
        """Terminate tracked processes, kill the rest in the namespaces, delete them."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=TERM_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for ns in (*self.peer_namespaces, self.wire_ns, self.server_ns):
            delete_namespace(ns)
        self.peer_namespaces.clear()
        self.taps.clear()
        self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- running things --------------------------------------------------------
    @staticmethod
    def _ns_cmd(ns: str, cmd: Sequence[str]) -> list[str]:
        if isinstance(cmd, str):
            raise TypeError("pass the command as a list of arguments")
        return ["ip", "netns", "exec", ns, *cmd]

    def run_in_server(self, cmd: Sequence[str], *, check: bool = True,
                      timeout: float = COMMAND_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` to completion in the server namespace (text, captured).

        Raises :class:`LabError` on a non-zero exit when ``check``.
        """
        return _run(self._ns_cmd(self.server_ns, cmd), check=check, timeout=timeout, **kwargs)

    def run_in_wire(self, cmd: Sequence[str], *, check: bool = True,
                    timeout: float = COMMAND_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
        """Like :meth:`run_in_server`, in the wire namespace."""
        return _run(self._ns_cmd(self.wire_ns, cmd), check=check, timeout=timeout, **kwargs)

    def popen_in_server(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``cmd`` in the server namespace; the lab stops it in :meth:`stop`.

        The child gets SIGTERM if the test process dies; keyword arguments go
        to :class:`subprocess.Popen` (stdin defaults to /dev/null).
        """
        return self._popen(self.server_ns, cmd, **kwargs)

    def popen_in_wire(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``cmd`` in the wire namespace; the lab stops it in :meth:`stop`."""
        return self._popen(self.wire_ns, cmd, **kwargs)

    def _popen(self, ns: str, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        if not self._started:
            raise LabError("lab not started")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("preexec_fn", _die_with_parent)
        proc = subprocess.Popen(self._ns_cmd(ns, cmd), **kwargs)
        self._procs.append(proc)
        return proc

    # -- a third namespace on the same wire ------------------------------------
    def add_peer_namespace(self, tag: str = "site", host: int = 2) -> str:
        """A namespace ``ps-<tag>-<id>`` with ``<tag>0`` at ``host_addr(host)``, on ``br0``.

        For a second server on the provisioning wire (e.g. the site's own DHCP
        server in proxyDHCP tests). Returns the namespace name; run things in
        it with :meth:`run_in_namespace` / :meth:`popen_in_namespace`.
        :meth:`stop` deletes it with the others (and a later lab's start
        removes it if its owner died); :meth:`remove_peer_namespaces` does so
        earlier. IPv6 is off inside it.
        """
        if not self._started:
            raise LabError("lab not started")
        ns, iface, uplink = f"{NS_PREFIX}{tag}-{self.lab_id}", f"{tag}0", f"{tag}up"
        _run(["ip", "netns", "add", ns])
        self.peer_namespaces.append(ns)
        for key in ("all", "default"):
            self._sysctl(ns, f"net.ipv6.conf.{key}.disable_ipv6", "1")
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "add", iface, "type", "veth",
              "peer", "name", uplink, "netns", self.wire_ns])
        _run(["ip", "-n", ns, "addr", "add", f"{self.host_addr(host)}/{PREFIX_LEN}",
              "dev", iface])
        _run(["ip", "-n", self.wire_ns, "link", "set", uplink, "master", BRIDGE])
        _run(["ip", "-n", self.wire_ns, "link", "set", uplink, "up"])
        _run(["ip", "-n", ns, "link", "set", iface, "up"])
        return ns

    def run_in_namespace(self, ns: str, cmd: Sequence[str], *, check: bool = True,
                         timeout: float = COMMAND_TIMEOUT,
                         **kwargs) -> subprocess.CompletedProcess:
        """Like :meth:`run_in_server`, in namespace ``ns`` (e.g. a peer namespace)."""
        return _run(self._ns_cmd(ns, cmd), check=check, timeout=timeout, **kwargs)

    def popen_in_namespace(self, ns: str, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """Like :meth:`popen_in_server`, in namespace ``ns``; :meth:`stop` stops it."""
        return self._popen(ns, cmd, **kwargs)

    def remove_peer_namespaces(self) -> None:
        """Kill what runs in the peer namespaces and delete them. Idempotent."""
        for ns in self.peer_namespaces:
            delete_namespace(ns)
        self.peer_namespaces.clear()
