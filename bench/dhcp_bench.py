"""DHCP throughput: perfdhcp against Plowshare, Kea and dnsmasq in one run.

Usage (root; Debian packages kea-admin, kea-dhcp4-server, dnsmasq-base)::

    .venv/bin/python bench/dhcp_bench.py [--rates 500,1000,2000] [--period 10]
        [--servers plowshare,kea,dnsmasq] [--out results.json]

Layout: two network namespaces joined by one veth (``10.77.0.1/16`` server
side, ``10.77.0.2/16`` perfdhcp side), pool ``10.77.1.0-10.77.255.254``.
Every (server, rate) point starts the server on fresh state and runs
``perfdhcp -4 -l IFACE -r RATE -p PERIOD -R CLIENTS``; a point passes when
both DISCOVER-OFFER and REQUEST-ACK drop < 1 %.  A server's ladder stops
after ``--patience`` consecutive failed points.  The score of a server is
the highest 4-way exchange rate perfdhcp measured at a passing point.  Each
point also records the server process's CPU time per exchange (from
/proc, every thread) -- steadier than the rate on a shared machine.

Durability of each server, as configured here: Plowshare commits every lease
in SQLite (WAL, ``synchronous=FULL``) before the ACK leaves, batched by group
commit; Kea uses its memfile backend with ``persist: true`` (CSV appended per
lease); dnsmasq rewrites its lease file.

Then the avalanche: ``perfdhcp --scenario avalanche -R 500 -u``; passes when
all 500 clients are leased within 5 s and no address is held by two MACs
(perfdhcp's uniqueness check plus, for Plowshare, a read of the store).

``serve`` is the internal sub-command that runs Plowshare's DhcpServer alone
inside the server namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NS_SRV, NS_CLI = "pbench-srv", "pbench-cli"
IF_SRV, IF_CLI = "pbench0", "pbench1"
SERVER_IP, CLIENT_IP, PREFIX = "10.77.0.1", "10.77.0.2", 16
POOL = ("10.77.1.0", "10.77.255.254")
DROP_LIMIT = 1.0  # percent
AVALANCHE_CLIENTS, AVALANCHE_LIMIT = 500, 5.0
READY_WAIT = 20.0


def sh(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    res = subprocess.run(cmd, check=False, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res


def ns(name: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *cmd]


def lab_up() -> None:
    lab_down()
    sh(["ip", "netns", "add", NS_SRV])
    sh(["ip", "netns", "add", NS_CLI])
    sh(["ip", "link", "add", IF_SRV, "netns", NS_SRV, "type", "veth",
        "peer", "name", IF_CLI, "netns", NS_CLI])
    for name, iface, ip in ((NS_SRV, IF_SRV, SERVER_IP), (NS_CLI, IF_CLI, CLIENT_IP)):
        sh(["ip", "-n", name, "addr", "add", f"{ip}/{PREFIX}", "dev", iface])
        sh(["ip", "-n", name, "link", "set", iface, "up"])
        sh(["ip", "-n", name, "link", "set", "lo", "up"])


def lab_down() -> None:
    for name in (NS_SRV, NS_CLI):
        sh(["ip", "netns", "delete", name], check=False)


# -- servers under test --------------------------------------------------------
class Server:
    name = "?"

    def __init__(self, state: Path):
        self.state = state
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.state / "server.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(ns(NS_SRV, self.command()), stdout=log,
                                     stderr=subprocess.STDOUT, cwd=REPO)
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready: {self.log()[-2000:]}")

    def ready(self) -> bool:
        out = sh(ns(NS_SRV, ["ss", "-lunp"]), check=False).stdout
        return ":67 " in out

    def log(self) -> str:
        path = self.state / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cpu_seconds(self) -> float | None:
        """User + system CPU the server process used so far (``ip netns exec`` execs it)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def leases(self) -> list[tuple[str, str]] | None:
        """(ip, mac) of every bound lease, when the server's store can be read."""
        return None


class Plowshare(Server):
    name = "plowshare"

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "serve", "--state",
                str(self.state)]

    def ready(self) -> bool:
        return "listening on" in self.log()

    def probes(self) -> int | None:
        """ICMP echo requests the ping check sent during the run (None: check off)."""
        m = re.search(r"ping check probes sent: (\d+)", self.log())
        return int(m.group(1)) if m else None

    def shed(self) -> int | None:
        """DISCOVERs the server shed because its loop was behind (dhcp_triage)."""
        m = re.search(r"DISCOVERs shed: (\d+)", self.log())
        return int(m.group(1)) if m else None

    def leases(self):
        db = sqlite3.connect(self.state / "plowshare.db")
        try:
            return db.execute("SELECT ip, mac FROM leases WHERE state='bound'").fetchall()
        finally:
            db.close()


class Kea(Server):
    name = "kea"

    def command(self) -> list[str]:
        conf = {"Dhcp4": {
            "interfaces-config": {"interfaces": [IF_SRV], "dhcp-socket-type": "raw"},
            "lease-database": {"type": "memfile", "persist": True, "lfc-interval": 0,
                               "name": str(self.state / "leases4.csv")},
            "valid-lifetime": 3600,
            "subnet4": [{"subnet": f"10.77.0.0/{PREFIX}",
                         "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}]}],
            "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                         "output_options": [{"output": "stdout"}]}]}}
        path = self.state / "kea-dhcp4.json"
        path.write_text(json.dumps(conf))
        os.makedirs("/run/kea", exist_ok=True)
        return ["kea-dhcp4", "-c", str(path)]

    def leases(self):
        rows: dict[str, str] = {}
        path = self.state / "leases4.csv"
        for line in path.read_text().splitlines()[1:]:
            f = line.split(",")
            rows[f[0]] = f[1]  # later lines replace earlier ones for an address
        return list(rows.items())


class Dnsmasq(Server):
    name = "dnsmasq"

    def command(self) -> list[str]:
        return ["dnsmasq", "--keep-in-foreground", "--port=0", f"--interface={IF_SRV}",
                "--bind-interfaces", "--no-ping", "--quiet-dhcp", "--dhcp-authoritative",
                f"--dhcp-range={POOL[0]},{POOL[1]},1h", "--dhcp-lease-max=70000",
                f"--dhcp-leasefile={self.state / 'dnsmasq.leases'}",
                f"--pid-file={self.state / 'dnsmasq.pid'}", "--conf-file=/dev/null"]

    def leases(self):
        path = self.state / "dnsmasq.leases"
        return [(f[2], f[1]) for f in (line.split() for line in path.read_text().splitlines())]


SERVERS = {"plowshare": Plowshare, "kea": Kea, "dnsmasq": Dnsmasq}


# -- perfdhcp -----------------------------------------------------------------------
def perfdhcp(args: list[str], timeout: float) -> dict:
    cmd = ["perfdhcp", "-4", "-l", IF_CLI, *args]
    t0 = time.monotonic()
    res = sh(ns(NS_CLI, cmd), check=False, timeout=timeout)
    out = res.stdout + res.stderr
    stats: dict = {"wall": time.monotonic() - t0, "cmd": " ".join(cmd)}
    m = re.search(r"Rate: ([\d.]+) 4-way exchanges/second", out)
    stats["rate"] = float(m.group(1)) if m else 0.0
    for section, key in (("DISCOVER-OFFER", "do"), ("REQUEST-ACK", "ra")):
        part = out.split(f"Statistics for: {section}")[-1] if section in out else ""
        for field in ("sent packets", "received packets", "drops", "non unique addresses"):
            m = re.search(rf"{field}: (\d+)", part)
            stats[f"{key}_{field.replace(' ', '_')}"] = int(m.group(1)) if m else None
    for key in ("do", "ra"):
        sent, got = stats[f"{key}_sent_packets"], stats[f"{key}_received_packets"]
        stats[f"{key}_drop_pct"] = 100.0 * (sent - got) / sent if sent else 100.0
    return stats


def run_point(kind: type[Server], rate: int, period: int, root: Path) -> dict:
    server = kind(root / f"{kind.name}-{rate}")
    server.start()
    try:
        clients = min(60_000, max(1000, rate * period))
        cpu0 = server.cpu_seconds()
        stats = perfdhcp(["-r", str(rate), "-p", str(period), "-R", str(clients)],
                         timeout=period + 60)
        cpu1 = server.cpu_seconds()
    finally:
        server.stop()
    acks = stats["ra_received_packets"] or 0
    stats["cpu_us_per_exchange"] = (1e6 * (cpu1 - cpu0) / acks
                                    if acks and cpu0 is not None and cpu1 is not None else None)
    stats["ping_probes"] = server.probes() if isinstance(server, Plowshare) else None
    stats["shed"] = server.shed() if isinstance(server, Plowshare) else None
    stats.update(server=kind.name, target=rate, clients=clients,
                 passed=stats["do_drop_pct"] < DROP_LIMIT and stats["ra_drop_pct"] < DROP_LIMIT)
    print(f"{kind.name:9} rate {rate:5}: {stats['rate']:8.1f} ex/s  drops DO "
          f"{stats['do_drop_pct']:.2f}% RA {stats['ra_drop_pct']:.2f}%"
          + (f"  CPU {stats['cpu_us_per_exchange']:.0f} us/exchange"
             if stats["cpu_us_per_exchange"] else "")
          + (f"  ping probes {stats['ping_probes']}" if stats["ping_probes"] is not None
             else "")
          + (f"  shed {stats['shed']}" if stats["shed"] is not None else ""), flush=True)
    return stats


def run_avalanche(kind: type[Server], root: Path) -> dict:
    server = kind(root / f"{kind.name}-avalanche")
    server.start()
    try:
        stats = perfdhcp(["--scenario", "avalanche", "-R", str(AVALANCHE_CLIENTS), "-u"],
                         timeout=120)
        time.sleep(0.5)
        leases = server.leases()
    finally:
        server.stop()
    by_ip: dict[str, set] = {}
    for ip, mac in leases or []:
        by_ip.setdefault(ip, set()).add(mac)
    stats.update(server=kind.name, store_leases=len(leases) if leases is not None else None,
                 store_duplicates=sum(len(m) > 1 for m in by_ip.values()))
    stats["passed"] = (stats["ra_received_packets"] or 0) >= AVALANCHE_CLIENTS \
        and stats["wall"] <= AVALANCHE_LIMIT and not stats["ra_non_unique_addresses"] \
        and not stats["store_duplicates"]
    print(f"{kind.name:9} avalanche {AVALANCHE_CLIENTS}: {stats['wall']:.2f} s, "
          f"ACKs {stats['ra_received_packets']}, non-unique {stats['ra_non_unique_addresses']}, "
          f"store leases {stats['store_leases']}", flush=True)
    return stats


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def machine_facts() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    versions = {}
    for name, cmd in (("perfdhcp", ["perfdhcp", "-v"]), ("kea", ["kea-dhcp4", "-v"]),
                      ("dnsmasq", ["dnsmasq", "-v"])):
        if shutil.which(cmd[0]):
            versions[name] = sh(cmd, check=False).stdout.splitlines()[0].strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "loadavg_at_start": loadavg(),
            "python": platform.python_version(), **versions}


def bench(args) -> None:
    kinds = [SERVERS[s] for s in args.servers.split(",")]
    rates = [int(r) for r in args.rates.split(",")]
    results = {"machine": machine_facts(), "period": args.period, "points": [],
               "avalanche": []}
    lab_up()
    try:
        with tempfile.TemporaryDirectory(prefix="dhcp-bench-") as tmp:
            for kind in kinds:
                failures = 0
                for rate in rates:
                    point = run_point(kind, rate, args.period, Path(tmp))
                    results["points"].append(point)
                    failures = 0 if point["passed"] else failures + 1
                    if failures >= args.patience:
                        break  # higher rates would fail too
                if not args.no_avalanche:
                    results["avalanche"].append(run_avalanche(kind, Path(tmp)))
    finally:
        lab_down()
    results["machine"]["loadavg_at_end"] = loadavg()
    summarise(results)
    print(f"load average at start {' '.join(results['machine']['loadavg_at_start'])}, "
          f"at end {' '.join(results['machine']['loadavg_at_end'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def summarise(results: dict) -> None:
    best = {}
    for p in results["points"]:
        if p["passed"]:
            best[p["server"]] = max(best.get(p["server"], 0.0), p["rate"])
    print("\nbest 4-way exchanges/s at < 1 % drops:")
    for name, rate in best.items():
        ratios = "  ".join(f"x{rate / best[o]:.2f} vs {o}" for o in best if o != name
                           and best[o])
        print(f"  {name:9} {rate:8.1f}  {ratios}")
    results["best"] = best


def report(paths: list[str]) -> None:
    """Markdown tables (points, best rates with ratios, avalanche) of results files."""
    for path in paths:
        res = json.loads(Path(path).read_text())
        m = res["machine"]
        print(f"\n### {Path(path).name}: load average {' / '.join(m['loadavg_at_start'])} "
              f"at the start, {' / '.join(m.get('loadavg_at_end', ['?']))} at the end\n")
        print("| server | target /s | perfdhcp ex/s | DO drops | RA drops | CPU us/exchange "
              "| pass |\n|---|---:|---:|---:|---:|---:|---|")
        for p in res["points"]:
            cpu = p.get("cpu_us_per_exchange")
            print(f"| {p['server']} | {p['target']} | {p['rate']:.1f} | {p['do_drop_pct']:.2f} % "
                  f"| {p['ra_drop_pct']:.2f} % | {f'{cpu:.0f}' if cpu else '-'} "
                  f"| {'yes' if p['passed'] else 'no'} |")
        best = res.get("best", {})
        print("\n| server | best ex/s | ratio to Kea | ratio to dnsmasq |\n|---|---:|---:|---:|")
        for name, rate in best.items():
            ratios = [f"{rate / best[o]:.2f}" if best.get(o) else "-" for o in ("kea", "dnsmasq")]
            print(f"| {name} | {rate:.1f} | {ratios[0]} | {ratios[1]} |")
        print("\n| server | wall | ACKs | non-unique | store leases | store duplicates | pass |"
              "\n|---|---:|---:|---:|---:|---:|---|")
        for a in res["avalanche"]:
            print(f"| {a['server']} | {a['wall']:.2f} s | {a['ra_received_packets']} "
                  f"| {a['ra_non_unique_addresses']} | {a['store_leases']} "
                  f"| {a['store_duplicates']} | {'yes' if a['passed'] else 'no'} |")


# -- the Plowshare side -------------------------------------------------------------
def serve(args) -> None:
    """Plowshare's DhcpServer alone, as the appliance composes it."""
    import dataclasses
    import logging

    sys.path.insert(0, str(REPO))
    from appliance.config import load_config
    from appliance.events import EventLog
    from appliance.kickstart import Renderer
    from appliance.leases import Allocator
    from appliance.policy import BootPolicy
    from appliance.sandbox_inline import InlineSandbox
    from appliance.servers.conflict import ConflictGuard
    from appliance.servers.dhcp import DhcpContext, DhcpServer
    from appliance.servers.icmp_probe import IcmpProber
    from appliance.servers.rogue import RogueDetector
    from appliance.store import Store
    from appliance.templates import TemplateLibrary

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(None, address=SERVER_IP, pool=f"{POOL[0]}-{POOL[1]}",
                      interface=IF_SRV, state_dir=args.state)
    cfg = dataclasses.replace(cfg, dhcp=dataclasses.replace(cfg.dhcp, prefix=PREFIX))
    store = Store(cfg.db_path).open()
    renderer = Renderer(InlineSandbox(), TemplateLibrary(store, cfg.kickstarts_dir))
    ctx = DhcpContext(cfg, BootPolicy(store, cfg, renderer),
                      Allocator(store, cfg.dhcp, cfg.address), EventLog(store), IF_SRV)
    guard = None
    if cfg.dhcp.ping_check:  # on by default, as at a site: skipped under load by its gate
        guard = ConflictGuard(ctx.allocator, IcmpProber(IF_SRV))
    servers = [DhcpServer(ctx, guard=guard)]
    if cfg.dhcp.rogue_detect:  # on by default: a sniffer on the same interface
        servers.append(RogueDetector(IF_SRV, cfg.address, ctx.events,
                                     cfg.dhcp.rogue_probe_interval))
    for server in servers:
        server.start()
    print("listening on", IF_SRV, f"(ping check {'on' if guard else 'off'}, rogue detection "
          f"{'on' if cfg.dhcp.rogue_detect else 'off'})", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    for server in reversed(servers):
        server.stop()
    print(f"DISCOVERs shed: {servers[0].shed}", flush=True)
    if guard is not None:
        print(f"ping check probes sent: {guard.prober.probes_sent}", flush=True)
    store.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("report", help="markdown tables of results files")
    r.add_argument("files", nargs="+")
    s = sub.add_parser("serve")
    s.add_argument("--state", required=True)
    s.add_argument("--verbose", action="store_true")
    p.add_argument("--rates", default="250,500,1000,1500,2000,3000,4000")
    p.add_argument("--period", type=int, default=10)
    p.add_argument("--servers", default="plowshare,kea,dnsmasq")
    p.add_argument("--no-avalanche", action="store_true")
    p.add_argument("--patience", type=int, default=2,
                   help="consecutive failed points after which a server's ladder stops "
                        "(one failure can be a moment of load on a shared machine)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "report":
        report(args.files)
    else:
        bench(args)


if __name__ == "__main__":
    main()
