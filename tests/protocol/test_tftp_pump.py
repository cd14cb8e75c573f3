"""The C pump (``appliance/servers/_tftp_pump.c``) on its own, on real UDP
sockets: what it sends for an ACK, what it leaves to Python, and that it is
built at all.  The TFTP protocol suites run whole transfers through it (and
through the pure-Python loop) via the ``tftp_loop`` fixture."""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import time

import pytest

from appliance.servers.tftp_session import Pump, Window

OP_DATA, OP_ACK, OP_ERROR = 3, 4, 5
READY, DATAGRAM, REARM, FAULT = 0, 1, 2, 3
BLK = 8


def test_built():
    """scripts/setup builds it (gcc, python3-dev); the server only falls back
    to pure Python where it cannot be built."""
    assert Pump is not None and Window is not None, "run scripts/setup"
    from appliance.servers import _tftp_pump

    assert (_tftp_pump.READY, _tftp_pump.DATAGRAM, _tftp_pump.REARM,
            _tftp_pump.FAULT) == (READY, DATAGRAM, REARM, FAULT)


class Rig:
    """A server socket connected to a client socket, in an epoll set the pump
    waits on, and a window over ``data``."""

    def __init__(self, data: bytes, ws: int = 1, base: int = 1, sent: int = 1):
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.settimeout(2.0)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.connect(self.client.getsockname())
        self.server.setblocking(False)
        self.client.connect(self.server.getsockname())
        self.ep = select.epoll()
        self.ep.register(self.server.fileno(), select.EPOLLIN)
        self.pump = Pump(self.ep.fileno())
        self.w = Window()
        self.w.blksize, self.w.ws, self.w.base, self.w.sent = BLK, ws, base, sent
        self.w.last = len(data) // BLK + 1
        self.w.started, self.w.retries = True, 0
        self.w.base_timeout = self.w.timeout = 1.0
        self.w.deadline = self.w.armed_at = time.monotonic()  # a live timer, earlier
        self.data = data
        self.w.set_source(memoryview(data))
        self.pump.add(self.server.fileno(), self.w)

    def ack(self, block: int) -> None:
        self.client.send(struct.pack("!HH", OP_ACK, block & 0xFFFF))

    def run(self, seconds: float = 0.2) -> list:
        return self.pump.run(time.monotonic() + seconds, 16, 0.0, 4)

    def data_packets(self, wait: float = 0.2) -> list[tuple[int, bytes]]:
        self.client.settimeout(wait)
        out = []
        try:
            while True:
                pkt = self.client.recv(100)
                op, block = struct.unpack("!HH", pkt[:4])
                assert op == OP_DATA
                out.append((block, pkt[4:]))
        except TimeoutError:
            return out

    def close(self) -> None:
        self.pump.discard(self.server.fileno())
        self.w.set_source(None)
        self.ep.close()
        self.server.close()
        self.client.close()


@pytest.fixture()
def rig_factory():
    rigs = []

    def make(*args, **kw):
        rigs.append(Rig(*args, **kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


DATA = bytes(range(256)) * 2  # 512 bytes: 64 blocks of 8, then an empty block 65


def test_lockstep_ack_sends_the_next_block_in_c(rig_factory):
    r = rig_factory(DATA)  # block 1 is out (base 1, sent 1)
    r.ack(1)
    t0 = time.monotonic()
    assert r.run() == []  # nothing for Python: it ran until `until`
    assert r.data_packets() == [(2, DATA[8:16])]
    assert (r.w.base, r.w.sent) == (2, 2)
    assert t0 + 1.0 <= r.w.deadline <= time.monotonic() + 1.0


def test_duplicate_ack_sends_nothing(rig_factory):
    """RFC 1123 4.2.3.1 (Sorcerer's Apprentice)."""
    r = rig_factory(DATA, base=3, sent=3)
    r.ack(2)  # the ACK before the window: a duplicate
    assert r.run() == []
    assert r.data_packets() == []
    assert (r.w.base, r.w.sent) == (3, 3)


def test_window_ack_mid_window_resends_the_rest(rig_factory):
    """RFC 7440 section 4: an ACK for an earlier block of the window starts
    the next window there."""
    r = rig_factory(DATA, ws=4, base=1, sent=4)
    r.ack(2)  # 3 and 4 were lost
    assert r.run() == []
    assert [b for b, _ in r.data_packets()] == [3, 4, 5, 6]
    assert (r.w.base, r.w.sent) == (3, 6)


def test_final_ack_and_non_acks_go_to_python(rig_factory):
    r = rig_factory(DATA, base=65, sent=65)  # the empty last block is out
    r.ack(65)
    out = r.run()
    assert out == [(r.server.fileno(), DATAGRAM, struct.pack("!HH", OP_ACK, 65), r.w)]
    err = struct.pack("!HH", OP_ERROR, 0) + b"bye\0"
    r.client.send(err)
    assert r.run() == [(r.server.fileno(), DATAGRAM, err, r.w)]
    r.client.send(b"")
    assert r.run() == [(r.server.fileno(), DATAGRAM, b"", r.w)]
    assert r.data_packets() == []


def test_unstarted_or_unknown_fds_are_left_unread(rig_factory):
    r = rig_factory(DATA, base=0, sent=0)
    r.w.started = False  # the OACK is out: its ACK is Python's (tftp-start)
    r.ack(0)
    assert r.run() == [(r.server.fileno(), READY, None, r.w)]
    assert r.server.recv(10) == struct.pack("!HH", OP_ACK, 0)  # still queued
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.setblocking(False)
    r.ep.register(other.fileno(), select.EPOLLIN)
    other.sendto(b"x", other.getsockname())
    assert r.run() == [(other.fileno(), READY, None, None)]
    r.ep.unregister(other.fileno())
    other.close()


def test_progress_after_backoff_asks_python_to_rearm(rig_factory):
    r = rig_factory(DATA)
    r.w.armed_at = time.monotonic() + 60.0  # a backed-off timer far away
    r.w.retries, r.w.timeout = 3, 8.0
    r.ack(1)
    assert r.run() == [(r.server.fileno(), REARM, None, r.w)]
    assert (r.w.retries, r.w.timeout) == (0, 1.0)  # back to the base timeout
    assert r.data_packets() == [(2, DATA[8:16])]


def test_block_numbers_roll_over(rig_factory):
    big = bytes(70_000 * BLK)
    r = rig_factory(big, base=65535, sent=65535)
    r.ack(65535)
    r.run()
    assert [b for b, _ in r.data_packets()] == [0]  # seq 65536 on the wire
    r.ack(0)
    r.run()
    assert [b for b, _ in r.data_packets()] == [1]
    assert r.w.base == 65537


def test_truncated_mapping_is_a_fault_for_python(tmp_path, rig_factory):
    """A file truncated in place under its mapping: sendmsg fails with EFAULT
    (the kernel reads the page, not us), and Python ends the transfer."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(64 * 1024))
    with path.open("rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    view = memoryview(m)
    r = rig_factory(DATA)
    r.w.set_source(view)
    r.w.blksize, r.w.last = 1024, 65
    r.w.base = r.w.sent = 40
    os.truncate(path, 0)
    r.ack(40)
    assert r.run() == [(r.server.fileno(), FAULT, None, r.w)]
    r.w.set_source(None)
    view.release()
    m.close()  # no export left: closes


def test_table_and_reentry_rules(rig_factory):
    r = rig_factory(DATA)
    assert r.pump.count() == 1
    r.pump.discard(r.server.fileno())
    r.pump.discard(r.server.fileno())  # twice: no error
    assert r.pump.count() == 0
    with pytest.raises(ValueError):
        r.pump.add(-1, r.w)
    with pytest.raises(TypeError):
        r.pump.add(5, object())
    with pytest.raises(ValueError):
        r.pump.run(time.monotonic(), 0, 0.0, 4)
    r.pump.add(r.server.fileno(), r.w)


def test_run_releases_the_gil(rig_factory):
    """While the pump waits, other Python threads run (the DHCP and HTTP
    threads of the same process)."""
    import threading

    r = rig_factory(DATA)
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    try:
        r.run(0.5)
    finally:
        stop.set()
        t.join()
    assert len(ticks) > 50  # ~450 if the thread ran the whole time; 1-2 if not


def test_a_cycle_through_the_pump_is_collected():
    """Sessions hold the server, which holds the pump, which holds the
    sessions: the garbage collector must see through the pump's table."""
    import gc
    import weakref

    class Held(Window):
        __slots__ = ("__weakref__", "pump")

    ep = select.epoll()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        pump = Pump(ep.fileno())
        w = Held()
        w.pump = pump
        pump.add(sock.fileno(), w)
        alive = weakref.ref(w)
        del pump, w
        gc.collect()
        assert alive() is None
    finally:
        sock.close()
        ep.close()


def test_run_needs_init():
    with pytest.raises(RuntimeError):
        Pump.__new__(Pump).run(time.monotonic(), 4, 0.0, 4)
