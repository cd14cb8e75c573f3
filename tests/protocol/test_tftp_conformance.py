"""TFTP conformance: RFC 1350, RFC 1123 4.2.3, RFC 2347/2348/2349/7440.

Every test's docstring names the RFC section it checks.  Raw-UDP cases use
:mod:`tftp_client` (same directory); real-client cases use tftp-hpa
``tftp``, ``atftp`` and ``curl``.  One server on 127.0.0.1 port 0 serves a
module-scoped tree; tests that need their own timing start their own.
The fuzz case sends 100,000 mutated packets to the listener and to live
transfer sockets, paced by the server's own per-datagram log records so
nothing is silently dropped in a full receive buffer.

Policy choices of this server that the RFCs leave open (see the module docs
of ``appliance/servers/tftp.py`` and ``tftp_engine.py``): ``blksize`` < 8 or
non-numeric is ignored, > 65464 clamped; ``timeout`` outside 1..255 ignored;
``tsize`` is ignored in netascii mode; refusals come from the listener port.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pytest

from appliance.servers.tftp import TftpServer

try:
    from tests.protocol import tftp_client as tc
except ImportError:  # run as ``pytest`` without the repo on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tftp_client as tc

LO = tc.LO
TIMEOUT = 0.5  # the module server's retransmission timeout (s)
# timing checks are lower bounds: a loaded machine delays packets, never hastens them
EARLY = 0.75
SLACK = 3.0
ROLL = 600 * 1024 + 3  # blksize 8 -> 76,801 blocks: wraps past 65535
ODD = 512 * 37 + 123
TEXT = (b"line one\nline two\r\nbare\rcarriage\n" * 40) + b"\r\n\n\r"  # > 512 on the wire

HAVE = {c: shutil.which(c) is not None for c in ("tftp", "atftp", "curl")}
log = logging.getLogger("plowshare.tftp")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def netascii(data: bytes) -> bytes:
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("tftpconf")
    root = base / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "adir").mkdir()
    rnd = random.Random(7440)
    files = {
        "empty.bin": b"",
        "one.bin": b"\x5a",
        "b512.bin": rnd.randbytes(512),
        "b2048.bin": rnd.randbytes(512 * 4),
        "odd.bin": rnd.randbytes(ODD),
        "roll.bin": rnd.randbytes(ROLL),
        "text.txt": TEXT,
        "sub/deeper/file.bin": rnd.randbytes(3000),
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    (base / "secret").write_bytes(b"outside the root")
    (root / "escape").symlink_to(base / "secret")
    return root


class Records(logging.Handler):
    """Counts the server's per-datagram log records; keeps ERROR ones."""

    PER_DATAGRAM = ("refused", "ignored", "dropped", "accepted", "foreign TID")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.processed = 0
        self.errors: list[logging.LogRecord] = []

    def emit(self, record):
        if record.levelno >= logging.ERROR:
            self.errors.append(record)
        msg = record.msg if isinstance(record.msg, str) else ""
        if any(w in msg for w in self.PER_DATAGRAM):
            self.processed += 1


@pytest.fixture(scope="module")
def records():
    h = Records()
    log.addHandler(h)
    yield h
    log.removeHandler(h)


@pytest.fixture(scope="module")
def server(tree, records, tftp_loop):
    srv = TftpServer(str(tree), (LO, 0), timeout=TIMEOUT, retries=4, max_backoff=2.0,
                     **tftp_loop)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def healthy(request, records):
    """After every case: no ERROR record from the server, the loop alive."""
    before = len(records.errors)
    yield
    new = records.errors[before:]
    assert not new, [r.getMessage() for r in new[:3]]
    if "server" in request.fixturenames:
        assert request.getfixturevalue("server").is_alive()


@pytest.fixture()
def client(server):
    c = tc.Client(server.address)
    yield c
    c.close()


def start_oack(c: tc.Client, name: str, options) -> tc.Packet:
    """Send an RRQ with options, return the OACK (asserting it is one)."""
    c.send(tc.rrq(name, options=options))
    p = c.recv()
    assert p is not None and p.op == tc.OP_OACK, p
    return p


# =================================================================== RFC 1350


def test_rrq_octet_data1_from_new_tid(server, client, tree):
    """RFC 1350 section 4: the server answers an RRQ with DATA 1 from a new
    TID (a port other than the listener's), to the client's TID."""
    client.send(tc.rrq("odd.bin"))
    p = client.recv()
    assert (p.op, p.num, p.payload) == (3, 1, (tree / "odd.bin").read_bytes()[:512])
    assert p.addr[0] == LO and p.addr[1] != server.address[1]
    client.send(tc.error(0, "done"), p.addr)


def test_final_short_block_ends_transfer(server, client, tree):
    """RFC 1350 section 6: every DATA is 512 bytes but the last, which is
    shorter and ends the transfer; after its ACK the server sends nothing."""
    r = tc.get(server.address, "odd.bin", client=client)
    assert r.data == (tree / "odd.bin").read_bytes()
    assert r.sizes == [512] * 37 + [123] and r.blocks == list(range(1, 39))
    assert r.oack is None and r.packets == 38
    assert client.recv(TIMEOUT * 2.5) is None  # no retransmission after the final ACK


@pytest.mark.parametrize("name,sizes", [("empty.bin", [0]), ("one.bin", [1])])
def test_tiny_files(server, client, name, sizes):
    """RFC 1350 section 6: a 0-byte file is one empty DATA 1; a 1-byte file
    is one DATA of 1 byte."""
    r = tc.get(server.address, name, client=client)
    assert r.sizes == sizes and r.blocks == [1]
    assert client.recv(TIMEOUT * 1.5) is None


@pytest.mark.parametrize("name,blocks", [("b512.bin", 2), ("b2048.bin", 5)])
def test_exact_multiple_ends_with_empty_block(server, tree, name, blocks):
    """RFC 1350 section 6: a file that is an exact multiple of 512 bytes is
    terminated by an extra DATA with 0 bytes."""
    r = tc.get(server.address, name)
    assert r.sizes == [512] * (blocks - 1) + [0]
    assert r.data == (tree / name).read_bytes()


def test_netascii_translation_across_blocks(server, client):
    """RFC 1350 section 5 (netascii per RFC 764): LF goes out as CR LF and a
    bare CR as CR NUL; the expanded stream is cut into exact 512-byte
    blocks."""
    r = tc.get(server.address, "text.txt", mode=b"netascii", client=client)
    assert r.data == netascii(TEXT)
    assert all(s == 512 for s in r.sizes[:-1]) and r.sizes[-1] < 512


@pytest.mark.parametrize("mode", [b"OCTET", b"Octet", b"NetAscii", b"NETASCII"])
def test_mode_names_case_insensitive(server, tree, mode):
    """RFC 1350 section 5: the mode string is case-insensitive ("netascii",
    "NetAscii" ... are the same mode)."""
    r = tc.get(server.address, "text.txt", mode=mode)
    want = TEXT if mode.lower() == b"octet" else netascii(TEXT)
    assert r.data == want


@pytest.mark.parametrize("mode", [b"binary", b"mail", b"", b"octet\xff"])
def test_unknown_mode_refused(server, client, mode):
    """RFC 1350 section 5, RFC 1123 4.2.2.1 ("mail" mode SHOULD NOT be
    supported): a mode other than netascii or octet is refused with an
    ERROR and no transfer starts."""
    client.send(tc.rrq("one.bin", mode=mode))
    p = client.recv()
    assert p.op == tc.OP_ERROR and p.num in (0, 4), p
    assert client.recv(0.2) is None


@pytest.mark.parametrize("name", ["new.bin", "one.bin"])
def test_wrq_refused_read_only(server, client, tree, name):
    """RFC 1350 section 4 / appendix, RFC 1123 4.2.3.4 (access control):
    a WRQ to this read-only server is answered ERROR 2 (access violation)
    and no file is created or changed, even after a DATA 1 is sent."""
    before = (tree / "one.bin").read_bytes()
    client.send(tc.wrq(name, options={"blksize": 1024, "tsize": 5}))
    p = client.recv()
    assert (p.op, p.num) == (tc.OP_ERROR, 2), p
    client.send(tc.data(1, b"evil"), p.addr)
    client.recv(0.2)
    assert not (tree / "new.bin").exists() and (tree / "one.bin").read_bytes() == before


def test_file_not_found(server, client):
    """RFC 1350 appendix: a missing file is ERROR 1 "File not found"."""
    client.send(tc.rrq("no/such/file.bin"))
    p = client.recv()
    assert (p.op, p.num) == (tc.OP_ERROR, 1), p


@pytest.mark.parametrize("name,code", [("escape", 2), ("adir", 2), ("../secret", 2),
                                       ("sub", 2)])
def test_access_control(server, client, name, code):
    """RFC 1123 4.2.3.4 / RFC 1350 appendix: names outside the root (a
    symlink out, ``..``) and directories are refused with ERROR 2."""
    client.send(tc.rrq(name))
    p = client.recv()
    assert (p.op, p.num) == (tc.OP_ERROR, code), p
    assert b"outside" not in p.raw


def test_subdirectory_file_served(server, tree):
    """RFC 1350 section 1 (file names are host paths): a file in a
    subdirectory of the root is served, with or without a leading slash."""
    want = (tree / "sub/deeper/file.bin").read_bytes()
    assert tc.get(server.address, "sub/deeper/file.bin").data == want
    assert tc.get(server.address, "/sub/deeper/file.bin").data == want


def test_client_error_terminates(server, client):
    """RFC 1350 section 7: an ERROR from the client ends the transfer; the
    server neither answers it nor retransmits afterwards."""
    r = tc.get(server.address, "odd.bin", abort_after=3, client=client)
    assert r.blocks == [1, 2, 3]
    assert client.recv(TIMEOUT * 2.5) is None


def test_foreign_tid_gets_error5_transfer_continues(server, client, tree):
    """RFC 1350 section 4: a packet from a foreign TID gets ERROR 5 sent to
    that TID, and the transfer with the right TID goes on to the end."""
    client.send(tc.rrq("odd.bin"))
    first = client.recv()
    with tc.Client(server.address) as intruder:
        for pkt in (tc.ack(1), tc.data(1, b"x"), b"\x00\x09junk", tc.rrq("one.bin")):
            intruder.send(pkt, first.addr)
            p = intruder.recv()
            assert (p.op, p.num, p.addr) == (tc.OP_ERROR, 5, first.addr), p
    assert client.recv(0.1) is None  # the real client saw nothing of it
    # carry on from DATA 1
    out, pkt = [first.payload], first
    while len(pkt.payload) == 512:
        client.send(tc.ack(pkt.num), first.addr)
        pkt = client.recv()
        assert pkt.op == tc.OP_DATA and pkt.num == len(out) + 1, pkt
        out.append(pkt.payload)
    client.send(tc.ack(pkt.num), first.addr)
    assert b"".join(out) == (tree / "odd.bin").read_bytes()


@pytest.mark.parametrize("opcode", [7, 9, 0x100, 0xFFFF])
def test_unknown_opcode_error4(server, client, opcode):
    """RFC 1350 section 5 / appendix: an unknown opcode is ERROR 4 (illegal
    TFTP operation), on the listener and on a transfer socket."""
    client.send(struct.pack("!H", opcode) + b"one.bin\0octet\0")
    p = client.recv()
    assert (p.op, p.num) == (tc.OP_ERROR, 4), p
    client.send(tc.rrq("odd.bin"))
    d1 = client.recv()
    client.send(struct.pack("!HH", opcode, 1), d1.addr)
    p = client.recv()
    assert (p.op, p.num, p.addr) == (tc.OP_ERROR, 4, d1.addr), p


def test_retransmits_last_data_on_timeout(server, client):
    """RFC 1350 section 2: the sender retransmits its last packet when the
    ACK does not come within the timeout (here: DATA 2, then the final one)."""
    client.send(tc.rrq("b512.bin"))
    d1 = client.recv()
    client.send(tc.ack(1), d1.addr)
    d2 = client.recv()
    assert (d2.num, d2.payload) == (2, b"")
    t0 = time.monotonic()
    again = client.recv(TIMEOUT * 3)
    assert again is not None and again.raw == d2.raw
    assert time.monotonic() - t0 >= TIMEOUT * 0.7
    client.send(tc.ack(2), d1.addr)
    assert client.recv(TIMEOUT * 2.5) is None


def test_retransmission_backs_off(server, client):
    """RFC 1123 4.2.3.2: retransmission uses an exponential backoff (the
    interval grows between repeats of the same DATA)."""
    client.send(tc.rrq("odd.bin"))
    first = client.recv()
    t = [time.monotonic()]
    for _ in range(2):
        p = client.recv(5)
        assert p is not None and p.raw == first.raw
        t.append(time.monotonic())
    g1, g2 = t[1] - t[0], t[2] - t[1]
    # lower bounds only (load can delay a packet, never hasten it): without
    # backoff the second gap would be ~TIMEOUT, below its bound
    assert EARLY * TIMEOUT <= g1 < TIMEOUT + SLACK, (g1, g2)
    assert g2 >= EARLY * 2 * TIMEOUT, (g1, g2)
    client.send(tc.error(0, "bye"), first.addr)


def test_sorcerers_apprentice_duplicate_ack(server, client, tree):
    """RFC 1123 4.2.3.1: every ACK sent twice must not double the DATA:
    exactly one DATA per block arrives over the whole transfer."""
    r = tc.get(server.address, "odd.bin", ack_twice=True, client=client)
    assert r.data == (tree / "odd.bin").read_bytes()
    assert r.packets == len(r.blocks) == 38
    assert client.recv(TIMEOUT * 1.5) is None


def test_block_number_rollover(server, tree):
    """RFC 1350 section 5 (16-bit block numbers; rollover as tftp-hpa,
    RFC 7440 section 4 implies): past 65535 the block number wraps to 0."""
    r = tc.get(server.address, "roll.bin", {"blksize": 8})
    assert sha(r.data) == sha((tree / "roll.bin").read_bytes())
    assert r.blocks[65534:65537] == [65535, 0, 1]
    assert len(r.blocks) == ROLL // 8 + 1 and r.sizes[-1] == ROLL % 8


# =================================================================== RFC 2347


def test_no_options_no_oack(server, client):
    """RFC 2347 (Negotiation Protocol): without options the server answers
    with DATA 1, never an OACK."""
    client.send(tc.rrq("one.bin"))
    assert client.recv().op == tc.OP_DATA


def test_only_unknown_options_no_oack(server, client):
    """RFC 2347 (Negotiation Protocol): if the server accepts none of the
    options it answers as RFC 1350, with DATA 1 and no OACK."""
    client.send(tc.rrq("one.bin", options={"foo": "bar", "rollover": "0", "x" * 40: "1"}))
    p = client.recv()
    assert (p.op, p.num) == (tc.OP_DATA, 1), p


def test_unknown_options_not_echoed(server, client):
    """RFC 2347 (Option Acknowledgment): the OACK holds only options the
    server accepts, unknown ones are left out."""
    p = start_oack(client, "odd.bin", [("rollover", "0"), ("blksize", "1024"), ("foo", "1")])
    assert p.options == {"blksize": "1024"}
    client.send(tc.error(8, "done"), p.addr)


def test_option_names_case_insensitive(server, client):
    """RFC 2347 (Packet Formats: option names are case-insensitive)."""
    p = start_oack(client, "odd.bin", [("BlkSize", "1024"), ("TSIZE", "0"),
                                       ("Timeout", "3")])
    assert p.options == {"blksize": "1024", "tsize": str(ODD), "timeout": "3"}
    client.send(tc.ack(0), p.addr)
    d = client.recv()
    assert (d.op, d.num, len(d.payload)) == (3, 1, 1024)
    client.send(tc.error(0, "bye"), p.addr)


def test_oack_then_ack0_starts_data1_and_oack_retransmitted(server, client):
    """RFC 2347 (Negotiation Protocol): the client ACKs the OACK with block 0
    and DATA 1 follows; an unacknowledged OACK is retransmitted."""
    p = start_oack(client, "odd.bin", {"blksize": 1000})
    again = client.recv(TIMEOUT * 3)
    assert again is not None and again.raw == p.raw and again.addr == p.addr
    client.send(tc.ack(0), p.addr)
    d = client.recv()
    assert (d.op, d.num, len(d.payload), d.addr) == (3, 1, 1000, p.addr)
    client.send(tc.error(0, "bye"), p.addr)


def test_client_error8_after_oack_quiet(server, client, tree):
    """RFC 2347 (Negotiation Protocol): a client that dislikes the OACK
    answers ERROR 8; the transfer ends without a reply or retransmission
    (OVMF's tsize probe), and the re-request is served."""
    opts = {"blksize": 1468, "tsize": 0, "windowsize": 4}
    p = start_oack(client, "roll.bin", opts)
    assert p.options["tsize"] == str(ROLL)
    client.send(tc.error(8, "tsize probe"), p.addr)
    assert client.recv(TIMEOUT * 2.5) is None
    r = tc.get(server.address, "roll.bin", opts)
    assert sha(r.data) == sha((tree / "roll.bin").read_bytes())


@pytest.mark.parametrize("tail", [b"blksize\0", b"blksize", b"\0\0", b"tsize\0\0\0"])
def test_malformed_option_list_handled(server, client, tail):
    """RFC 2347 (Packet Formats): an option without a value or a broken
    option list is answered with an ERROR (4 or 8) or ignored - never a
    hang - and the listener keeps serving."""
    client.send(b"\x00\x01one.bin\0octet\0" + tail)
    p = client.recv()
    assert p is not None
    assert (p.op == tc.OP_ERROR and p.num in (0, 4, 8)) or (p.op, p.num) == (3, 1), p
    if p.op == tc.OP_DATA:
        client.send(tc.ack(1), p.addr)
    assert tc.get(server.address, "one.bin").data == b"\x5a"


@pytest.mark.parametrize("name", ["multicast", "blksize", "tsize", "timeout", "windowsize"])
def test_option_with_empty_value_ignored(server, client, name):
    """RFC 2347 (Negotiation Protocol: an option the server does not accept
    is omitted from the OACK; the value is a NUL-terminated string, which
    may be empty - RFC 2090's ``multicast`` is always sent empty) and this
    server's documented policy (``tftp_engine.negotiate``: invalid values
    are ignored, never refused): the option is dropped and the transfer
    proceeds with defaults."""
    client.send(tc.rrq("odd.bin", options=[(name, b"")]))
    p = client.recv()
    assert (p.op, p.num, len(p.payload)) == (tc.OP_DATA, 1, 512), p
    client.send(tc.error(0, "bye"), p.addr)


def test_duplicate_option_last_wins(server, client):
    """RFC 2347 (Packet Formats: options are case-insensitive, so
    ``blksize`` and ``BLKSIZE`` are the same option); this server documents
    that the last occurrence wins, and echoes it once."""
    p = start_oack(client, "odd.bin", [("blksize", "1024"), ("BLKSIZE", "2048")])
    assert p.raw.lower().count(b"blksize") == 1 and p.options == {"blksize": "2048"}
    client.send(tc.ack(0), p.addr)
    assert len(client.recv().payload) == 2048
    client.send(tc.error(0, "bye"), p.addr)


# =================================================================== RFC 2348


@pytest.mark.parametrize("blksize", [8, 1468, 65464])
def test_blksize_honored(server, tree, blksize):
    """RFC 2348 (Blocksize Option Specification): the OACK echoes the value
    and every DATA but the last carries exactly that many bytes."""
    name = "odd.bin" if blksize < 65464 else "roll.bin"
    want = (tree / name).read_bytes()
    r = tc.get(server.address, name, {"blksize": blksize})
    assert r.oack == {"blksize": str(blksize)}
    assert r.data == want
    assert set(r.sizes[:-1]) == {blksize} and r.sizes[-1] == len(want) % blksize


@pytest.mark.parametrize("asked", [65465, 70000, 10**9])
def test_blksize_above_max_clamped(server, client, asked):
    """RFC 2348 (Blocksize Option Acknowledgment: the server may answer a
    smaller value; 65464 is the largest valid): too-large is clamped."""
    p = start_oack(client, "roll.bin", {"blksize": asked})
    assert p.options == {"blksize": "65464"}
    client.send(tc.ack(0), p.addr)
    assert len(client.recv().payload) == 65464
    client.send(tc.error(0, "bye"), p.addr)


@pytest.mark.parametrize("asked", ["7", "0", "1", "-512", "abc", "1e3"])
def test_blksize_invalid_ignored(server, client, asked):
    """RFC 2348 (valid values 8..65464); this server ignores invalid values
    (documented in ``tftp_engine.negotiate``): no OACK, 512-byte DATA."""
    client.send(tc.rrq("odd.bin", options={"blksize": asked}))
    p = client.recv()
    assert (p.op, p.num, len(p.payload)) == (tc.OP_DATA, 1, 512), p
    client.send(tc.error(0, "bye"), p.addr)


# =================================================================== RFC 2349


def test_tsize_zero_returns_size(server, client):
    """RFC 2349 (Transfer Size Option): tsize 0 in an RRQ comes back in the
    OACK as the file's size in octets."""
    for name, size in (("odd.bin", ODD), ("empty.bin", 0)):
        p = start_oack(client, name, {"tsize": 0})
        assert p.options == {"tsize": str(size)}
        client.send(tc.error(8, "probe"), p.addr)


def test_tsize_netascii(server, client):
    """RFC 2349 (Transfer Size Option) in netascii mode: the server either
    leaves tsize out (documented policy) or gives the size on the wire."""
    client.send(tc.rrq("text.txt", mode=b"netascii", options={"tsize": 0}))
    p = client.recv()
    if p.op == tc.OP_OACK:
        assert p.options.get("tsize", str(len(netascii(TEXT)))) == str(len(netascii(TEXT)))
    else:
        assert (p.op, p.num) == (tc.OP_DATA, 1), p
    client.send(tc.error(0, "bye"), p.addr)


@pytest.mark.parametrize("value", ["1", "255", "17"])
def test_timeout_echoed(server, client, value):
    """RFC 2349 (Timeout Interval Option): a timeout of 1..255 seconds is
    echoed unchanged in the OACK."""
    p = start_oack(client, "odd.bin", {"timeout": value})
    assert p.options == {"timeout": value}
    client.send(tc.error(8, "done"), p.addr)


@pytest.mark.parametrize("value", ["0", "256", "-1", "abc", "2.5"])
def test_timeout_out_of_range_not_echoed(server, client, value):
    """RFC 2349 (Timeout Interval Option: valid values 1..255): others are
    not acknowledged (with no other option: plain DATA 1)."""
    client.send(tc.rrq("odd.bin", options={"timeout": value}))
    p = client.recv()
    assert (p.op, p.num) == (tc.OP_DATA, 1), p
    client.send(tc.error(0, "bye"), p.addr)


def test_timeout_used_for_retransmission(server, client):
    """RFC 2349 (Timeout Interval Option): the negotiated timeout is the
    retransmission interval (1 s asked vs the server's 0.5 s default)."""
    p = start_oack(client, "odd.bin", {"timeout": 1})
    t0 = time.monotonic()
    again = client.recv(3)
    gap = time.monotonic() - t0
    assert again is not None and again.raw == p.raw
    # the default (0.5 s) would retransmit well before EARLY * 1.0 s
    assert EARLY * 1.0 <= gap < 1.0 + SLACK, gap
    client.send(tc.error(0, "bye"), p.addr)


# =================================================================== RFC 7440


def test_windowsize_echoed(server, client):
    """RFC 7440 section 3: a windowsize the server accepts is echoed in the
    OACK (same value when it is within the server's limit)."""
    p = start_oack(client, "odd.bin", {"windowsize": 4, "blksize": 1024})
    assert p.options == {"windowsize": "4", "blksize": "1024"}
    client.send(tc.error(8, "done"), p.addr)


def test_window_sent_before_ack(server, client):
    """RFC 7440 section 4: after ACK 0 the server sends windowsize DATA
    packets back to back and then waits for an ACK."""
    p = start_oack(client, "odd.bin", {"windowsize": 4})
    client.send(tc.ack(0), p.addr)
    got = client.recv_all(quiet=0.2)
    assert [d.num for d in got] == [1, 2, 3, 4]
    client.send(tc.error(0, "bye"), p.addr)


def test_window_mid_ack_resumes_after_acked(server, client, tree):
    """RFC 7440 section 4: an ACK for a block inside the window (the
    receiver lost the next one) makes the sender start a new window right
    after the ACKed block."""
    want = (tree / "odd.bin").read_bytes()
    p = start_oack(client, "odd.bin", {"windowsize": 4})
    client.send(tc.ack(0), p.addr)
    first = client.recv_all(quiet=0.2)
    assert [d.num for d in first] == [1, 2, 3, 4]
    client.send(tc.ack(2), p.addr)
    second = client.recv_all(quiet=0.2)
    assert [d.num for d in second] == [3, 4, 5, 6]
    assert second[0].payload == want[1024:1536]
    client.send(tc.error(0, "bye"), p.addr)


def test_window_lost_block_recovers_without_timeout(server, tree):
    """RFC 7440 section 4: a receiver that loses a DATA ACKs the last block
    it got in order and drops the rest of the window; the sender restarts
    from the next block, so one lost packet does not cost a timeout."""
    t0 = time.monotonic()
    r = tc.get(server.address, "odd.bin", {"windowsize": 8}, drop={3, 20})
    elapsed = time.monotonic() - t0
    assert r.data == (tree / "odd.bin").read_bytes()
    assert elapsed < TIMEOUT * 0.8, f"{elapsed:.2f} s: stalled until the retransmit timer"


def test_window_timeout_resends_from_last_ack(server, client):
    """RFC 7440 section 4: when no ACK arrives in time the sender resends
    starting at the block after the last one ACKed."""
    p = start_oack(client, "odd.bin", {"windowsize": 4})
    client.send(tc.ack(0), p.addr)
    assert [d.num for d in client.recv_all(quiet=0.2)] == [1, 2, 3, 4]
    client.send(tc.ack(4), p.addr)
    assert [d.num for d in client.recv_all(quiet=0.2)] == [5, 6, 7, 8]
    first = client.recv(TIMEOUT * 3)
    again = [first, *client.recv_all(quiet=0.2)] if first else []
    nums = [d.num for d in again]
    assert nums and nums[0] == 5, nums
    assert nums == list(range(5, 5 + len(nums))) and len(nums) <= 4
    client.send(tc.error(0, "bye"), p.addr)


def test_window_duplicate_ack_no_extra(server, client):
    """RFC 7440 section 4 with RFC 1123 4.2.3.1: a duplicated ACK for the
    end of a window starts one window, not two."""
    p = start_oack(client, "odd.bin", {"windowsize": 4})
    client.send(tc.ack(0), p.addr)
    client.send(tc.ack(0), p.addr)
    assert [d.num for d in client.recv_all(quiet=0.2)] == [1, 2, 3, 4]
    client.send(tc.ack(4), p.addr)
    client.send(tc.ack(4), p.addr)
    assert [d.num for d in client.recv_all(quiet=0.2)] == [5, 6, 7, 8]
    client.send(tc.error(0, "bye"), p.addr)


@pytest.mark.parametrize("window", [2, 8, 16, 64])
def test_windowed_transfer_complete(server, tree, window):
    """RFC 7440 section 4: a whole windowed transfer, final short block in
    the middle of a window, yields the file; DATA arrive once each."""
    r = tc.get(server.address, "odd.bin", {"windowsize": window, "blksize": 512})
    assert r.oack is not None and r.oack.get("windowsize") == str(window)
    assert r.data == (tree / "odd.bin").read_bytes() and r.packets == 38


@pytest.mark.parametrize("asked", [65, 1000, 65535, 65536])
def test_windowsize_above_limit(server, client, tree, asked):
    """RFC 7440 section 3 (the server may answer a smaller windowsize) and
    the issue's limit 1..64: the OACK value is within 1..64 (or the option
    is left out) and the first window has exactly that many DATA.  65536 is
    out of RFC range; clamping it like a too-large blksize is accepted."""
    p = start_oack(client, "odd.bin", {"windowsize": asked, "blksize": 256})
    w = int(p.options.get("windowsize", 1))
    assert 1 <= w <= 64
    client.send(tc.ack(0), p.addr)
    assert len(client.recv_all(quiet=0.2)) == w
    client.send(tc.error(0, "bye"), p.addr)


@pytest.mark.parametrize("value", ["0", "-4", "abc", "4.0"])
def test_windowsize_invalid_not_echoed(server, client, value):
    """RFC 7440 section 3 (valid values 1..65535): others are not echoed;
    with no other option the answer is plain DATA 1."""
    client.send(tc.rrq("odd.bin", options={"windowsize": value}))
    p = client.recv()
    assert p.op in (tc.OP_DATA, tc.OP_OACK), p
    if p.op == tc.OP_OACK:
        assert "windowsize" not in p.options
    client.send(tc.error(0, "bye"), p.addr)


def test_windowsize_with_rollover(server, tree):
    """RFC 7440 section 4 with 16-bit block numbers: windows that straddle
    65535 -> 0 still deliver every block once, in order."""
    r = tc.get(server.address, "roll.bin", {"blksize": 8, "windowsize": 16})
    assert r.oack == {"blksize": "8", "windowsize": "16"}
    assert sha(r.data) == sha((tree / "roll.bin").read_bytes())
    assert r.blocks[65534:65537] == [65535, 0, 1] and r.packets == len(r.blocks)


# ============================================================== real clients


def run(cmd):
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False)


needs = {c: pytest.mark.skipif(not ok, reason=f"{c} not installed") for c, ok in HAVE.items()}


@needs["tftp"]
@pytest.mark.parametrize("mode,name", [("binary", "odd.bin"), ("binary", "empty.bin"),
                                       ("netascii", "text.txt")])
def test_tftp_hpa(server, tree, tmp_path, mode, name):
    """RFC 1350 sections 5 and 6 against tftp-hpa: octet and netascii
    (the client undoes the CR LF / CR NUL translation)."""
    out = tmp_path / "out"
    r = run(["tftp", LO, str(server.address[1]), "-m", mode, "-c", "get", name, str(out)])
    assert r.returncode == 0 and b"rror" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert sha(out.read_bytes()) == sha((tree / name).read_bytes())


def atftp(server, name, out, *options):
    cmd = ["atftp", "--trace", "--get", "-r", name, "-l", str(out)]
    for o in options:
        cmd += ["--option", o]
    return run([*cmd, LO, str(server.address[1])])


@needs["atftp"]
@pytest.mark.parametrize("window", [4, 16])
def test_atftp_windowsize(server, tree, tmp_path, window):
    """RFC 7440 section 3/4, RFC 2348, RFC 2349 against atftp asking like
    OVMF (blksize 1468, tsize, windowsize 4) and with windowsize 16: the
    OACK carries all three and the file arrives intact."""
    out = tmp_path / "out"
    r = atftp(server, "roll.bin", out, "blksize 1468", "tsize 0", f"windowsize {window}")
    text = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, text[-2000:]
    assert sha(out.read_bytes()) == sha((tree / "roll.bin").read_bytes())
    oack = next(line for line in text.splitlines() if "received OACK" in line)
    assert f"tsize: {ROLL}" in oack and "blksize: 1468" in oack
    assert f"windowsize: {window}" in oack, oack


@needs["curl"]
@pytest.mark.parametrize("blksize", [None, 65464])
def test_curl(server, tree, tmp_path, blksize):
    """RFC 1350 / RFC 2348 against curl: default request (curl asks blksize
    512 and tsize) and ``--tftp-blksize 65464``, sha256 checked."""
    out = tmp_path / "out"
    extra = ["--tftp-blksize", str(blksize)] if blksize else []
    r = run(["curl", "-sS", *extra, f"tftp://{LO}:{server.address[1]}/roll.bin", "-o", str(out)])
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((tree / "roll.bin").read_bytes())


# ====================================================================== fuzz

FUZZ_TOTAL = 100_000
FUZZ_OWN = 6_000  # from the transfer's own TID (one per session, round trips)
FUZZ_FOREIGN = 24_000  # to live transfer sockets from a foreign TID
FUZZ_LISTENER = FUZZ_TOTAL - FUZZ_OWN - FUZZ_FOREIGN
OPTION_NAMES = [b"blksize", b"tsize", b"timeout", b"windowsize", b"BLKSIZE", b"WindowSize",
                b"multicast", b"\xff\xfe", b"", b"rollover"]


def _option_garbage(rnd: random.Random) -> bytes:
    n = rnd.choice([1, 2, 3, 8, 200, 2000])
    out = bytearray()
    for _ in range(n):
        out += rnd.choice(OPTION_NAMES) + b"\0"
        out += rnd.choice([b"0", b"8", b"65464", b"99999999999999999999", b"-1", b"abc",
                           b"", b"\x80\x81", rnd.randbytes(rnd.randrange(1, 8))]) + b"\0"
    if rnd.random() < 0.3:
        out = out[:-1]  # no final NUL / odd list
    return bytes(out)


_GARBAGE: list[bytes] = []


def option_garbage(rnd: random.Random) -> bytes:
    """One of 256 pre-built option lists (huge ones are slow to build)."""
    if not _GARBAGE:
        pool_rnd = random.Random(2347)
        _GARBAGE.extend(_option_garbage(pool_rnd) for _ in range(256))
    return rnd.choice(_GARBAGE)


def mutate(rnd: random.Random, seeds: list[bytes]) -> bytes:
    kind = rnd.randrange(10)
    if kind == 0:  # random opcode + random tail
        return struct.pack("!H", rnd.choice([0, 1, 2, 3, 4, 5, 6, 7, 255, 0xFFFF,
                                             rnd.randrange(65536)])) + \
            rnd.randbytes(rnd.randrange(0, 24))
    if kind == 1:  # an RRQ with option garbage (huge lists included)
        name = rnd.choice([b"one.bin", b"odd.bin", b"caf\xc3\xa9", b"\xff\xfe.bin", b"adir",
                           b"../secret", b"", b"a" * 600])
        mode = rnd.choice([b"octet", b"netascii", b"NETASCII", b"mail", b"\x80", b""])
        return bytes([0, rnd.choice([1, 2])]) + name + b"\0" + mode + b"\0" + \
            option_garbage(rnd)
    if kind == 2:  # pure noise, short or long
        return rnd.randbytes(rnd.choice([0, 1, 2, 3, 4, 5, rnd.randrange(600)]))
    pkt = bytearray(rnd.choice(seeds))
    for _ in range(rnd.randrange(1, 5)):
        op, pos = rnd.randrange(5), rnd.randrange(len(pkt) + 1)
        if op == 0 and pkt:  # bit flip
            i = min(pos, len(pkt) - 1)
            pkt[i] ^= 1 << rnd.randrange(8)
        elif op == 1:  # truncation
            del pkt[pos:]
        elif op == 2:  # extension
            pkt += rnd.randbytes(rnd.randrange(1, 64))
        elif op == 3:  # insert a special byte (NUL, non-UTF-8, separators)
            pkt[pos:pos] = bytes([rnd.choice([0, 0x80, 0xC3, 0xFF, 0x2F, 0x2E])])
        elif pkt:  # random byte
            pkt[min(pos, len(pkt) - 1)] = rnd.randrange(256)
    return bytes(pkt)


def fuzz_seeds() -> list[bytes]:
    return [tc.rrq("one.bin"), tc.rrq("odd.bin", options={"blksize": 1468, "tsize": 0,
                                                          "timeout": 3, "windowsize": 4}),
            tc.rrq("text.txt", b"netascii", {"tsize": 0}), tc.wrq("x.bin"),
            tc.ack(0), tc.ack(1), tc.ack(65535), tc.error(8, "tsize probe"),
            tc.error(0, ""), tc.data(1, b"payload" * 10)]


def paced_send(sender: tc.Client, records: Records, packets, dest_for, budget: float) -> int:
    """Send so that what the server has not processed yet (judged by its
    per-datagram log records) stays well inside the default ``SO_RCVBUF``
    of its sockets: at most 96 datagrams and ~120 KB of kernel memory
    (payload + ~1 KiB of per-skb overhead each).  Returns the count sent."""
    rcvbuf = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cap = min(120_000, rcvbuf.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2)
    rcvbuf.close()
    sent, base, inflight, done = 0, records.processed, deque(), 0
    cost = 0
    deadline = time.monotonic() + budget
    for pkt in packets:
        size = len(pkt) + 1024
        while True:
            processed = records.processed - base
            while done < processed and inflight:
                cost -= inflight.popleft()
                done += 1
            if len(inflight) < 96 and cost + size <= cap:
                break
            if time.monotonic() > deadline:
                return sent
            time.sleep(0.0002)
            sender.drain()
        sender.send(pkt, dest_for(sent))
        inflight.append(size)
        cost += size
        sent += 1
        if sent % 512 == 0:
            sender.drain()
    tc.wait_for(lambda: records.processed - base >= sent, 5)
    return sent


def test_fuzz_100k_mutated_packets(tree, records, tftp_loop):
    """RFC 1350 sections 4/5/7, RFC 2347 (robustness; issue 4 acceptance):
    100,000 seeded mutations - bit flips, truncations, extensions, random
    opcodes, option garbage, huge option lists, non-UTF-8 bytes - sent to
    the listener and to live transfer sockets (from a foreign TID and from
    the transfer's own TID) raise nothing in the server: no ERROR record,
    the loop alive, every datagram processed, and the next valid request is
    served with the right sha256."""
    srv = TftpServer(str(tree), (LO, 0), timeout=3.0, retries=6, max_backoff=8.0, **tftp_loop)
    srv.start()
    rnd = random.Random(0x7F7)
    seeds = fuzz_seeds()
    before_err = len(records.errors)
    old_level, old_prop = log.level, log.propagate
    log.setLevel(logging.DEBUG)
    log.propagate = False  # keep pytest's capture out of the hot path
    owners, fuzzer = [], tc.Client(srv.address, rcvbuf=1 << 20)
    t0 = time.monotonic()
    try:
        # 1) the listener
        gen = (mutate(rnd, seeds) for _ in range(FUZZ_LISTENER))
        base = records.processed
        listener = srv.address
        sent = paced_send(fuzzer, records, gen, lambda i: listener, 40)
        assert sent == FUZZ_LISTENER
        done = records.processed - base
        assert done >= FUZZ_LISTENER, (
            f"listener processed {done} of {sent} (counted by its per-datagram log records "
            f"{Records.PER_DATAGRAM}; if their wording changed, update Records)")

        # 2) live transfer sockets, from a foreign TID
        owners = [tc.Client(srv.address) for _ in range(16)]
        tids = []
        for o in owners:
            o.send(tc.rrq("roll.bin", options={"blksize": 8}))
            p = o.recv()
            assert p is not None and p.op == tc.OP_OACK, p
            tids.append(p.addr)
        gen = (mutate(rnd, seeds) for _ in range(FUZZ_FOREIGN))
        base = records.processed
        sent = paced_send(fuzzer, records, gen, lambda i: tids[i % len(tids)], 30)
        assert sent == FUZZ_FOREIGN
        done = records.processed - base
        assert done >= FUZZ_FOREIGN, f"transfer sockets processed {done} of {sent}"
        for o, tid in zip(owners, tids, strict=True):  # the transfers still go on
            o.drain()
            o.send(tc.ack(0), tid)
            p = o.recv()
            assert (p.op, p.num, len(p.payload)) == (tc.OP_DATA, 1, 8), p

        # 3) from the transfer's own TID: one mutation per fresh session
        names, sent, answered = ["one.bin", "odd.bin"], 0, 0
        while sent < FUZZ_OWN:
            live = []
            for o in owners:
                o.drain()
                o.send(tc.rrq(names[(sent // len(owners)) % 2]))
            want = 1 if names[(sent // len(owners)) % 2] == "one.bin" else 512
            for o in owners:
                while (p := o.recv(2)) is not None:  # skip late replies of the last round
                    if p.op == tc.OP_DATA and p.num == 1 and len(p.payload) == want:
                        live.append((o, p.addr))
                        break
            answered += len(live)
            for o, tid in live:
                o.send(mutate(rnd, seeds), tid)
                sent += 1
        assert answered >= sent  # every fresh RRQ was served
        elapsed = time.monotonic() - t0
        # the next valid request is served and the server survived it all
        for o in owners:
            o.send(tc.error(0, "bye"))  # ignored by the listener (doc)
        r = tc.get(srv.address, "roll.bin", {"blksize": 1468, "tsize": 0})
        assert sha(r.data) == sha((tree / "roll.bin").read_bytes())
        assert srv.is_alive()
        bad = records.errors[before_err:]
        assert not bad, [(r.getMessage(), r.exc_text) for r in bad[:3]]
        assert elapsed < 60, elapsed
    finally:
        log.setLevel(old_level)
        log.propagate = old_prop
        for o in owners:
            o.close()
        fuzzer.close()
        srv.stop()
