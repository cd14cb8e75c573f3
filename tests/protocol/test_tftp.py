"""TFTP server on loopback: real clients (tftp-hpa, atftp, curl), a raw-UDP
mini client for what they cannot express, malformed-packet regressions
(each packet that kills tftpy 0.8.7's server loop) and a seeded fuzz loop.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from tests.protocol.tftp_client import wait_for
except ImportError:  # run as ``pytest`` without the repo on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tftp_client import wait_for

from appliance.servers.tftp import TftpServer

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("tftp", "atftp", "curl")),
    reason="needs tftp-hpa, atftp and curl")

LO = "127.0.0.1"
BIG = 5 * 1024 * 1024 + 123  # multi-MB, not a multiple of any block size
ROLL = 65536 * 8 + 100  # at blksize 8 this wraps the block number past 65535

# timing checks are lower bounds: a loaded machine delays packets, never hastens them
EARLY = 0.75
SLACK = 3.0


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("tftp")
    root = base / "root"
    (root / "pxelinux.cfg").mkdir(parents=True)
    rnd = random.Random(1350)
    (root / "big.bin").write_bytes(rnd.randbytes(BIG))
    (root / "roll.bin").write_bytes(rnd.randbytes(ROLL))
    (root / "small.txt").write_bytes(b"hello\nworld\r\nbare\rend\n")
    (root / "exact.bin").write_bytes(b"E" * 1024)  # multiple of 512: empty last DATA
    (root / "pxelinux.cfg" / "default").write_bytes(b"DEFAULT local\n")
    (base / "secret").write_bytes(b"outside the root")
    (root / "escape").symlink_to(base / "secret")
    os.mkfifo(root / "fifo")
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_server(tree, events, loop, **kw):
    def gen(path, client):
        if path == "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff":
            return f"# for {client[0]}\nDEFAULT install\n".encode()
        if path == "boom":
            raise RuntimeError("generator bug")
        return None

    def on_event(kind, client, path):
        events.append((kind, path))
        if path == "small.txt":
            raise RuntimeError("hook bug")  # must be logged, not fatal

    kw.setdefault("timeout", 0.5)
    kw.setdefault("retries", 3)
    srv = TftpServer(str(tree), (LO, 0), generate=gen, on_event=on_event, **loop, **kw)
    srv.start()
    return srv


@pytest.fixture()
def events():
    return []


@pytest.fixture()
def server(tree, events, tftp_loop):
    srv = make_server(tree, events, tftp_loop)
    yield srv
    srv.stop()


# --------------------------------------------------------------- raw client


def rrq(name: bytes | str, mode=b"octet", opcode=1, **options) -> bytes:
    name = name.encode() if isinstance(name, str) else name
    pkt = struct.pack("!H", opcode) + name + b"\0" + mode + b"\0"
    for k, v in options.items():
        pkt += k.encode() + b"\0" + str(v).encode() + b"\0"
    return pkt


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block % 65536)


class Raw:
    """A UDP socket on loopback speaking TFTP by hand."""

    def __init__(self, server: TftpServer):
        self.listener = server.address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LO, 0))

    def send(self, data: bytes, addr=None):
        self.sock.sendto(data, addr or self.listener)

    def recv(self, timeout=2.0):
        """(opcode, block_or_code, payload, addr) or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            data, addr = self.sock.recvfrom(70000)
        except TimeoutError:
            return None
        if data[:2] == b"\x00\x06":  # OACK: no block number
            return 6, 0, data[2:], addr
        op, num = struct.unpack("!HH", data[:4]) if len(data) >= 4 else (0, 0)
        return op, num, data[4:], addr

    def close(self):
        self.sock.close()


def raw_get(server, name, blksize=None, **options):
    """Download with the raw client; returns (data, blocks seen in order)."""
    if blksize:
        options["blksize"] = blksize
    c = Raw(server)
    try:
        c.send(rrq(name, **options))
        size, blocks, out, expect = blksize or 512, [], [], 1
        first = c.recv()
        assert first is not None, "no answer"
        if first[0] == 6:  # OACK
            c.send(ack(0), first[3])
            first = c.recv()
        op, num, payload, tid = first
        assert op == 3, (op, num, payload)
        while True:
            assert num == expect % 65536
            blocks.append(num)
            out.append(payload)
            c.send(ack(num), tid)
            if len(payload) < size:
                return b"".join(out), blocks
            expect += 1
            got = c.recv()
            assert got is not None and got[0] == 3, got
            op, num, payload, _ = got
    finally:
        c.close()


# -------------------------------------------------------------- real clients


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False, **kw)


def test_tftp_hpa_octet_multi_mb(server, tree, tmp_path, events):
    port = server.address[1]
    out = tmp_path / "out"
    r = run(["tftp", LO, str(port), "-m", "binary", "-c", "get", "big.bin", str(out)])
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((tree / "big.bin").read_bytes())
    assert wait_for(lambda: ("tftp-done", "big.bin") in events)
    assert events[:2] == [("tftp-start", "big.bin"), ("tftp-done", "big.bin")]
    assert wait_for(lambda: server.sessions == 0)


def test_tftp_hpa_netascii_round_trip(server, tree, tmp_path):
    out = tmp_path / "out"
    r = run(["tftp", LO, str(server.address[1]), "-m", "netascii", "-c", "get", "small.txt",
             str(out)])
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (tree / "small.txt").read_bytes()


def test_atftp_blksize_tsize(server, tree, tmp_path):
    out = tmp_path / "out"
    r = run(["atftp", "--get", "-r", "big.bin", "-l", str(out), "--option", "blksize 1468",
             "--option", "tsize 0", LO, str(server.address[1])])
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((tree / "big.bin").read_bytes())


@pytest.mark.parametrize("blksize", [None, 1432, 65464])
def test_curl(server, tree, tmp_path, blksize):
    out = tmp_path / "out"
    extra = ["--tftp-blksize", str(blksize)] if blksize else []
    r = run(["curl", "-sS", *extra, f"tftp://{LO}:{server.address[1]}/big.bin", "-o", str(out)])
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((tree / "big.bin").read_bytes())


def test_curl_leading_slash_and_generated(server):
    port = server.address[1]
    r = run(["curl", "-sS", f"tftp://{LO}:{port}//pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"# for {LO}\nDEFAULT install\n".encode()


@pytest.mark.parametrize("name", ["nope", "escape", "pxelinux.cfg", "fifo", "../secret"])
def test_real_clients_get_errors(server, tmp_path, name):
    port = str(server.address[1])
    r = run(["tftp", LO, port, "-c", "get", name, str(tmp_path / "a")])
    assert b"Error code" in r.stdout + r.stderr
    r = run(["curl", "-sS", f"tftp://{LO}:{port}/{name}", "-o", str(tmp_path / "c")])
    assert r.returncode != 0
    r = run(["atftp", "--get", "-r", name, "-l", str(tmp_path / "b"), LO, port])
    assert r.returncode != 0
    assert server.sessions == 0


# ---------------------------------------------------------------- raw client


def test_no_options_data1_from_new_tid(server, tree):
    c = Raw(server)
    c.send(rrq("exact.bin"))
    op, block, payload, tid = c.recv()
    assert (op, block, len(payload)) == (3, 1, 512) and tid[1] != server.address[1]
    c.send(ack(1), tid)
    assert c.recv()[:2] == (3, 2)
    c.send(ack(2), tid)
    op, block, payload, _ = c.recv()
    assert (op, block, payload) == (3, 3, b"")  # file is a multiple of 512
    c.send(ack(3), tid)
    assert wait_for(lambda: server.sessions == 0)
    c.close()


def test_oack_echoes_accepted_options_only(server):
    c = Raw(server)
    c.send(rrq("big.bin", BLKSIZE="99999", TSize="0", timeout="0", windowsize="0"))
    op, _, payload, tid = c.recv()
    assert (op, payload) == (6, b"blksize\x0065464\x00tsize\x00%d\x00" % BIG)
    c.send(rrq("big.bin", BLKSIZE="99999", TSize="0"))  # duplicate RRQ: dropped
    assert c.recv(0.2) is None and server.sessions == 1
    c.send(ack(0), tid)
    op, block, payload, _ = c.recv()
    assert (op, block, len(payload)) == (3, 1, 65464)
    c.send(rrq("small.txt"))  # a new request from the same port replaces the old one
    op, block, payload, tid2 = c.recv()
    assert (op, block, tid2 != tid) == (3, 1, True) and server.sessions == 1
    c.close()


def test_oack_payload(server):
    c = Raw(server)
    c.send(rrq("big.bin", blksize="1432", tsize="0", foo="bar"))
    c.sock.settimeout(2)
    data, _ = c.sock.recvfrom(2000)
    assert data == b"\x00\x06blksize\x001432\x00tsize\x00" + str(BIG).encode() + b"\x00"
    c.close()


def test_netascii_on_the_wire(server):
    c = Raw(server)
    c.send(rrq("small.txt", mode=b"NetASCII"))
    _, _, payload, tid = c.recv()
    assert payload == b"hello\r\nworld\r\0\r\nbare\r\0end\r\n"
    c.send(ack(1), tid)
    c.close()


def test_wrq_refused(server, tree):
    c = Raw(server)
    c.send(rrq("new.bin", opcode=2))
    op, code, _, _ = c.recv()
    assert (op, code) == (5, 2)
    assert not (tree / "new.bin").exists() and server.sessions == 0
    c.close()


@pytest.mark.parametrize("opcode", [0, 3, 6, 7, 255, 65535])
def test_unknown_or_misplaced_opcode(server, opcode):
    c = Raw(server)
    c.send(struct.pack("!H", opcode) + b"\x00\x01whatever")
    assert c.recv()[:2] == (5, 4)
    c.close()


def test_foreign_tid_gets_error5_and_transfer_goes_on(server, tree):
    c, intruder = Raw(server), Raw(server)
    c.send(rrq("exact.bin"))
    _, _, _, tid = c.recv()
    intruder.send(ack(1), tid)
    assert intruder.recv()[:2] == (5, 5)
    intruder.send(b"\x00\x05\x00\x00spoofed error\x00", tid)  # an ERROR: no reply, no abort
    assert intruder.recv(0.2) is None
    for n in (1, 2, 3):
        c.send(ack(n), tid)
        if n < 3:
            assert c.recv()[:2] == (3, n + 1)
    assert wait_for(lambda: server.sessions == 0)
    c.close()
    intruder.close()


def test_duplicate_ack_sends_nothing_extra(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=2.0)
    try:
        c = Raw(srv)
        c.send(rrq("big.bin"))
        _, _, _, tid = c.recv()
        c.send(ack(1), tid)
        assert c.recv()[:2] == (3, 2)
        c.send(ack(1), tid)
        c.send(ack(1), tid)
        assert c.recv(0.5) is None  # no DATA 2 again, no DATA 3
        c.send(ack(2), tid)
        assert c.recv()[:2] == (3, 3)
        c.close()
    finally:
        srv.stop()


def test_client_error_after_oack_ends_quietly(server, events):
    """OVMF: ask tsize, abort with ERROR 8, ask again for real."""
    c = Raw(server)
    c.send(rrq("big.bin", tsize="0"))
    op, _, payload, tid = c.recv()
    assert op == 6 and payload == b"tsize\x00" + str(BIG).encode() + b"\x00"
    c.send(b"\x00\x05\x00\x08tsize only\x00", tid)
    assert wait_for(lambda: server.sessions == 0)
    assert c.recv(0.8) is None  # nothing retransmitted after the server timeout
    assert events == []  # a probe is not a transfer
    data, _ = raw_get(server, "big.bin", blksize=1468, tsize=0)
    assert len(data) == BIG
    assert wait_for(lambda: events == [("tftp-start", "big.bin"), ("tftp-done", "big.bin")])
    c.close()


def test_timeout_retransmit_backoff_and_reap(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=0.2, max_backoff=0.8, retries=3)
    try:
        c = Raw(srv)
        c.send(rrq("big.bin"))
        first = c.recv()
        t0, times = time.monotonic(), []
        while (got := c.recv(3.0)) is not None:  # > the last backoff, even loaded
            assert got[:3] == first[:3]  # the very same DATA 1
            times.append(time.monotonic() - t0)
        assert len(times) == 3  # retries=3
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        # lower bounds (load delays, never hastens): without backoff the
        # later gaps would stay near 0.2 s
        for gap, nominal in zip(gaps, (0.2, 0.4, 0.8), strict=True):
            assert EARLY * nominal <= gap < nominal + SLACK, gaps
        assert wait_for(lambda: srv.sessions == 0, 2)
        assert events == [("tftp-start", "big.bin"), ("tftp-error", "big.bin")]
        c.close()
    finally:
        srv.stop()


def test_vanished_clients_reaped(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=0.1, max_backoff=0.1, retries=2)
    try:
        clients = [Raw(srv) for _ in range(20)]
        for i, c in enumerate(clients):
            c.send(rrq("big.bin", blksize=1024) if i % 2 else rrq("small.txt"))
        assert wait_for(lambda: srv.sessions == 20, 2)
        for c in clients:
            c.close()
        assert wait_for(lambda: srv.sessions == 0, 3)
    finally:
        srv.stop()


def test_max_sessions_busy(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, max_sessions=2, timeout=5)
    try:
        a, b, c = Raw(srv), Raw(srv), Raw(srv)
        for x in (a, b):
            x.send(rrq("big.bin"))
            assert x.recv()[0] == 3
        c.send(rrq("big.bin"))
        op, code, msg, _ = c.recv()
        assert (op, code, msg) == (5, 0, b"busy\x00")
        assert srv.sessions == 2
    finally:
        srv.stop()
    assert srv.sessions == 0


def test_block_number_rollover(server, tree):
    data, blocks = raw_get(server, "roll.bin", blksize=8)
    assert sha(data) == sha((tree / "roll.bin").read_bytes())
    assert blocks[65534] == 65535 and blocks[65535] == 0 and blocks[65536] == 1
    assert len(blocks) == ROLL // 8 + 1


def test_generated_error_and_hook_errors(server, events, caplog):
    c = Raw(server)
    c.send(rrq("boom"))
    assert c.recv()[:2] == (5, 0)
    c.close()
    data, _ = raw_get(server, "small.txt")  # on_event raises for this one
    assert data == b"hello\nworld\r\nbare\rend\n"
    assert "generator bug" in caplog.text and "hook bug" in caplog.text


def test_bind_to_device(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, interface="lo")
    try:
        data, _ = raw_get(srv, "small.txt")
        assert len(data) == 22
    finally:
        srv.stop()


def test_serve_forever_in_callers_thread(tftp_loop, tree):
    import threading

    srv = TftpServer(str(tree), (LO, 0), timeout=0.5, **tftp_loop)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    assert wait_for(lambda: srv._sock is not None, 2)
    assert raw_get(srv, "exact.bin")[0] == b"E" * 1024
    srv.stop()
    t.join(5)
    assert not t.is_alive()


def test_stop_releases_port(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=5)
    port = srv.address[1]
    c = Raw(srv)
    c.send(rrq("big.bin"))
    assert c.recv()[0] == 3
    srv.stop()
    assert srv.sessions == 0 and not srv.is_alive()
    again = TftpServer(str(tree), (LO, port), **tftp_loop)
    again.start()
    assert again.address == (LO, port)
    again.stop()
    srv.start()  # the app's supervisor restarts a server with stop() + start()
    try:
        assert srv.is_alive() and raw_get(srv, "small.txt")[0].startswith(b"hello")
    finally:
        srv.stop()
    c.close()


# ---------------------------------------------------- malformed-packet killers

KILLERS = {
    "non-ascii filename": rrq(b"caf\xc3\xa9\xff.bin"),
    "blksize=abc": rrq("small.txt", blksize="abc"),
    "blksize empty value": b"\x00\x01small.txt\x00octet\x00blksize\x00\x00",
    "odd option list": b"\x00\x01small.txt\x00octet\x00blksize\x00",
    "short ACK (2 bytes)": b"\x00\x04",
    "short ACK (3 bytes)": b"\x00\x04\x00",
    "directory": rrq("pxelinux.cfg"),
    "truncated RRQ": b"\x00\x01small.txt",
    "RRQ without mode NUL": b"\x00\x01small.txt\x00octet",
    "empty datagram": b"",
    "one byte": b"\x01",
    "random bytes": bytes(random.Random(7).randbytes(300)),
    "huge option value": rrq("small.txt", tsize="9" * 5000),
    "non-ascii option": b"\x00\x01small.txt\x00octet\x00bl\xffksize\x001\x00",
    "mode mail": rrq("small.txt", mode=b"mail"),
}


@pytest.mark.parametrize("name", list(KILLERS))
def test_malformed_packet_does_not_kill_listener(server, name):
    c = Raw(server)
    c.send(KILLERS[name])
    c.recv(0.3)  # an ERROR (or nothing for a stray ACK); never a crash
    c.close()
    data, _ = raw_get(server, "small.txt")
    assert data == b"hello\nworld\r\nbare\rend\n"


@pytest.mark.parametrize("bad", [b"\x00\x04", b"\x00\x04\x00", b"\x00\x03\x00\x01x",
                                 b"", b"\x00\x01small.txt\x00octet\x00"])
def test_malformed_on_transfer_socket(server, bad):
    c = Raw(server)
    c.send(rrq("big.bin"))
    _, _, _, tid = c.recv()
    c.send(bad, tid)
    assert c.recv()[:2] == (5, 4)
    assert wait_for(lambda: server.sessions == 0)
    c.close()
    data, _ = raw_get(server, "small.txt")
    assert len(data) == 22


def mutations(rnd: random.Random):
    seeds = [rrq("small.txt"), rrq("big.bin", blksize=1468, tsize=0, timeout=3),
             rrq("/pxelinux.cfg/default", mode=b"netascii"), ack(1), b"\x00\x05\x00\x01x\x00"]
    while True:
        kind = rnd.randrange(4)
        if kind == 0:
            yield rnd.randbytes(rnd.randrange(0, 600))
        elif kind == 1:
            yield struct.pack("!H", rnd.randrange(0, 8)) + rnd.randbytes(rnd.randrange(0, 40))
        else:
            pkt = bytearray(rnd.choice(seeds))
            for _ in range(rnd.randrange(1, 4)):
                op = rnd.randrange(3)
                pos = rnd.randrange(len(pkt) + 1)
                if op == 0 and pkt:
                    pkt[min(pos, len(pkt) - 1)] = rnd.randrange(256)
                elif op == 1:
                    pkt[pos:pos] = bytes([rnd.choice([0, 0xFF, 0x2F, 0x2E, rnd.randrange(256)])])
                else:
                    del pkt[pos:]
            yield bytes(pkt)


def test_fuzz_listener(tftp_loop, tree, events, caplog):
    srv = make_server(tree, events, tftp_loop, timeout=0.2, max_backoff=0.2, retries=1)
    try:
        fuzz = Raw(srv)
        gen = mutations(random.Random(20240611))
        with caplog.at_level(logging.INFO, logger="plowshare.tftp"):
            for i in range(2000):
                fuzz.send(next(gen))
                if i % 50 == 49:
                    time.sleep(0.005)  # let the loop drain; keep the kernel queue short
            data, _ = raw_get(srv, "big.bin", blksize=1468)
        assert sha(data) == sha((tree / "big.bin").read_bytes())
        assert srv.is_alive()
        bad = [r for r in caplog.records if r.name == "plowshare.tftp"
               and r.levelno >= logging.ERROR and "on_event" not in r.getMessage()]
        assert bad == [], bad[:3]
        assert len([r for r in caplog.records if "refused" in r.getMessage()]) > 1000
        fuzz.close()
        assert wait_for(lambda: srv.sessions == 0, 5)
    finally:
        srv.stop()


# ------------------------------------------------------- RFC 7440 windowsize


def recv_data(c, n, timeout=5.0):
    """The next ``n`` DATA packets as [(block, payload)]; asserts they come."""
    out = []
    for _ in range(n):
        got = c.recv(timeout)
        assert got is not None and got[0] == 3, (got, out)
        out.append((got[1], got[2]))
    return out


def open_window(srv, name="big.bin", **options):
    """RRQ with options, check the OACK, ACK it; returns (client, tid)."""
    c = Raw(srv)
    c.send(rrq(name, **options))
    op, _, payload, tid = c.recv()
    assert op == 6, payload
    c.send(ack(0), tid)
    return c, tid


@pytest.mark.parametrize(("asked", "echo"), [("4", b"4"), ("1", b"1"), ("64", b"64"),
                                             ("65535", b"64"), ("0", None), ("x", None),
                                             ("-3", None)])
def test_windowsize_oack_echo(server, asked, echo):
    c = Raw(server)
    c.send(rrq("big.bin", blksize=1024, WindowSize=asked))
    op, _, payload, _ = c.recv()
    expect = b"blksize\x001024\x00" + (b"windowsize\x00" + echo + b"\x00" if echo else b"")
    assert (op, payload) == (6, expect)
    c.close()


def test_windowsize_not_echoed_unless_asked(server):
    c = Raw(server)
    c.send(rrq("big.bin", blksize=1024))
    assert c.recv()[2] == b"blksize\x001024\x00"
    c.close()


def test_window_sent_before_any_ack_and_slides(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=5.0)
    try:
        c, tid = open_window(srv, blksize=512, windowsize=4)
        blob = (tree / "big.bin").read_bytes()
        got = recv_data(c, 4)
        assert [b for b, _ in got] == [1, 2, 3, 4]
        assert [p for _, p in got] == [blob[i * 512:(i + 1) * 512] for i in range(4)]
        assert c.recv(0.3) is None  # the window is full: nothing before an ACK
        c.send(ack(2), tid)  # mid-window (3 lost): a new window 3..6 at once (RFC 7440)
        again = recv_data(c, 4)
        assert [b for b, _ in again] == [3, 4, 5, 6]
        assert again[0][1] == blob[2 * 512:3 * 512]
        assert c.recv(0.3) is None
        c.send(ack(2), tid)  # duplicate: nothing (Sorcerer's Apprentice)
        c.send(ack(1), tid)  # older: nothing
        c.send(ack(9), tid)  # not sent yet: nothing
        assert c.recv(0.3) is None
        c.send(ack(6), tid)  # whole window: 7..10
        assert [b for b, _ in recv_data(c, 4)] == [7, 8, 9, 10]
        c.send(ack(10), tid)
        c.send(ack(10), tid)  # a duplicated window-end ACK starts one window, not two
        assert [b for b, _ in recv_data(c, 4)] == [11, 12, 13, 14]
        assert c.recv(0.3) is None
        assert srv.sessions == 1
        c.close()
    finally:
        srv.stop()


def test_window_timeout_resends_from_last_ack(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=0.3, max_backoff=0.6, retries=3)
    try:
        c, tid = open_window(srv, blksize=512, windowsize=4)
        assert [b for b, _ in recv_data(c, 4)] == [1, 2, 3, 4]
        c.send(ack(4), tid)
        assert [b for b, _ in recv_data(c, 4)] == [5, 6, 7, 8]
        t0 = time.monotonic()
        again = recv_data(c, 4)  # no ACK: the unACKed window 5..8 again
        assert [b for b, _ in again] == [5, 6, 7, 8]
        assert EARLY * 0.3 <= time.monotonic() - t0 < 0.3 + SLACK
        blob = (tree / "big.bin").read_bytes()
        assert again[0][1] == blob[4 * 512:5 * 512]
        t0 = time.monotonic()
        assert [b for b, _ in recv_data(c, 4)] == [5, 6, 7, 8]  # backoff: 0.6 s
        assert EARLY * 0.6 <= time.monotonic() - t0 < 0.6 + SLACK
        c.send(ack(6), tid)  # progress: a new window 7..10, the timer starts over
        assert [b for b, _ in recv_data(c, 4)] == [7, 8, 9, 10]
        t0 = time.monotonic()
        assert [b for b, _ in recv_data(c, 4)] == [7, 8, 9, 10]
        assert EARLY * 0.3 <= time.monotonic() - t0 < 0.3 + SLACK
        c.close()
        assert wait_for(lambda: srv.sessions == 0, 5)
        assert events[-1] == ("tftp-error", "big.bin")
    finally:
        srv.stop()


def windowed_get(srv, name, blksize, windowsize, **options):
    """Download ACKing only the last block of each full window (as atftp does)."""
    c, tid = open_window(srv, name, blksize=blksize, windowsize=windowsize, **options)
    blocks, out, expect = [], [], 1
    try:
        while True:
            for i in range(windowsize):
                got = c.recv()
                assert got is not None and got[0] == 3, got
                assert got[1] == expect % 65536, (got[1], expect)
                blocks.append(got[1])
                out.append(got[2])
                expect += 1
                if len(got[2]) < blksize:
                    c.send(ack(got[1]), tid)
                    return b"".join(out), blocks
                if i == windowsize - 1:
                    c.send(ack(got[1]), tid)
    finally:
        c.close()


@pytest.mark.parametrize("windowsize", [7, 64])
def test_window_block_number_rollover(server, tree, events, windowsize):
    data, blocks = windowed_get(server, "roll.bin", 8, windowsize)
    assert sha(data) == sha((tree / "roll.bin").read_bytes())
    assert blocks[65534:65537] == [65535, 0, 1] and len(blocks) == ROLL // 8 + 1
    assert wait_for(lambda: server.sessions == 0)
    assert wait_for(lambda: ("tftp-done", "roll.bin") in events)


def test_window_final_short_block_ends_transfer(server, tree, events):
    """exact.bin is 1024 bytes: at blksize 512 the final block is empty."""
    c, tid = open_window(server, "exact.bin", windowsize=8, blksize=512)
    got = recv_data(c, 3)
    assert [(b, len(p)) for b, p in got] == [(1, 512), (2, 512), (3, 0)]
    assert c.recv(0.3) is None  # nothing past the final block
    c.send(ack(3), tid)
    assert wait_for(lambda: server.sessions == 0)
    assert wait_for(lambda: ("tftp-done", "exact.bin") in events)
    c.close()


def test_window_netascii_resend(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=0.3, retries=2)
    try:
        c, tid = open_window(srv, "small.txt", mode=b"netascii", blksize=8, windowsize=2)
        first = recv_data(c, 2)
        assert recv_data(c, 2) == first  # timeout: the same two blocks again
        c.send(ack(2), tid)
        rest = recv_data(c, 2)  # 27 bytes on the wire: block 4 is the short one
        assert [(b, len(p)) for b, p in rest] == [(3, 8), (4, 3)]
        wire = b"".join(p for _, p in first + rest)
        assert wire == b"hello\r\nworld\r\0\r\nbare\r\0end\r\n"
        c.send(ack(3), tid)  # mid-window (4 lost): block 4 again, from the kept buffer
        assert recv_data(c, 1) == rest[1:]
        assert c.recv(0.15) is None
        c.send(ack(4), tid)
        assert wait_for(lambda: srv.sessions == 0)
        c.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("opts", [["windowsize 16"], ["windowsize 4", "tsize 0"]])
def test_atftp_windowsize(server, tree, tmp_path, events, opts):
    out = tmp_path / "out"
    extra = [a for o in opts for a in ("--option", o)]
    r = run(["atftp", "--get", "-r", "big.bin", "-l", str(out), "--option", "blksize 1468",
             *extra, LO, str(server.address[1])])
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((tree / "big.bin").read_bytes())
    assert wait_for(lambda: ("tftp-done", "big.bin") in events)


# ----------------------------------------------------------------- scale


def test_thousand_concurrent_sessions(tftp_loop, tree, events):
    srv = make_server(tree, events, tftp_loop, timeout=10.0, max_sessions=1100)
    clients = []
    try:
        for _ in range(1000):
            c = Raw(srv)
            c.send(rrq("exact.bin", windowsize=2))
            clients.append(c)
        tids = []
        for c in clients:
            got = c.recv(1)
            if got is None:  # the listener queue overflowed: retry, as clients do
                c.send(rrq("exact.bin", windowsize=2))
                got = c.recv(3)
            assert got is not None and got[0] == 6, got
            tids.append(got[3])
        assert srv.sessions == 1000
        for c, tid in zip(clients, tids, strict=True):
            c.send(ack(0), tid)
        for c, tid in zip(clients, tids, strict=True):
            assert [b for b, _ in recv_data(c, 2, 5)] == [1, 2]
            c.send(ack(2), tid)
        for c, tid in zip(clients, tids, strict=True):
            assert recv_data(c, 1, 5) == [(3, b"")]
            c.send(ack(3), tid)
        assert wait_for(lambda: srv.sessions == 0, 10)
        assert sum(1 for e in events if e[0] == "tftp-done") == 1000
    finally:
        for c in clients:
            c.close()
        srv.stop()


def test_nofile_limit_raised_for_max_sessions():
    import sys
    import textwrap

    code = textwrap.dedent("""
        import logging, resource
        from appliance.servers.tftp import TftpServer
        logging.basicConfig(level=logging.INFO)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        srv = TftpServer(".", ("127.0.0.1", 0), max_sessions=1000)
        srv.start()
        srv.stop()
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
    """)
    r = run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    soft, hard = r.stdout.split()
    if int(hard) >= 1000 * 3 + 64:  # FDS_PER_SESSION, FDS_SPARE
        assert int(soft) == int(hard)
        assert b"RLIMIT_NOFILE soft limit raised from 256" in r.stderr


def test_file_truncated_in_place_ends_transfer(tftp_loop, tmp_path, events):
    """A file truncated while it is sent (the mapping then points past EOF):
    the client gets ERROR 0 instead of a silently short file, the session
    ends, and the server goes on serving."""
    root = tmp_path / "root"
    root.mkdir()
    victim = root / "shrinks.bin"
    victim.write_bytes(random.Random(7).randbytes(BIG))
    (root / "small.txt").write_bytes(b"still here\n")
    srv = make_server(root, events, tftp_loop)
    try:
        c = Raw(srv)
        c.send(rrq("shrinks.bin", blksize=1024))
        got = c.recv()
        assert got[0] == 6  # OACK
        tid = got[3]
        c.send(ack(0), tid)
        assert c.recv()[:2] == (3, 1)
        os.truncate(victim, 0)
        c.send(ack(1), tid)
        op, code, msg, _ = c.recv()
        assert (op, code, msg) == (5, 0, b"file changed\x00")
        c.close()
        assert wait_for(lambda: ("tftp-error", "shrinks.bin") in events, 5)
        assert srv.sessions == 0
        data, _ = raw_get(srv, "small.txt")
        assert data == b"still here\n"
    finally:
        srv.stop()
