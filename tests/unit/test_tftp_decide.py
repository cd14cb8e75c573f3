"""Pure TFTP decisions: containment, option negotiation, codec, generated files."""

from __future__ import annotations

import os
import struct

import pytest

from appliance.servers.tftp_engine import (
    BLKSIZE_MAX,
    ERR_ACCESS,
    ERR_ILLEGAL_OP,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    FILE_CACHE,
    OP_ERROR,
    Accept,
    BytesSource,
    FileSource,
    NetasciiSource,
    Refuse,
    _FileCache,
    decide_rrq,
    encode_data,
    encode_error,
    encode_oack,
    negotiate,
    normalise_path,
    parse_ack,
    parse_error,
    parse_request,
)

CLIENT = ("192.0.2.10", 2000)


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "root"
    (r / "pxelinux.cfg").mkdir(parents=True)
    (r / "pxelinux.0").write_bytes(b"P" * 1000)
    (r / "pxelinux.cfg" / "default").write_bytes(b"DEFAULT local\n")
    (tmp_path / "secret").write_bytes(b"outside")
    return r


def decide(root, name, mode="octet", options=None, generate=None):
    d = decide_rrq(name, mode, options or {}, str(root), generate, CLIENT)
    if isinstance(d, Accept):
        d.close()
    return d


def read_all(source, n=7):
    out = b""
    while chunk := source.read(n):
        out += chunk
    return out


# ------------------------------------------------------------- containment


@pytest.mark.parametrize("name", ["../../etc/passwd", "../secret", "a/../pxelinux.0",
                                  "/../secret", "..\\secret", "pxelinux.cfg/../../secret"])
def test_traversal_refused(root, name):
    assert decide(root, name) == Refuse(ERR_ACCESS, "access violation")


def test_symlink_out_of_root_refused(root, tmp_path):
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "devnull").symlink_to("/dev/null")
    (root / "etcdir").symlink_to("/etc")
    assert decide(root, "escape") == Refuse(ERR_ACCESS, "access violation")
    assert decide(root, "devnull") == Refuse(ERR_ACCESS, "access violation")
    assert decide(root, "etcdir/passwd") == Refuse(ERR_ACCESS, "access violation")


def test_symlink_inside_root_followed(root):
    (root / "alias.0").symlink_to("pxelinux.0")
    d = decide(root, "alias.0")
    assert isinstance(d, Accept) and d.size == 1000


@pytest.mark.parametrize("name", ["pxelinux.cfg", "/pxelinux.cfg/", "/", "", "."])
def test_directories_and_empty_names_refused(root, name):
    d = decide(root, name)
    assert isinstance(d, Refuse) and d.code in (ERR_NOT_FOUND, ERR_ACCESS)


def test_fifo_refused_without_blocking(root):
    os.mkfifo(root / "fifo")
    assert decide(root, "fifo") == Refuse(ERR_ACCESS, "not a regular file")


def test_missing_file_not_found(root):
    assert decide(root, "nope") == Refuse(ERR_NOT_FOUND, "file not found")
    assert decide(root, "pxelinux.0/x").code == ERR_NOT_FOUND


@pytest.mark.parametrize("name", ["/pxelinux.0", "//pxelinux.0", "./pxelinux.0",
                                  "\\pxelinux.0"])
def test_leading_slash_is_relative_to_root(root, name):
    d = decide(root, name)
    assert isinstance(d, Accept) and d.path == "pxelinux.0" and d.size == 1000


@pytest.mark.parametrize("name", ["a\nb", "pxe\x00", "x\x7f", "\x1b[2J"])
def test_control_characters_refused(root, name):
    assert decide(root, name).code == ERR_ACCESS


def test_overlong_and_odd_names_refused(root):
    assert decide(root, "a" * 5000).code in (ERR_NOT_FOUND, ERR_ACCESS)
    assert decide(root, "x/" * 3000 + "y").code in (ERR_NOT_FOUND, ERR_ACCESS)
    (root / "loop").symlink_to("loop")
    assert decide(root, "loop").code == ERR_ACCESS


def test_normalise_path():
    assert normalise_path("/grub//x86_64-efi/./grub.cfg") == "grub/x86_64-efi/grub.cfg"
    assert normalise_path("boot\\x86\\wdsnbp.com") == "boot/x86/wdsnbp.com"
    assert isinstance(normalise_path("a/.."), Refuse)


def test_mode_checked(root):
    assert decide(root, "pxelinux.0", mode="mail").code == ERR_ILLEGAL_OP
    assert isinstance(decide(root, "pxelinux.0", mode="OCTET"), Accept)


# ----------------------------------------------------------------- options


def test_no_options_means_no_oack(root):
    d = decide(root, "pxelinux.0")
    assert d.options == {} and d.blksize == 512 and d.timeout is None


def test_option_names_case_insensitive(root):
    d = decide(root, "pxelinux.0", options={"BLKSIZE": "1432", "TSize": "0", "TimeOut": "3"})
    assert d.options == {"blksize": "1432", "tsize": "1000", "timeout": "3"}
    assert (d.blksize, d.timeout) == (1432, 3)


@pytest.mark.parametrize("value", ["abc", "", "7", "0", "-1", "1e3", "١٢٣٤", "0x400"])
def test_bad_blksize_ignored(value):
    n = negotiate({"blksize": value})
    assert n.blksize == 512 and "blksize" not in n.order


@pytest.mark.parametrize(("value", "expect"), [("8", 8), ("512", 512), ("1468", 1468),
                                               ("65464", 65464), ("65465", BLKSIZE_MAX),
                                               ("99999999", BLKSIZE_MAX), (" 1024", 1024)])
def test_blksize_range_and_clamp(value, expect):
    n = negotiate({"blksize": value})
    assert n.blksize == expect and n.order == ("blksize",)


@pytest.mark.parametrize(("value", "accepted"), [("1", True), ("255", True), ("0", False),
                                                 ("256", False), ("x", False)])
def test_timeout_range(value, accepted):
    n = negotiate({"timeout": value})
    assert (n.timeout is not None) is accepted and ("timeout" in n.order) is accepted


def test_unknown_options_not_echoed(root):
    d = decide(root, "pxelinux.0", options={"windowsize": "0", "multicast": "", "tsize": "0"})
    assert d.options == {"tsize": "1000"} and d.windowsize == 1


@pytest.mark.parametrize(("value", "accepted"), [("0", True), ("12345", True), ("", False),
                                                 ("x", False), ("-1", False)])
def test_tsize_value_must_be_a_number(value, accepted):
    assert ("tsize" in negotiate({"tsize": value}).order) is accepted


def test_tsize_ignored_in_netascii(root):
    d = decide(root, "pxelinux.0", mode="netascii", options={"tsize": "0", "blksize": "1024"})
    assert d.options == {"blksize": "1024"}


def test_duplicate_option_last_wins():
    assert negotiate({"blksize": "1024", "BLKSIZE": "2048"}).blksize == 2048


# --------------------------------------------------------- generated files


def test_generated_file_served_before_filesystem(root):
    calls = []

    def gen(path, client):
        calls.append((path, client))
        return b"generated" if path.startswith("pxelinux.cfg/01-") else None

    d = decide_rrq("/pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "octet", {"tsize": "0"},
                   str(root), gen, CLIENT)
    assert isinstance(d, Accept) and read_all(d.source) == b"generated"
    assert d.options == {"tsize": "9"}
    d.close()
    fallthrough = decide(root, "pxelinux.cfg/default", generate=gen)
    assert fallthrough.size == len(b"DEFAULT local\n")
    assert calls == [("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", CLIENT),
                     ("pxelinux.cfg/default", CLIENT)]


def test_generate_overrides_existing_file(root):
    d = decide_rrq("pxelinux.0", "octet", {}, str(root), lambda p, c: b"x", CLIENT)
    assert d.size == 1
    d.close()


def test_generate_not_called_for_refused_paths(root):
    def gen(path, client):
        raise AssertionError("called")

    assert decide(root, "../../etc/passwd", generate=gen).code == ERR_ACCESS


def test_generate_exception_is_error_0(root, caplog):
    def gen(path, client):
        raise RuntimeError("boom")

    assert decide(root, "x", generate=gen) == Refuse(ERR_UNDEFINED, "internal error")
    assert "boom" in caplog.text


def test_generate_wrong_type_is_error_0(root):
    assert decide(root, "x", generate=lambda p, c: "str").code == ERR_UNDEFINED


# ------------------------------------------------------------------ netascii


def test_netascii_conversion_across_chunks():
    data = b"line1\nline2\r\nbare\rcr\n" * 50 + b"\n"
    expect = data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    for n in (1, 2, 3, 7, 512):
        src = NetasciiSource(BytesSource(data))
        chunks = []
        while True:
            c = src.read(n)
            chunks.append(c)
            if len(c) < n:
                break
        assert b"".join(chunks) == expect
        assert all(len(c) == n for c in chunks[:-1])


def test_file_source_reads_blocks(root):
    d = decide_rrq("pxelinux.0", "octet", {}, str(root), None, CLIENT)
    blocks = [d.source.read(512), d.source.read(512), d.source.read(512)]
    d.close()
    assert [len(b) for b in blocks] == [512, 488, 0]


# --------------------------------------------------------------------- codec


def test_parse_request_ok():
    req = parse_request(b"\x00\x01/pxelinux.0\x00OCTET\x00blksize\x001432\x00tsize\x000\x00")
    assert (req.opcode, req.filename, req.mode) == (1, "/pxelinux.0", "octet")
    assert req.options == {"blksize": "1432", "tsize": "0"}


@pytest.mark.parametrize("dgram", [
    b"", b"\x00", b"\x00\x01", b"\x00\x01abc", b"\x00\x01abc\x00octet",
    b"\x00\x01caf\xc3\xa9\x00octet\x00", b"\x00\x01\xff\xfe\x00octet\x00",
    b"\x00\x01a\x00octet\x00blksize\x00", b"\x00\x01\x00octet\x00", b"\x00\x01a\x00\x00",
    b"\x00\x01a\x00octet\x00x\x00y\x00z", b"\x00\x03\x00\x01data", b"\x00\x09zz",
    b"\x00\x01a\x00octet\x00bl\xffk\x001\x00", b"\x00\x01a\x00octet\x00a\x00b\x00c\x00d",
])
def test_parse_request_malformed_is_refusal(dgram):
    assert parse_request(dgram).code == ERR_ILLEGAL_OP


@pytest.mark.parametrize(("dgram", "options"), [
    (b"\x00\x01a\x00octet\x00blksize\x00\x00", {"blksize": ""}),
    (b"\x00\x01a\x00octet\x00multicast\x00\x00tsize\x000\x00", {"multicast": "", "tsize": "0"}),
    (b"\x00\x01a\x00octet\x00\x00", {}),  # one NUL of padding
    (b"\x00\x01a\x00octet\x00\x00\x00", {}),  # an empty name: dropped
    (b"\x00\x02a\x00Netascii\x00", {}),
])
def test_parse_request_empty_values_and_padding(dgram, options):
    req = parse_request(dgram)
    assert (req.filename, req.options) == ("a", options)
    assert req.mode in ("octet", "netascii") and req.opcode == dgram[1]
    assert not {"blksize", "multicast"} & set(negotiate(req.options).order)


def test_parse_ack_and_error():
    assert parse_ack(b"\x00\x04\x12\x34") == 0x1234
    assert parse_ack(b"\x00\x04\x00\x01junk") == 1
    assert parse_ack(b"\x00\x04") is None and parse_ack(b"\x00\x04\x00") is None
    assert parse_error(b"\x00\x05\x00\x08no\x00") == (8, "no")
    assert parse_error(b"\x00\x05") == (0, "")
    assert parse_error(b"\x00\x05\x00\x01\xff") == (1, "\ufffd")


def test_encoders():
    assert encode_error(0, "busy") == struct.pack("!HH", OP_ERROR, 0) + b"busy\0"
    assert encode_data(65535, b"ab") == b"\x00\x03\xff\xffab"
    assert encode_data(1, b"") == b"\x00\x03\x00\x01"
    assert encode_oack({"blksize": "1432", "tsize": "9"}) == \
        b"\x00\x06blksize\x001432\x00tsize\x009\x00"


# ---------------------------------------------------------------- windowsize


@pytest.mark.parametrize(("value", "expect"), [("1", 1), ("4", 4), ("16", 16), ("64", 64),
                                               ("65", 64), ("65535", 64), (" 8", 8)])
def test_windowsize_range_and_clamp(value, expect):
    n = negotiate({"WindowSize": value})
    assert n.windowsize == expect and n.order == ("windowsize",)


@pytest.mark.parametrize("value", ["0", "-1", "", "x", "1.5", "0x10"])
def test_bad_windowsize_ignored(value):
    n = negotiate({"windowsize": value})
    assert n.windowsize == 1 and n.order == ()


def test_windowsize_echoed_in_order_asked(root):
    d = decide(root, "pxelinux.0", options={"windowsize": "4", "tsize": "0", "blksize": "1468"})
    assert list(d.options.items()) == [("windowsize", "4"), ("tsize", "1000"),
                                       ("blksize", "1468")]
    assert (d.windowsize, d.blksize) == (4, 1468)


# ------------------------------------------------------------------- sources


def test_sources_read_by_offset(root, tmp_path):
    big = tmp_path / "root" / "big.bin"
    big.write_bytes(bytes(range(256)) * 40000)  # above the cache limit: a file
    d = decide_rrq("big.bin", "octet", {}, str(root), None, CLIENT)
    assert isinstance(d.source, FileSource)
    buf = bytearray(512)
    assert d.source.pread_into(1000, memoryview(buf)) == 512
    assert bytes(buf) == (bytes(range(256)) * 4)[1000 % 256:1000 % 256 + 512]
    assert d.source.pread_into(len(bytes(range(256)) * 40000) - 10, memoryview(buf)) == 10
    d.close()
    m = BytesSource(b"abcdef")
    assert m.pread_into(4, memoryview(buf)) == 2 and buf[:2] == b"ef"
    assert m.pread_into(6, memoryview(buf)) == 0


def test_small_files_served_from_shared_cache(root):
    FILE_CACHE.clear()
    a = decide_rrq("pxelinux.0", "octet", {}, str(root), None, CLIENT)
    b = decide_rrq("pxelinux.0", "octet", {}, str(root), None, CLIENT)
    assert isinstance(a.source, BytesSource) and a.source._data is b.source._data
    a.close()
    b.close()
    (root / "pxelinux.0").write_bytes(b"Q" * 1000)  # rewritten: a new inode state
    os.utime(root / "pxelinux.0", ns=(1, 1))
    c = decide_rrq("pxelinux.0", "octet", {}, str(root), None, CLIENT)
    assert read_all(c.source) == b"Q" * 1000
    c.close()


def test_file_cache_bounded():
    cache = _FileCache(file_max=10, total_max=25)
    for i in range(5):
        cache.put((i,), b"x" * 10)
    cache.put((9,), b"y" * 11)  # too big to cache
    assert [k for k in [(0,), (1,), (2,), (3,), (4,), (9,)] if cache.get(k)] == [(3,), (4,)]


def test_netascii_resend_within_window():
    data = b"a\nb\r" * 100000  # expanded: 4 bytes -> 6
    wire = data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    src = NetasciiSource(BytesSource(data), keep=4 * 512)
    buf = memoryview(bytearray(512))
    for block in range(0, len(wire) // 512 + 1, 4):  # windows of 4, each sent twice
        for _ in range(2):
            for k in range(block, block + 4):
                n = src.pread_into(k * 512, buf)
                assert bytes(buf[:n]) == wire[k * 512:(k + 1) * 512]
    assert len(src._buf) < 4 * 512 + 2 * NetasciiSource.CHUNK  # old data dropped
    with pytest.raises(ValueError):
        src.pread_into(0, buf)
