"""A raw-UDP TFTP client for protocol tests (RFC 1350/2347/2348/2349/7440).

Small on purpose: packet builders that can produce any byte string (options
as a list of pairs, so duplicates, odd case and raw bytes are possible), a
socket wrapper with ``recv(timeout)`` and ``drain()``, and :func:`get`, a
read transfer that follows the protocol (OACK, windows, rollover) and can be
told to misbehave (ACK twice, skip ACKs, stop early with an ERROR).

Not a product client: it only reads, and it asserts on what it sees.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

LO = "127.0.0.1"

OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
MODULO = 1 << 16

OptionList = dict[str, object] | list[tuple[bytes | str, bytes | str | int]] | None


def _b(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("latin-1")


# ------------------------------------------------------------------ builders


def request(filename: bytes | str, mode: bytes | str = b"octet", options: OptionList = None,
            opcode: int = OP_RRQ) -> bytes:
    """RRQ (or WRQ with ``opcode=2``) with options in the given order."""
    pkt = struct.pack("!H", opcode) + _b(filename) + b"\0" + _b(mode) + b"\0"
    items = options.items() if isinstance(options, dict) else (options or [])
    for name, value in items:
        pkt += _b(name) + b"\0" + _b(value) + b"\0"
    return pkt


def rrq(filename, mode=b"octet", options: OptionList = None) -> bytes:
    return request(filename, mode, options, OP_RRQ)


def wrq(filename, mode=b"octet", options: OptionList = None) -> bytes:
    return request(filename, mode, options, OP_WRQ)


def ack(block: int) -> bytes:
    return struct.pack("!HH", OP_ACK, block % MODULO)


def data(block: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HH", OP_DATA, block % MODULO) + payload


def error(code: int, message: bytes | str = b"") -> bytes:
    return struct.pack("!HH", OP_ERROR, code) + _b(message) + b"\0"


# ------------------------------------------------------------------- parsing


@dataclass
class Packet:
    """One received datagram.  ``num`` is the block (DATA/ACK) or the error
    code (ERROR); ``payload`` is the DATA bytes, the ERROR text (without NUL)
    or the raw OACK body; ``options`` is the decoded OACK."""

    op: int
    num: int
    payload: bytes
    addr: tuple[str, int]
    raw: bytes
    options: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # keep assertion messages short
        body = self.payload[:24] + (b"..." if len(self.payload) > 24 else b"")
        return f"Packet(op={self.op}, num={self.num}, len={len(self.payload)}, {body!r})"


def parse(raw: bytes, addr=("", 0)) -> Packet:
    op = struct.unpack("!H", raw[:2])[0] if len(raw) >= 2 else -1
    if op == OP_OACK:
        fields = raw[2:].split(b"\0")
        if fields and fields[-1] == b"":
            fields.pop()
        opts = {fields[i].decode("latin-1").lower(): fields[i + 1].decode("latin-1")
                for i in range(0, len(fields) - 1, 2)}
        return Packet(op, 0, raw[2:], addr, raw, opts)
    num = struct.unpack("!H", raw[2:4])[0] if len(raw) >= 4 else -1
    payload = raw[4:]
    if op == OP_ERROR:
        payload = payload.split(b"\0", 1)[0]
    return Packet(op, num, payload, addr, raw)


# -------------------------------------------------------------------- socket


class Client:
    """One UDP socket on loopback (one client TID)."""

    def __init__(self, server_addr: tuple[str, int], rcvbuf: int | None = None):
        self.server = tuple(server_addr)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((LO, 0))

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def send(self, raw: bytes, addr=None) -> None:
        self.sock.sendto(raw, addr or self.server)

    def recv(self, timeout: float = 2.0) -> Packet | None:
        """The next datagram, or ``None`` after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            raw, addr = self.sock.recvfrom(70000)
        except (TimeoutError, BlockingIOError):
            return None
        return parse(raw, addr[:2])

    def recv_all(self, quiet: float = 0.2, limit: float = 5.0) -> list[Packet]:
        """Everything that arrives until ``quiet`` seconds pass with nothing."""
        out, end = [], time.monotonic() + limit
        while time.monotonic() < end and (p := self.recv(quiet)) is not None:
            out.append(p)
        return out

    def drain(self) -> int:
        """Discard whatever is queued, without waiting; return how many."""
        n = 0
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recvfrom(70000)
                n += 1
        except (BlockingIOError, InterruptedError):
            return n
        except OSError:  # e.g. ECONNREFUSED queued by an ICMP unreachable
            return n

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ transfer


class TransferError(AssertionError):
    """The server did something :func:`get` did not expect."""


@dataclass
class Result:
    data: bytes
    blocks: list[int]  # DATA block numbers in the order accepted
    oack: dict[str, str] | None  # None: no OACK was sent
    tid: tuple[str, int] | None
    packets: int  # every DATA received, duplicates and out-of-window included
    sizes: list[int]  # payload size of each accepted DATA


def get(server_addr, filename, options: OptionList = None, window: int | None = None,
        mode: bytes | str = b"octet", *, timeout: float = 3.0, ack_twice: bool = False,
        abort_after: int | None = None, drop: set[int] | frozenset[int] = frozenset(),
        client: Client | None = None) -> Result:
    """Read ``filename`` following the protocol and return what came.

    ``window`` is the number of DATA per ACK the client expects; by default
    the ``windowsize`` from the OACK (1 without).  The receiver ACKs the last
    in-order block at the end of each window, on the final block, and when a
    block arrives out of order (RFC 7440 section 4).  ``ack_twice`` sends
    every ACK twice (Sorcerer's Apprentice probe); ``abort_after=n`` sends
    ERROR 0 after n blocks instead of finishing; ``drop`` holds absolute block
    counts (1 = the first DATA) whose first arrival is discarded, as if lost
    on the wire.  Raises
    :class:`TransferError` on an ERROR, a timeout or a wrong packet.
    """
    own = client is None
    c = client or Client(server_addr)
    try:
        c.send(rrq(filename, mode, options))
        first = c.recv(timeout)
        if first is None:
            raise TransferError(f"no answer to RRQ {filename!r}")
        if first.op == OP_ERROR:
            raise TransferError(f"ERROR {first.num} {first.payload!r}")
        tid, oack = first.addr, None
        blksize = 512
        if first.op == OP_OACK:
            oack = first.options
            blksize = int(oack.get("blksize", 512))
            if window is None:
                window = int(oack.get("windowsize", 1))
            c.send(ack(0), tid)
            pending = None
        else:
            pending = first
        window = window or 1

        def send_ack(n: int) -> None:
            c.send(ack(n), tid)
            if ack_twice:
                c.send(ack(n), tid)

        out, blocks, sizes, packets = [], [], [], 0
        expected, in_window = 1, 0  # expected is the absolute block count
        reacked = False  # re-ACKed the last in-order block since progress
        to_drop = set(drop)
        while True:
            pkt = pending if pending is not None else c.recv(timeout)
            pending = None
            if pkt is None:
                raise TransferError(f"timeout waiting for block {expected}")
            if pkt.addr != tid:
                raise TransferError(f"packet from {pkt.addr}, transfer TID is {tid}")
            if pkt.op == OP_ERROR:
                raise TransferError(f"ERROR {pkt.num} {pkt.payload!r}")
            if pkt.op != OP_DATA:
                raise TransferError(f"unexpected {pkt!r}")
            packets += 1
            if pkt.num == expected % MODULO and expected in to_drop:
                to_drop.discard(expected)  # "lost": the next ones are out of order
                continue
            if pkt.num != expected % MODULO:
                # a duplicate or a gap: ACK the last in-order block, once
                if not reacked:
                    send_ack(expected - 1)
                    reacked, in_window = True, 0
                continue
            reacked = False
            if len(pkt.payload) > blksize:
                raise TransferError(f"DATA {pkt.num} is {len(pkt.payload)} > {blksize}")
            out.append(pkt.payload)
            blocks.append(pkt.num)
            sizes.append(len(pkt.payload))
            in_window += 1
            final = len(pkt.payload) < blksize
            if abort_after is not None and len(blocks) >= abort_after and not final:
                c.send(error(0, "client abort"), tid)
                return Result(b"".join(out), blocks, oack, tid, packets, sizes)
            if final or in_window >= window:
                send_ack(pkt.num)
                in_window = 0
            if final:
                return Result(b"".join(out), blocks, oack, tid, packets, sizes)
            expected += 1
    finally:
        if own:
            c.close()


def wait_for(cond, timeout=5.0) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` passes; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()
