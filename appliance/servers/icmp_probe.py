"""ICMP echo probes: is anybody already answering at this address? (RFC 792)

The transport half of the DHCP ping check (the policy is in
:mod:`appliance.servers.conflict`).  :class:`IcmpProber` is a thin raw
socket: :meth:`~IcmpProber.send` one echo request, and once :meth:`fileno`
is readable, :meth:`~IcmpProber.replies` returns the addresses that
answered.  Nothing here waits: the DHCP loop selects on the socket.

Field quirks:

* A raw ``IPPROTO_ICMP`` socket receives *every* ICMP message the host gets,
  IPv4 header included (its length is in the IHL nibble); only echo replies
  carrying our identifier, a sequence number we sent to that very source
  address, count.  Anything else (other pings, errors, truncated junk) is
  dropped without a word.
* The identifier is random per prober, so two appliances (or ``ping``) on
  one host do not take each other's replies.
* The kernel fills in the IPv4 header; we build the ICMP message and its
  RFC 1071 checksum.

:class:`FakeProber` is the same interface over a set of "squatted"
addresses, for unit tests (its ``fileno`` is a real pipe, so a ``select``
loop works with it unchanged).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct

from .l2 import checksum

log = logging.getLogger("plowshare.dhcp")

ICMP_ECHO_REPLY = 0      # RFC 792, "Echo or Echo Reply Message", type 0
ICMP_ECHO_REQUEST = 8    # RFC 792, type 8
ICMP_CODE = 0            # RFC 792: code 0 for both
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
IPV4_MIN_HEADER = 20     # RFC 791: IHL >= 5 words
PAYLOAD = b"plowshare-ping-check"
RECV_BUFFER = 2048
MAX_READS = 256          # replies taken per readable event (the rest wait for the next)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMP echo request message (no IP header), checksum filled in."""
    header = ICMP_HEADER.pack(ICMP_ECHO_REQUEST, ICMP_CODE, 0, ident, seq)
    csum = checksum(header + payload)
    return ICMP_HEADER.pack(ICMP_ECHO_REQUEST, ICMP_CODE, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[str, int, int] | None:
    """``(source address, identifier, sequence)`` of an IPv4 echo reply, else ``None``.

    ``packet`` is what a raw ICMP socket returns: IPv4 header + ICMP message.
    Never raises.
    """
    if len(packet) < IPV4_MIN_HEADER + ICMP_HEADER.size or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or len(packet) < ihl + ICMP_HEADER.size:
        return None
    kind, code, _sum, ident, seq = ICMP_HEADER.unpack_from(packet, ihl)
    if kind != ICMP_ECHO_REPLY or code != ICMP_CODE:
        return None
    return socket.inet_ntoa(packet[12:16]), ident, seq


class IcmpProber:
    """Echo requests out of ``interface`` and the replies to them.  ``start()`` opens."""

    def __init__(self, interface: str | None = None):
        self.interface = interface
        self.ident = secrets.randbits(16)
        self._seq = 0
        self._sent: dict[int, str] = {}  # sequence -> address, until answered or forgotten
        self._sock: socket.socket | None = None
        self.probes_sent = 0  # echo requests sent since construction (for benchmarks)

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            if self.interface:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._sent.clear()

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, ip: str) -> None:
        """Send one echo request to ``ip``; an error is logged (the probe then times out)."""
        self._seq = (self._seq + 1) & 0xFFFF
        self._sent[self._seq] = ip
        self.probes_sent += 1
        try:
            self._sock.sendto(echo_request(self.ident, self._seq), (ip, 0))
        except OSError as exc:
            log.warning("%s ping check: echo request not sent: %s", ip, exc)

    def forget(self, ip: str) -> None:
        """Stop expecting a reply from ``ip`` (its probe timed out)."""
        for seq in [s for s, a in self._sent.items() if a == ip]:
            del self._sent[seq]

    def replies(self) -> list[str]:
        """Addresses that answered one of our echo requests since the last call."""
        out = []
        for _ in range(MAX_READS):
            try:
                packet = self._sock.recv(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            parsed = parse_echo_reply(packet)
            if parsed is None or parsed[1] != self.ident:
                continue
            src, _ident, seq = parsed
            if self._sent.get(seq) == src:
                del self._sent[seq]
                out.append(src)
        return out


class FakeProber:
    """:class:`IcmpProber` for unit tests: ``squatted`` addresses answer at once."""

    def __init__(self, squatted: set[str] | None = None):
        self.squatted = set(squatted or ())
        self.sent: list[str] = []
        self._answers: list[str] = []
        self._r = self._w = -1

    def start(self) -> None:
        self._r, self._w = os.pipe()

    def stop(self) -> None:
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)
        self._r = self._w = -1

    def fileno(self) -> int:
        return self._r

    def send(self, ip: str) -> None:
        self.sent.append(ip)
        if ip in self.squatted:
            self._answers.append(ip)
            os.write(self._w, b"!")

    def forget(self, ip: str) -> None:
        pass

    def replies(self) -> list[str]:
        out, self._answers = self._answers, []
        if out:
            os.read(self._r, 4096)
        return out
