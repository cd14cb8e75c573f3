"""IPv6 Router Advertisements on the provisioning interface.

Why: Debian's iPXE (2019 builds) waits about 13 s during every DHCP for an
IPv6 Router Advertisement before it gives up on IPv6 autoconfiguration.  Any
RA on the link ends that wait, so Plowshare sends them: router lifetime 0
("not a default router", RFC 4861 section 4.2), no prefixes, M=0 and O=0 --
the RA configures nothing, it only tells clients there is nothing to wait for.

:func:`build_ra` is the pure encoder (unit-tested).  :class:`RouterAdvertiser`
is the thin socket loop: a raw ICMPv6 socket bound to the interface that sends
an unsolicited RA to all-nodes (ff02::1) right away and every ``interval``
seconds, and answers each valid Router Solicitation (RS, received through the
all-routers group ff02::2) with an immediate RA to all-nodes.

Deliberate deviations from the router rules of RFC 4861 section 6.2, which
protect links carrying real routes: the default interval (3 s) is below
MinRtrAdvInterval's floor, and an RS is answered at once instead of after a
random 0-0.5 s delay (MAX_RA_DELAY_TIME) and at most every 3 s
(MIN_DELAY_BETWEEN_RAS).  Ending a booting client's wait fast is the point,
and an RA with lifetime 0 and no options but the link-layer address cannot
change anyone's routing.  RS-triggered RAs are still rate-limited
(:data:`RS_REPLY_MIN_GAP`), so an RS flood cannot turn into an RA flood.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("plowshare.ra")

# ICMPv6 message types (RFC 4861 section 4.1, 4.2).
ICMPV6_ROUTER_SOLICITATION = 133
ICMPV6_ROUTER_ADVERTISEMENT = 134
# Neighbor Discovery option type "Source Link-Layer Address" (RFC 4861 section 4.6.1).
ND_OPT_SOURCE_LINK_ADDR = 1
# ND option lengths count units of 8 octets (RFC 4861 section 4.6).
ND_OPT_UNIT = 8
# Every ND message is sent with IP hop limit 255 and a receiver drops any other
# value, proving the packet was not forwarded (RFC 4861 sections 6.1.1, 6.1.2).
ND_HOP_LIMIT = 255
# "Cur Hop Limit" advertised to hosts: AdvCurHopLimit's default, the IANA
# default IP TTL (RFC 4861 section 6.2.1).
ADV_CUR_HOP_LIMIT = 64
# Router Lifetime 0: "not a default router" (RFC 4861 section 4.2).
ADV_ROUTER_LIFETIME = 0
# 0 = unspecified by this router (RFC 4861 section 4.2).
ADV_REACHABLE_TIME = 0
ADV_RETRANS_TIMER = 0
# Managed (M) and Other (O) flags off: no DHCPv6 either (RFC 4861 section 4.2).
ADV_FLAGS = 0x00
# Link-scope multicast groups (RFC 4291 section 2.7.1).
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
# RFC 4861 section 10 router constants, quoted for the deviations noted above.
MAX_RA_DELAY_TIME = 0.5
MIN_DELAY_BETWEEN_RAS = 3.0

# Linux's ICMPv6 type filter (<linux/icmpv6.h> ICMPV6_FILTER; the RFC 3542
# section 3.2 ICMP6_FILTER): 256 bits, a set bit blocks that type.
ICMP6_FILTER = 1
# Address flags and scope in /proc/net/if_inet6 (<linux/if_addr.h>, <net/ipv6.h>).
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IPV6_ADDR_SCOPE_LINK = 0x20

# Shortest gap between two RS-triggered RAs (see the module docstring).
RS_REPLY_MIN_GAP = 0.2
# When an RA could not be sent (no usable link-local address yet, interface
# down), try again this soon rather than after a whole interval.
RETRY_DELAY = 1.0

_RA_HEADER = struct.Struct("!BBHBBHII")  # type, code, checksum, hop limit, flags, lifetime, …


def build_ra(src_mac: bytes) -> bytes:
    """The ICMPv6 Router Advertisement (RFC 4861 section 4.2) Plowshare sends.

    Cur hop limit 64, M=0 O=0, router lifetime 0, reachable time and retrans
    timer 0 (unspecified), one Source Link-Layer Address option carrying
    ``src_mac`` (omitted when ``src_mac`` is empty: an interface without a
    link-layer address).  The checksum field is 0: a raw ICMPv6 socket has the
    kernel fill it in (Linux always does for IPPROTO_ICMPV6, RFC 3542 section 3.1).
    """
    if not isinstance(src_mac, (bytes, bytearray)):
        raise TypeError(f"src_mac must be bytes, not {type(src_mac).__name__}")
    body = _RA_HEADER.pack(
        ICMPV6_ROUTER_ADVERTISEMENT, 0, 0,
        ADV_CUR_HOP_LIMIT, ADV_FLAGS, ADV_ROUTER_LIFETIME,
        ADV_REACHABLE_TIME, ADV_RETRANS_TIMER,
    )
    if not src_mac:
        return body
    units = -(-(2 + len(src_mac)) // ND_OPT_UNIT)  # round up to whole 8-octet units
    if units > 255:
        raise ValueError(f"link-layer address of {len(src_mac)} bytes is too long")
    option = bytes((ND_OPT_SOURCE_LINK_ADDR, units)) + bytes(src_mac)
    return body + option.ljust(units * ND_OPT_UNIT, b"\x00")


def is_valid_rs(icmp: bytes, hop_limit: int | None, src: str) -> bool:
    """Router Solicitation validity checks of RFC 4861 section 6.1.1.

    ``icmp`` is the ICMPv6 message (the kernel has verified its checksum),
    ``hop_limit`` the IP hop limit it arrived with, ``src`` its source address.
    """
    if hop_limit != ND_HOP_LIMIT:
        return False
    if len(icmp) < 8 or icmp[0] != ICMPV6_ROUTER_SOLICITATION or icmp[1] != 0:
        return False
    try:
        unspecified = ipaddress.IPv6Address(src.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False
    offset = 8
    while offset < len(icmp):
        if offset + 2 > len(icmp):
            return False
        opt_type, opt_len = icmp[offset], icmp[offset + 1]
        if opt_len == 0 or offset + opt_len * ND_OPT_UNIT > len(icmp):
            return False
        if unspecified and opt_type == ND_OPT_SOURCE_LINK_ADDR:
            return False
        offset += opt_len * ND_OPT_UNIT
    return True


def interface_mac(interface: str) -> bytes:
    """The interface's link-layer address (empty if it has none)."""
    text = Path("/sys/class/net", interface, "address").read_text().strip()
    return bytes.fromhex(text.replace(":", "")) if text else b""


def link_local_address(interface: str) -> str | None:
    """A usable (not tentative, DAD not failed) link-local address of ``interface``."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[5] != interface:
            continue
        scope, flags = int(fields[3], 16), int(fields[4], 16)
        if scope != IPV6_ADDR_SCOPE_LINK:
            continue
        if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) and not flags & IFA_F_OPTIMISTIC:
            continue
        return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return None


def _icmp6_filter_pass_only(*types: int) -> bytes:
    words = [0xFFFFFFFF] * 8
    for icmp_type in types:
        words[icmp_type >> 5] &= ~(1 << (icmp_type & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


class _NoLinkLocal(Exception):
    """The interface has no usable link-local address yet (DAD pending, down)."""


class RouterAdvertiser:
    """Send RAs with router lifetime 0 on ``interface``; answer Router Solicitations.

    The constructor does no I/O.  :meth:`start` opens the raw ICMPv6 socket
    (raising ``OSError`` at once if it cannot: no CAP_NET_RAW, no such
    interface) and starts a daemon thread; :meth:`stop` stops and joins it.

    ``sender``, if given, is called with the RA's ICMPv6 bytes instead of
    sending them on a socket (tests, or another transport); no socket is
    opened then and Router Solicitations are not answered.

    Send errors (no link-local address yet, interface down or gone) are
    logged -- once per distinct error, until it clears -- and retried; they
    never end the thread.
    """

    def __init__(
        self,
        interface: str,
        interval: float = 3.0,
        sender: Callable[[bytes], object] | None = None,
    ) -> None:
        if not interface:
            raise ValueError("interface must be a network interface name")
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self.interface = interface
        self.interval = float(interval)
        self._sender = sender
        self._sock: socket.socket | None = None
        self._ifindex = 0
        self._stop = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._last_problem: str | None = None
        self._last_rs_reply = float("-inf")
        # Counters, for status pages and tests.
        self.ra_sent = 0
        self.rs_answered = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("RouterAdvertiser already started")
        if self._sender is None:
            self._sock = self._open_socket()
        self._stop.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        log.info(
            "sending router advertisements (lifetime 0) on %s every %gs%s",
            self.interface, self.interval,
            "" if self._sender else "; answering router solicitations",
        )
        self._thread = threading.Thread(
            target=self._run, name=f"ra-{self.interface}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        thread.join(timeout)
        if thread.is_alive():
            log.error("router advertisement thread on %s did not stop", self.interface)
            return
        self._thread = None
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._sock = self._wake_r = self._wake_w = None

    @property
    def running(self) -> bool:
        return self.is_alive()

    def is_alive(self) -> bool:
        """The supervisor's liveness probe (same contract as every server)."""
        return self._thread is not None and self._thread.is_alive()

    # -- socket ------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        ifindex = socket.if_nametoindex(self.interface)  # OSError if no such interface
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode()
            )
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(
                socket.IPPROTO_ICMPV6, ICMP6_FILTER,
                _icmp6_filter_pass_only(ICMPV6_ROUTER_SOLICITATION),
            )
            mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._ifindex = ifindex
        return sock

    def _reopen(self) -> None:
        """After the interface vanished or was re-created (new ifindex)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._sock = self._open_socket()

    # -- the loop ----------------------------------------------------------

    def _run(self) -> None:
        next_ra = 0.0  # the first RA goes out at once
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_ra:
                    ok = self._send_ra("periodic")
                    next_ra = now + (self.interval if ok else min(self.interval, RETRY_DELAY))
                self._wait(max(0.0, next_ra - time.monotonic()))
            except Exception:  # never let the thread die; the next round retries
                log.exception("router advertisement loop on %s failed", self.interface)
                self._stop.wait(min(self.interval, RETRY_DELAY))

    def _wait(self, timeout: float) -> None:
        """Sleep until ``timeout``, stop(), or an RS -- answering RSs meanwhile."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            watch = [self._wake_r] + ([self._sock] if self._sock is not None else [])
            readable, _, _ = select.select(watch, [], [], remaining)
            if self._wake_r in readable:
                return
            if self._sock is not None and self._sock in readable:
                self._receive()

    def _receive(self) -> None:
        try:
            data, ancdata, _flags, addr = self._sock.recvmsg(
                1500, socket.CMSG_SPACE(4)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._problem(f"receiving on {self.interface} failed: {exc}")
            self._stop.wait(min(self.interval, RETRY_DELAY))
            return
        hop_limit = None
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                hop_limit = struct.unpack("@i", value[:4])[0]
        if not is_valid_rs(data, hop_limit, addr[0]):
            log.debug("ignored invalid ICMPv6 message from %s on %s", addr[0], self.interface)
            return
        now = time.monotonic()
        if now - self._last_rs_reply < RS_REPLY_MIN_GAP:
            log.debug("router solicitation from %s: rate-limited", addr[0])
            return
        self._last_rs_reply = now
        log.debug("router solicitation from %s on %s", addr[0], self.interface)
        if self._send_ra(f"solicited by {addr[0]}"):
            self.rs_answered += 1

    def _send_ra(self, why: str) -> bool:
        try:
            ra = build_ra(interface_mac(self.interface))
            if self._sender is not None:
                self._sender(ra)
            else:
                self._send_on_socket(ra)
        except _NoLinkLocal:
            self._problem(
                f"no usable IPv6 link-local address on {self.interface} yet"
                " (interface down or DAD pending); will retry"
            )
            return False
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO) and self._sender is None:
                self._problem(f"interface {self.interface} is gone ({exc}); will retry")
                try:
                    self._reopen()
                except OSError:
                    pass
            else:
                self._problem(f"sending an RA on {self.interface} failed: {exc}; will retry")
            return False
        except Exception as exc:  # noqa: BLE001 -- an injected sender's error: keep going
            self._problem(f"sending an RA on {self.interface} failed: {exc!r}; will retry")
            return False
        self.ra_sent += 1
        if self._last_problem is not None:
            log.info("router advertisements on %s resumed", self.interface)
            self._last_problem = None
        log.debug("sent RA on %s (%s)", self.interface, why)
        return True

    def _send_on_socket(self, ra: bytes) -> None:
        if self._sock is None:
            self._reopen()
        src = link_local_address(self.interface)
        if src is None:
            raise _NoLinkLocal
        pktinfo = socket.inet_pton(socket.AF_INET6, src) + struct.pack("@I", self._ifindex)
        self._sock.sendmsg(
            [ra],
            [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
            0,
            (ALL_NODES, 0, 0, self._ifindex),
        )

    def _problem(self, message: str) -> None:
        """Log an error once, then quietly until it changes or clears."""
        if message != self._last_problem:
            log.warning("%s", message)
            self._last_problem = message
        else:
            log.debug("%s", message)


__all__ = [
    "RouterAdvertiser",
    "build_ra",
    "interface_mac",
    "is_valid_rs",
    "link_local_address",
]
