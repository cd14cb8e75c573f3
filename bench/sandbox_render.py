"""Round-trip cost of RenderSandbox against in-process Jinja2 (the reference).

Run on demand:  .venv/bin/python bench/sandbox_render.py [--n 5000]

Reports, on this machine, in this run:
* render_string (a kernel command line, as per DHCP/HTTP request): p50/p99/max
  through the sandbox vs an in-process SandboxedEnvironment with a cached
  template;
* the same from 8 threads at once (throughput with the default 2 workers);
* render of kickstarts/default.ks.j2 with its snippets (sources sent every call);
* start() and the cost of replacing a killed worker (next render after SIGKILL).
Goal: render_string p99 well under 5 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appliance.sandbox import Limits, RenderSandbox, TemplateError

CMDLINE = "console=ttyS0 ks={{ ks_url }} inst.ks.sendmac hostname={{ host.name }} ip=dhcp"
CONTEXT = {"host": {"mac": "52:54:00:00:00:01", "name": "n1", "ip": "10.0.0.5"},
           "ks_url": "http://10.0.0.1/ks/abcdef0123456789", "done_url": "http://10.0.0.1/done/x",
           "appliance": {"address": "10.0.0.1", "base_url": "http://10.0.0.1"},
           "profile": "p", "distro": "rocky9"}


def stats(label: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{label:<44} n={len(ms):<6} p50={statistics.median(ms):7.3f} ms  "
          f"p99={p99:7.3f} ms  max={ms[-1]:7.3f} ms")


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def kickstart_sources() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1] / "kickstarts"
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.j2")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True)
    cached = env.from_string(CMDLINE)
    stats("in-process render_string (cached)", timed(lambda: cached.render(CONTEXT), n))
    t = time.perf_counter()
    sb = RenderSandbox(Limits()).start()
    print(f"start() with {sb.limits.workers} workers: {(time.perf_counter() - t) * 1000:.1f} ms")
    try:
        sb.render_string(CMDLINE, CONTEXT)
        stats("sandbox render_string", timed(lambda: sb.render_string(CMDLINE, CONTEXT), n))
        with ThreadPoolExecutor(8) as pool:
            t = time.perf_counter()
            lat = list(pool.map(lambda _: timed(lambda: sb.render_string(CMDLINE, CONTEXT), 1)[0],
                                range(n)))
            wall = time.perf_counter() - t
        stats("sandbox render_string, 8 threads", lat)
        print(f"{'':<44} throughput {n / wall:,.0f} renders/s")
        sources = kickstart_sources()
        if "default.ks.j2" in sources:
            size = sum(map(len, sources.values()))
            try:
                sb.render("default.ks.j2", sources, CONTEXT)
                stats(f"sandbox render default.ks.j2 ({len(sources)} files, {size} B)",
                      timed(lambda: sb.render("default.ks.j2", sources, CONTEXT), 500))
            except TemplateError as exc:
                print(f"default.ks.j2 does not render with the bench context: {exc}")
        replace = []
        for _ in range(20):
            for pid in sb.worker_pids():
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            replace += timed(lambda: sb.render_string(CMDLINE, CONTEXT), 1)
        stats("first render after both workers SIGKILLed", replace)
        timeouts = []
        for _ in range(3):
            t = time.perf_counter()
            try:
                sb.render_string("{% for a in range(10000) %}{% for b in range(10000) %}"
                                 "{% endfor %}{% endfor %}", {})
            except TemplateError:
                timeouts.append(time.perf_counter() - t)
        stats(f"runaway render -> TemplateError (limit {sb.limits.seconds} s)", timeouts)
    finally:
        sb.stop()


if __name__ == "__main__":
    main()
