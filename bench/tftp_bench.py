"""TFTP throughput and session count: Plowshare vs tftpd-hpa vs dnsmasq (issue 4).

Run on demand, as root (it makes a network namespace):

    .venv/bin/python bench/tftp_bench.py            # full: 50 MiB, ~12 min on 2 cores
    .venv/bin/python bench/tftp_bench.py --quick    # 8 MiB, 1 run each, ~1 min
    .venv/bin/python bench/tftp_bench.py --scenarios single,window --json out.json

Exit status: 0 every bar passed, 1 some bar failed, 2 missing tools or not
root (it prints the apt-get command), 3 a server or a transfer failed, 130 Ctrl-C.

Everything runs in a fresh network namespace (``unshare --net``) holding only
``lo``: dnsmasq's TFTP server listens on port 69 only (no option moves it), so
it gets port 69 there and the other servers high ports, and every server and
client runs in that namespace for a fair comparison.  The namespace goes away
when the bench exits.  All traffic is loopback.

Servers, started by the bench on one root (a temp dir on tmpfs), stopped at
the end (also on Ctrl-C or failure):
* Plowshare: ``python -m bench.plowshare_tftpd`` -> ``appliance.servers.tftp.TftpServer``
  in its own process (client and server never share a GIL);
* tftpd-hpa: ``in.tftpd -L -4 -s -a :PORT ROOT`` (wildcard address: in a
  namespace with only ``lo``, glibc's AI_ADDRCONFIG makes ``-a 127.0.0.1:PORT``
  fail to resolve; the only interface is loopback anyway);
* dnsmasq: ``dnsmasq -k --port=0 --enable-tftp --listen-address=127.0.0.1
  --bind-interfaces --tftp-max=1100`` (default tftp-max is 50).

Clients: atftp (C) for the throughput scenarios; every run writes to tmpfs and
every output file is checked (size and sha256) after the clock stops.  The
1,000-session scenario uses an asyncio client in this process: it opens all
sessions and holds them at the OACK until every one is open on the server, then
completes them all and checks every sha256.  The table also gives each
server's CPU seconds per GiB sent (from /proc/PID/stat; not for tftpd-hpa, whose
per-transfer children are reaped by the kernel), which moves much less than
MiB/s when other work shares the machine.

Scenarios and bars (issue 4); median of ``--stream-reps`` (5) single-stream
runs and ``--reps`` (3) concurrent runs, the servers taken in turn in each
round so that load from elsewhere on the machine falls on all of them alike:
1. one stream, blksize 1468, lockstep: Plowshare >= 1.0x tftpd-hpa
2. one stream, blksize 1468, windowsize 16: Plowshare >= 2x tftpd-hpa lockstep
   (whether each server grants windowsize is probed and shown; a server that
   does not grant it falls back to lockstep)
3. 20 concurrent clients, aggregate MiB/s: Plowshare >= 1.0x dnsmasq
4. 100 concurrent clients on Plowshare: >= 90 % of its 20-client aggregate
5. 1,000 concurrent sessions on Plowshare (small file): all complete with the
   right sha256, the server process is alive and still serves afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NS_ENV = "PLOWSHARE_TFTP_BENCH_NETNS"
MIB = 1024 * 1024
HOST = "127.0.0.1"
BLKSIZE = 1468
WINDOW = 16
TOOLS = {"atftp": "atftp", "in.tftpd": "tftpd-hpa", "dnsmasq": "dnsmasq-base",
         "unshare": "util-linux", "ip": "iproute2"}
PORTS = {"plowshare": 16901, "tftpd-hpa": 16902, "dnsmasq": 69, "plowshare-py": 16903}
SERVERS = ("plowshare", "tftpd-hpa", "dnsmasq")
PURE = "plowshare-py"  # --with-pure-python: Plowshare without its C pump, as a 4th server


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------- outer process

def preflight() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None
                      and not Path("/usr/sbin", tool).exists()})
    if missing:
        print("missing tools; install them with:\n  apt-get install -y " + " ".join(missing),
              file=sys.stderr)
        sys.exit(2)
    if os.geteuid() != 0:
        print("run as root (the bench makes a network namespace and runs dnsmasq on port 69)",
              file=sys.stderr)
        sys.exit(2)


def run_in_namespace(argv: list[str]) -> int:
    """Re-run this script inside a new network namespace; wait for it."""
    env = dict(os.environ, **{NS_ENV: "1"})
    cmd = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve()), *argv]
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child got the SIGINT too and cleans up
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130


# ---------------------------------------------------------------- TFTP probing

def rrq(name: str, **options) -> bytes:
    pkt = struct.pack("!H", 1) + name.encode() + b"\0octet\0"
    for k, v in options.items():
        pkt += k.encode() + b"\0" + str(v).encode() + b"\0"
    return pkt


def parse_oack(pkt: bytes) -> dict[str, str]:
    parts = pkt[2:].split(b"\0")
    return {parts[i].decode().lower(): parts[i + 1].decode()
            for i in range(0, len(parts) - 1, 2) if parts[i]}


def probe(port: int, name: str, deadline: float) -> dict[str, str] | None:
    """Ask for ``name`` with blksize/tsize/windowsize, return the OACK's
    options (``{}`` if the server answered with DATA), then abort politely.
    Retries until ``deadline``; None if the server never answered."""
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(rrq(name, blksize=BLKSIZE, tsize=0, windowsize=WINDOW), (HOST, port))
            try:
                pkt, addr = s.recvfrom(65536)
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.2)
                continue
            op = struct.unpack("!H", pkt[:2])[0]
            if op == 5:
                raise RuntimeError(f"probe of port {port}: ERROR {pkt[2:4].hex()} {pkt[4:]!r}")
            s.sendto(struct.pack("!HH", 5, 8) + b"bench probe\0", addr)  # abort
            return parse_oack(pkt) if op == 6 else {}
    return None


# --------------------------------------------------------------------- servers

@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    logfile: Path
    lines: queue.Queue = field(default_factory=queue.Queue)
    oack: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        """User+system CPU seconds of the server process.  None for tftpd-hpa: it
        forks a child per transfer and lets the kernel reap them (SIGCHLD
        ignored), so their CPU never reaches the parent's cutime."""
        if self.name == "tftpd-hpa":
            return None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def status(self, timeout: float = 5.0) -> str | None:
        """Plowshare only: ask the runner for its session counts."""
        if not self.name.startswith("plowshare") or not self.alive():
            return None
        with contextlib.suppress(queue.Empty):
            while True:
                self.lines.get_nowait()
        self.proc.send_signal(signal.SIGUSR1)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.startswith("STATUS"):
                return line.split(" ", 1)[1]
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # tftpd-hpa's forked children
            os.killpg(self.proc.pid, signal.SIGKILL)


def server_cmd(name: str, root: Path, port: int, work: Path) -> list[str]:
    if name in ("plowshare", PURE):
        return [sys.executable, "-m", "bench.plowshare_tftpd", "--root", str(root),
                "--host", HOST, "--port", str(port)] + (["--pure-python"] if name == PURE else [])
    if name == "tftpd-hpa":
        user = "tftp" if _user_exists("tftp") else "nobody"
        return ["/usr/sbin/in.tftpd", "-L", "-4", "-u", user, "-a", f":{port}",
                "-s", str(root)]
    if name == "dnsmasq":
        return ["dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                f"--tftp-root={root}", f"--listen-address={HOST}", "--bind-interfaces",
                "--tftp-max=1100", "--pid-file=", f"--log-facility={work / 'dnsmasq.log'}",
                "--user=nobody", "--group=nogroup"]
    raise ValueError(name)


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def start_server(name: str, root: Path, work: Path, probe_file: str) -> Server:
    port = PORTS[name]
    logfile = work / f"{name}.stderr"
    proc = subprocess.Popen(server_cmd(name, root, port, work), cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=logfile.open("w"), text=True, start_new_session=True)
    srv = Server(name, port, proc, logfile)

    def pump() -> None:
        for line in proc.stdout:
            srv.lines.put(line.strip())
    threading.Thread(target=pump, daemon=True).start()
    oack = probe(port, probe_file, time.monotonic() + 15)
    if oack is None or not srv.alive():
        tail = logfile.read_text()[-2000:]
        srv.stop()
        raise RuntimeError(f"{name} did not come up on port {port}: {tail}")
    srv.oack = oack
    log(f"{name} up on {HOST}:{port} (pid {proc.pid}); OACK to "
        f"blksize/tsize/windowsize request: {oack or 'none (plain DATA)'}")
    return srv


# ------------------------------------------------------------- atftp transfers

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def cpu_idle() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return f[3] + f[4], sum(f[:8])


def timeline_line(samples: list) -> str:
    """One line per 0.5 s: aggregate MiB/s, clients still running, % CPU idle."""
    parts = []
    for (t0, b0, i0, j0, _), (t1, b1, i1, j1, active) in itertools.pairwise(samples):
        idle = 100.0 * (i1 - i0) / (j1 - j0) if j1 > j0 else 0.0
        parts.append(f"{t1:4.1f}s {(b1 - b0) / MIB / (t1 - t0):6.1f} MiB/s "
                     f"{active:3d} run {idle:3.0f}% idle")
    return "\n".join("      " + p for p in parts)


def atftp_run(server: Server, name: str, size: int, digest: str, clients: int,
              window: int | None, outdir: Path, timeline: bool = False) -> float:
    """Run ``clients`` atftp at once; return aggregate MiB/s; check every output.
    ``timeline``: also log the aggregate rate, clients running and machine
    idle time every 0.5 s (output file sizes, /proc/stat)."""
    outs = [outdir / f"{server.name}-{i}.out" for i in range(clients)]
    opts = ["--option", f"blksize {BLKSIZE}", "--option", "tsize 0"]
    if window:
        opts += ["--option", f"windowsize {window}"]
    deadline = 60 + clients * size / MIB / 5  # never slower than 5 MiB/s aggregate
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.perf_counter()
        for out in outs:
            procs.append(subprocess.Popen(
                ["atftp", "--get", "-r", name, "-l", str(out), *opts, HOST, str(server.port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        ends: dict[int, float] = {}
        samples: list = [(0.0, 0, *cpu_idle(), clients)] if timeline else []
        while len(ends) < len(procs):
            now = time.perf_counter() - t0
            if now > deadline:
                raise subprocess.TimeoutExpired("atftp", deadline)
            if timeline and now - samples[-1][0] >= 0.5:
                done = sum(o.stat().st_size for o in outs if o.exists())
                samples.append((now, done, *cpu_idle(), len(procs) - len(ends)))
            for i, p in enumerate(procs):
                if i not in ends and p.poll() is not None:
                    ends[i] = time.perf_counter() - t0
            time.sleep(0.005)
        elapsed = max(ends.values())
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{server.name}: {clients} clients not done in {deadline:.0f} s") \
            from exc
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    retries = 0
    try:
        for p, out in zip(procs, outs):
            err = p.stderr.read().decode(errors="replace").strip()
            p.stderr.close()
            retries += err.count("timeout")
            if not out.exists() or out.stat().st_size != size:
                got = out.stat().st_size if out.exists() else "no file"
                raise RuntimeError(f"{server.name}: {out.name}: size {got} != {size} "
                                   f"(atftp rc {p.returncode}: {err[-300:]})")
            if sha256_file(out) != digest:
                raise RuntimeError(f"{server.name}: {out.name}: sha256 mismatch")
    finally:
        for out in outs:
            out.unlink(missing_ok=True)
    if clients > 1 or retries:
        log(f"    client finish times {min(ends.values()):.2f}..{elapsed:.2f} s; "
            f"atftp timeouts: {retries}")
    if timeline and len(samples) > 1:
        log("    timeline:\n" + timeline_line(samples))
    return clients * size / MIB / elapsed


def measure(server: Server, name: str, size: int, digest: str, clients: int,
            window: int | None, outdir: Path, timeline: bool = False
            ) -> tuple[float, float | None]:
    """One checked run: (aggregate MiB/s, server CPU seconds per GiB sent)."""
    if not server.alive():
        raise RuntimeError(f"{server.name} died (rc {server.proc.returncode})")
    cpu0 = server.cpu_seconds()
    mibs = atftp_run(server, name, size, digest, clients, window, outdir, timeline)
    cpu1 = server.cpu_seconds()
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (clients * size / MIB / 1024)
    cpu_txt = "n/a" if cpu is None else f"{cpu:5.2f} s/GiB"
    log(f"  {server.name:<10} clients={clients:<3} window={window or '-':<3} "
        f"{mibs:8.2f} MiB/s, server CPU {cpu_txt} (sha256 ok x{clients})")
    return mibs, cpu


# ---------------------------------------------------- 1,000 sessions (asyncio)

class Session(asyncio.DatagramProtocol):
    """One RRQ held after its OACK until released, then run to the end."""

    def __init__(self, swarm: Swarm):
        self.swarm = swarm
        self.transport = None
        self.tid = None  # the server's transfer address
        self.opened = False  # got the OACK (the server holds a session for us)
        self.done = False
        self.error: str | None = None
        self.expect = 1
        self.blocks = 0
        self.size = 0
        self.sha = hashlib.sha256()
        self.last: bytes = b""
        self.last_at = time.monotonic()
        self.retries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send(rrq(self.swarm.name, blksize=BLKSIZE, tsize=0), (HOST, self.swarm.port))

    def send(self, pkt: bytes, addr) -> None:
        self.last, self.last_at, self.retries = pkt, time.monotonic(), 0
        self.transport.sendto(pkt, addr)

    def ack(self, block: int) -> None:
        self.send(struct.pack("!HH", 4, block % 65536), self.tid)

    def fail(self, why: str) -> None:
        if not self.done and self.error is None:
            self.error = why
            self.transport.close()

    def release(self) -> None:
        if self.opened and self.error is None:
            self.ack(0)

    def datagram_received(self, data: bytes, addr) -> None:
        if self.done or self.error or len(data) < 4:
            return
        if self.tid is None:
            self.tid = addr
        elif addr != self.tid:
            return
        self.last_at = time.monotonic()
        op, num = struct.unpack("!HH", data[:4])
        if op == 5:
            msg = data[4:].rstrip(b"\0").decode(errors="replace")
            self.fail(f"ERROR {num} {msg}")
        elif op == 6:
            if not self.opened:
                self.opened = True
                self.swarm.opened += 1
            elif self.swarm.released:
                self.ack(0)  # our ACK 0 was lost
        elif op == 3 and self.opened and self.swarm.released:
            if num == self.expect % 65536:
                payload = data[4:]
                self.sha.update(payload)
                self.size += len(payload)
                self.ack(num)
                self.expect += 1
                if len(payload) < BLKSIZE:
                    self.done = True
                    self.swarm.finished += 1
                    self.transport.close()
            elif num == (self.expect - 1) % 65536:
                self.ack(num)  # retransmitted DATA: our ACK was lost

    def error_received(self, exc) -> None:
        self.fail(f"socket error {exc}")

    def tick(self, now: float) -> None:
        """Retransmit our last packet after 2 s of silence; give up after 8."""
        if self.done or self.error or (self.opened and not self.swarm.released):
            return
        if now - self.last_at > 2.0:
            if self.retries >= 8:
                self.fail("timed out")
                return
            self.retries += 1
            self.last_at = now
            self.transport.sendto(self.last, self.tid or (HOST, self.swarm.port))


class Swarm:
    def __init__(self, port: int, name: str):
        self.port, self.name = port, name
        self.opened = self.finished = 0
        self.released = False


async def swarm_run(server: Server, name: str, size: int, digest: str, n: int,
                    open_timeout: float = 15.0, timeout: float = 300.0) -> dict:
    loop = asyncio.get_running_loop()
    swarm = Swarm(server.port, name)
    sessions: list[Session] = []
    t0 = time.perf_counter()
    for _ in range(n):
        _, proto = await loop.create_datagram_endpoint(
            lambda: Session(swarm), local_addr=(HOST, 0), family=socket.AF_INET)
        sessions.append(proto)

    def settled(s: Session) -> bool:
        return s.opened or s.error is not None

    end = time.monotonic() + open_timeout
    while time.monotonic() < end and not all(settled(s) for s in sessions):
        now = time.monotonic()
        for s in sessions:
            s.tick(now)
        await asyncio.sleep(0.05)
    t_open = time.perf_counter() - t0
    held = sum(1 for s in sessions if s.opened and s.error is None)
    status = await loop.run_in_executor(None, server.status)
    log(f"  {held}/{n} sessions open at once after {t_open:.2f} s; server says: {status}")

    swarm.released = True
    t1 = time.perf_counter()
    for s in sessions:
        s.release()
    end = time.monotonic() + timeout
    while time.monotonic() < end and not all(s.done or s.error for s in sessions):
        now = time.monotonic()
        for s in sessions:
            s.tick(now)
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t1
    for s in sessions:
        if not (s.done or s.error):
            s.fail("not finished before the deadline")
    ok = sum(1 for s in sessions if s.done and s.size == size and s.sha.hexdigest() == digest)
    errors: dict[str, int] = {}
    for s in sessions:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
        elif s.done and (s.size != size or s.sha.hexdigest() != digest):
            errors["size/sha256 mismatch"] = errors.get("size/sha256 mismatch", 0) + 1
    return {"sessions": n, "held_open_at_once": held, "open_seconds": round(t_open, 3),
            "server_status_while_held": status, "completed_sha_ok": ok,
            "errors": errors, "transfer_seconds": round(elapsed, 3),
            "aggregate_mibs": round(ok * size / MIB / elapsed, 2) if elapsed else 0.0}


# ----------------------------------------------------------------- the report

def facts() -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                      re.MULTILINE)
        cpu = m.group(1) if m else "?"

    def out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10, cwd=REPO)
            return (r.stdout or r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "python": platform.python_version(),
        "dnsmasq": out(["dnsmasq", "--version"]).splitlines()[0],
        "tftpd-hpa": out(["/usr/sbin/in.tftpd", "-V"]).splitlines()[0],
        "atftp": out(["atftp", "--version"]).splitlines()[0],
        "git_head": out(["git", "rev-parse", "--short", "HEAD"]),
        "engine_diff": out(["git", "diff", "--stat", "HEAD", "--", "appliance/servers/"])
        or "(clean: HEAD)",
        "engine_untracked": out(["git", "ls-files", "--others", "--exclude-standard",
                                 "appliance/servers/"]),
        "engine_sha256": engine_fingerprint(),
    }


def engine_fingerprint() -> str:
    """sha256 over appliance/servers/tftp*.py as they are on disk now (names and
    contents), to tell which engine state a run measured."""
    h = hashlib.sha256()
    for p in sorted((REPO / "appliance" / "servers").glob("tftp*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(res: dict, args, info: dict) -> bool:
    med = {k: statistics.median(v) for k, v in res["runs"].items() if v}
    rows = []
    lines = [("| scenario | server | MiB/s (median) | runs MiB/s | vs tftpd-hpa | vs dnsmasq "
              "| server CPU s/GiB |"),
             "|---|---|---:|---|---:|---:|---:|"]
    labels = {"single": f"1 stream, blksize {BLKSIZE}, lockstep",
              "window": f"1 stream, blksize {BLKSIZE}, windowsize {WINDOW}",
              "c20": "20 clients, aggregate", "c100": "100 clients, aggregate"}
    for scen, label in labels.items():
        for srv in res["servers"]:
            key = f"{scen}/{srv}"
            if key not in med:
                continue
            note = ""
            if scen == "window":
                granted = res["oack"].get(srv, {}).get("windowsize")
                note = f" (granted {granted})" if granted else " (not granted: lockstep)"
            ref_h = med.get(f"{scen}/tftpd-hpa")
            ref_d = med.get(f"{scen}/dnsmasq")
            runs = "/".join(f"{x:.1f}" for x in res["runs"][key])
            cpus = [c for c in res["cpu"][key] if c is not None]
            cpu = f"{statistics.median(cpus):.2f}" if cpus else "n/a"
            lines.append(f"| {label} | {srv}{note} | {med[key]:.1f} | {runs} | "
                         f"{ratio(med[key], ref_h)} | {ratio(med[key], ref_d)} | {cpu} |")
    sw = res.get("swarm")
    if sw:
        lines.append(f"| {sw['sessions']:,} sessions x {res['small_kib']} KiB | plowshare | "
                     f"{sw['aggregate_mibs']:.1f} | 1 | - | - | - |")

    def bar(desc: str, a: str, b: str, need: float) -> None:
        if a not in med or b not in med:
            rows.append((desc, "-", "-", f">= {need:.2f}", "NOT RUN"))
            return
        r = med[a] / med[b]
        paired = "/".join(f"{x / y:.2f}" for x, y in zip(res["runs"][a], res["runs"][b]))
        rows.append((desc, f"{r:.3f}", paired, f">= {need:.2f}",
                     "PASS" if r >= need else "FAIL"))

    bar("1 stream lockstep: plowshare / tftpd-hpa", "single/plowshare", "single/tftpd-hpa", 1.0)
    bar(f"1 stream windowsize {WINDOW}: plowshare / tftpd-hpa lockstep",
        "window/plowshare", "single/tftpd-hpa", 2.0)
    bar("20 clients: plowshare / dnsmasq", "c20/plowshare", "c20/dnsmasq", 1.0)
    bar("100 clients / 20 clients (plowshare)", "c100/plowshare", "c20/plowshare", 0.90)
    if f"c20/{PURE}" in med:  # context: what the C pump is worth
        for scen in ("single", "window", "c20", "c100"):
            a, b = f"{scen}/plowshare", f"{scen}/{PURE}"
            if a in med and b in med:
                paired = "/".join(f"{x / y:.2f}" for x, y in zip(res["runs"][a],
                                                                   res["runs"][b]))
                rows.append((f"(context) {scen}: plowshare / {PURE}",
                             f"{med[a] / med[b]:.3f}", paired, "-", "info"))
    for ref in ("tftpd-hpa", "dnsmasq", PURE):  # context for that bar, with --c100-all
        a, b = f"c100/{ref}", f"c20/{ref}"
        if a in med and b in med:
            paired = "/".join(f"{x / y:.2f}" for x, y in zip(res["runs"][a], res["runs"][b]))
            rows.append((f"(context) 100 clients / 20 clients ({ref})",
                         f"{med[a] / med[b]:.3f}", paired, "-", "info"))
    if sw:
        good = (sw["completed_sha_ok"] == sw["sessions"] == sw["held_open_at_once"]
                and res["alive_after"])
        rows.append((f"{sw['sessions']:,} sessions open at once, all complete, server alive",
                     (f"{sw['held_open_at_once']} held, {sw['completed_sha_ok']} ok, "
                      f"alive={res['alive_after']}"), "-", "all", "PASS" if good else "FAIL"))
    else:
        rows.append(("1,000 sessions", "-", "-", "all", "NOT RUN"))
    lines += ["", "| bar | measured (ratio of medians) | per round | needed | result |",
              "|---|---:|---|---:|---|"]
    lines += [f"| {d} | {m} | {p} | {n} | {r} |" for d, m, p, n, r in rows]

    head = [(f"TFTP bench: file {res['size_mib']} MiB, median of {args.stream_reps} runs "
             f"(1 stream) / {args.reps} runs (concurrent), servers taken in turn; "
             f"machine: {info['nproc']} x {info['cpu']}, kernel {info['kernel']}, "
             f"Python {info['python']}; load average at start/end "
             f"{res['load'][0][0]:.1f}/{res['load'][-1][0]:.1f}"),
            f"servers: {info['dnsmasq']}; {info['tftpd-hpa']}; client {info['atftp']}",
            f"engine: git {info['git_head']}, tftp*.py sha256 {info['engine_sha256']}; "
            "git diff --stat HEAD -- appliance/servers/: "
            + info["engine_diff"].replace("\n", "; ")
            + "; untracked: " + (info["engine_untracked"].replace("\n", " ") or "none"),
            "windowsize granted: " + ", ".join(
                f"{s}={res['oack'].get(s, {}).get('windowsize', 'no')}" for s in res["servers"]
                if s in res["oack"])]
    if sw:
        head.append(f"{sw['sessions']:,} sessions: {json.dumps(sw)}")
    print("\n".join(head + [""] + lines), flush=True)
    return all(r[-1] in ("PASS", "info") for r in rows)


# --------------------------------------------------------------- inner process

def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    path.chmod(0o644)
    return h.hexdigest()


def inner(args) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    if [ln.split(":")[1].strip() for ln in links.splitlines()] != ["lo"]:
        raise RuntimeError(f"namespace is not loopback-only:\n{links}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    info = facts()
    log(f"engine state: {info['engine_diff']}")
    scen = set(args.scenarios.split(","))
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="tftp-bench-", dir=base))
    servers: dict[str, Server] = {}
    every = SERVERS + ((PURE,) if args.with_pure_python else ())
    plowshares = ("plowshare",) + ((PURE,) if args.with_pure_python else ())
    res: dict = {"runs": {}, "cpu": {}, "oack": {}, "load": [os.getloadavg()],
                 "servers": every, "size_mib": args.size_mib,
                 "small_kib": args.small_kib, "alive_after": None}
    try:
        work.chmod(0o755)
        root = work / "root"
        outdir = work / "out"
        root.mkdir(mode=0o755)
        outdir.mkdir()
        root.chmod(0o755)
        size, small = args.size_mib * MIB, args.small_kib * 1024
        digest = make_file(root / "big.bin", size)
        small_digest = make_file(root / "small.bin", small)
        log(f"root {root}: big.bin {args.size_mib} MiB sha256 {digest[:16]}..., "
            f"small.bin {args.small_kib} KiB")
        for name in every:
            servers[name] = start_server(name, root, work, "small.bin")
            res["oack"][name] = servers[name].oack
        for name in every:  # warm-up, checked, not counted
            atftp_run(servers[name], "small.bin", small, small_digest, 1, None, outdir)

        # Rounds: each round runs every (scenario, server) of its group once, in
        # turn, so load from elsewhere on the machine falls on all of them alike
        # and the ratios of one round are paired.
        groups = [(args.stream_reps, [("single", 1, None, every),
                                      ("window", 1, WINDOW, every)]),
                  (args.reps, [("c20", 20, None, every),
                               ("c100", 100, None, every if args.c100_all else plowshares)])]
        for reps, plan in groups:
            plan = [p for p in plan if p[0] in scen]
            for i in range(reps if plan else 0):
                log(f"round {i + 1}/{reps} of {', '.join(p[0] for p in plan)}; "
                    f"load average {os.getloadavg()[0]:.1f}")
                for key, clients, window, who in plan:
                    for name in who:
                        mibs, cpu = measure(servers[name], "big.bin", size, digest, clients,
                                            window, outdir, args.timeline)
                        res["runs"].setdefault(f"{key}/{name}", []).append(mibs)
                        res["cpu"].setdefault(f"{key}/{name}", []).append(cpu)

        if "s1000" in scen:
            log(f"scenario s1000: {args.sessions} sessions x {args.small_kib} KiB on plowshare")
            res["swarm"] = asyncio.run(swarm_run(servers["plowshare"], "small.bin", small,
                                                 small_digest, args.sessions))
            log(f"  {res['swarm']}")
            time.sleep(0.5)
            alive = servers["plowshare"].alive()
            if alive:  # and still serving
                atftp_run(servers["plowshare"], "small.bin", small, small_digest, 1, None,
                          outdir)
            status = servers["plowshare"].status()
            res["alive_after"] = alive and status is not None and "alive=1" in status
            log(f"  after: process alive={alive}, status {status}")

        for name, srv in servers.items():
            if not srv.alive():
                log(f"WARNING: {name} exited with {srv.proc.returncode} during the bench")
        res["load"].append(os.getloadavg())
        ok = report(res, args, info)
        if args.json:
            Path(args.json).write_text(json.dumps({"facts": info, **res}, indent=2))
        return 0 if ok else 1
    finally:
        for srv in servers.values():
            srv.stop()
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for log_file in work.glob("*.stderr"):
                shutil.copy(log_file, keep / log_file.name)
            with contextlib.suppress(OSError):
                shutil.copy(work / "dnsmasq.log", keep / "dnsmasq.log")
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="8 MiB file, 1 run, 256 KiB x 1,000 sessions (harness check)")
    ap.add_argument("--size-mib", type=int, default=None, help="big file size (default 50)")
    ap.add_argument("--small-kib", type=int, default=None,
                    help="file size for the 1,000-session scenario (default 1024)")
    ap.add_argument("--reps", type=int, default=None,
                    help="runs per concurrent measurement (default 3)")
    ap.add_argument("--stream-reps", type=int, default=None,
                    help="runs per single-stream measurement (default 5: ~1 s each, noisy)")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--c100-all", action="store_true",
                    help="run 100 clients on tftpd-hpa and dnsmasq too (context; +~8 min)")
    ap.add_argument("--scenarios", default="single,window,c20,c100,s1000",
                    help="comma list of single,window,c20,c100,s1000")
    ap.add_argument("--timeline", action="store_true",
                    help="log aggregate MiB/s, clients running and CPU idle every 0.5 s")
    ap.add_argument("--with-pure-python", action="store_true",
                    help="also run Plowshare without its C pump (server 'plowshare-py')")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--keep-logs", metavar="DIR",
                    help="copy the servers' stderr (and dnsmasq's log) to DIR at the end")
    args = ap.parse_args()
    args.size_mib = args.size_mib or (8 if args.quick else 50)
    args.small_kib = args.small_kib or (256 if args.quick else 1024)
    args.reps = args.reps or (1 if args.quick else 3)
    args.stream_reps = args.stream_reps or (1 if args.quick else max(5, args.reps))
    if os.environ.get(NS_ENV) != "1":
        preflight()
        return run_in_namespace(sys.argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return inner(args)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    except RuntimeError as exc:  # a server failed to start, a transfer failed or hung
        log(f"FAILED: {exc}")
        return 3


if __name__ == "__main__":
    sys.exit(main())
