"""Parse time of a generated ~10 MB dhcpd.conf (hosts in groups in subnets).

Usage: .venv/bin/python bench/dhcpd_parse.py [--mb 10] [--repeat 3]
Prints the size, host count and the best wall time of the runs; the goal
(issue #6) is well under 5 s for 10 MB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HOST = """    host node-{n} {{
        hardware ethernet 52:54:{a:02x}:{b:02x}:{c:02x}:{d:02x};
        fixed-address 10.{a}.{b}.{e};
        option host-name "node-{n}.example.org";
        if exists user-class and option user-class = "iPXE" {{
            filename "http://10.{a}.0.2/boot/node-{n}.ipxe";
        }} else {{
            filename "undionly.kpxe";
        }}
    }}
"""


def generate(target_bytes: int) -> tuple[str, int]:
    parts, size, n = ["option system-arch code 93 = unsigned integer 16;\n"], 0, 0
    while size < target_bytes:
        a, b = divmod(n // 200, 250)
        subnet = [(f"subnet 10.{a}.{b}.0 netmask 255.255.255.0 {{\n"
                  f"  option routers 10.{a}.{b}.1;\n  range 10.{a}.{b}.201 10.{a}.{b}.250;\n"
                  "  group {\n    next-server 10.0.0.2;\n")]
        for i in range(200):
            c, d = divmod(n, 256)
            subnet.append(HOST.format(n=n, a=a % 256, b=b, c=c % 256, d=d, e=i + 1))
            n += 1
        subnet.append("  }\n}\n")
        chunk = "".join(subnet)
        parts.append(chunk)
        size += len(chunk)
    return "".join(parts), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))  # this checkout's appliance, not an installed one
    from appliance.dhcpd_conf import iter_hosts, parse

    text, hosts = generate(int(args.mb * 1024 * 1024))
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        config = parse(text, "bench.conf")
        best = min(best, time.perf_counter() - start)
    found = sum(1 for _ in iter_hosts(config))
    assert found == hosts, (found, hosts)
    print(f"dhcpd_parse: {len(text) / 1e6:.1f} MB, {hosts} hosts, "
          f"best of {args.repeat}: {best:.2f} s ({len(text) / 1e6 / best:.1f} MB/s)")


if __name__ == "__main__":
    main()
