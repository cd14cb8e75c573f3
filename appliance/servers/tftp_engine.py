"""Pure parts of the read-only TFTP server: wire constants, packet codec,
option negotiation, path containment and the RRQ decision.

Nothing here touches a socket.  :func:`decide_rrq` opens the file it accepts
(so the decision and the opened inode are the same one) and hands it back in
an :class:`Accept`; the caller owns the returned source and must ``close()``
it.  :mod:`appliance.servers.tftp` wraps these in an ``epoll`` loop.

Codec note: tftpy 0.8.7's decoders raise on malformed input (``struct.error``
on a datagram shorter than 4 bytes, ``UnicodeDecodeError`` on a non-ASCII
file name, ``TftpException`` on missing NUL terminators, odd option lists and
also on empty option values, which RFC 2347 allows), and tftpy's own server
loop lets those escape and die — upstream msoulier/tftpy#140 ("DoS when
parsing a packet with a length less than 2").  Requests are therefore decoded
here (:func:`parse_request`, never raises); tftpy encodes the OACK.  Its ERROR packet
class cannot carry a custom message and has no text for code 0 (``encode``
raises ``KeyError``), and its ``decode`` logs every peer ERROR at level ERROR,
so ERROR packets are encoded and decoded here with ``struct`` instead.
ACK and DATA are on the per-packet hot path and never go through tftpy:
:data:`ACK_DATA` / :data:`DATA_HEADER` are precomputed ``struct.Struct``.

Sources are random access (``pread_into(offset, buffer)``): a windowed
transfer (RFC 7440) resends a whole window from the last ACKed block, so the
session re-reads by offset instead of keeping packets.  Small regular files
are served from a shared in-memory cache keyed by inode, size and times.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tftpy.TftpPacketTypes import TftpPacketOACK

from .tftp_source import (  # re-exported: callers and tests import them from here
    FILE_CACHE,
    BytesSource,
    FileSource,
    NetasciiSource,
    _FileCache,
    _read_whole,
)

log = logging.getLogger("plowshare.tftp")

# Opcodes: RFC 1350 §5; OACK: RFC 2347.
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6

# Error codes: RFC 1350 appendix; 8 added by RFC 2347.
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_ILLEGAL_OP = 4
ERR_UNKNOWN_TID = 5
ERR_OPTIONS = 8

DEFAULT_BLKSIZE = 512  # RFC 1350
BLKSIZE_MIN, BLKSIZE_MAX = 8, 65464  # RFC 2348
TIMEOUT_MIN, TIMEOUT_MAX = 1, 255  # RFC 2349 (seconds)
WINDOWSIZE_MIN, WINDOWSIZE_MAX = 1, 64  # RFC 7440 allows 65535; we clamp to 64
BLOCK_MODULO = 1 << 16  # block numbers are 16 bit; we wrap 65535 -> 0
MODES = ("octet", "netascii")  # RFC 1350; "mail" is obsolete and refused

#: ``generate(rel_path, client)``: bytes to serve, a :class:`~pathlib.Path` of a
#: file to serve instead (e.g. a distro's kernel, outside the root), or ``None``.
GenerateFn = Callable[[str, tuple[str, int]], bytes | Path | None]

DATA_HEADER = struct.Struct("!HH")  # opcode, block: pack_into a send buffer
ACK_DATA = struct.Struct("!HH")  # opcode, block: unpack_from a receive buffer


# ---------------------------------------------------------------- decisions


@dataclass
class Accept:
    """Serve ``source`` (``size`` bytes before any netascii expansion).

    ``options`` is what goes into the OACK, already as strings, in the order
    the client asked; empty means "no OACK, send DATA 1 straight away".
    """

    source: object
    size: int
    options: dict[str, str] = field(default_factory=dict)
    blksize: int = DEFAULT_BLKSIZE
    timeout: float | None = None
    path: str = ""
    windowsize: int = 1

    def close(self) -> None:
        self.source.close()


@dataclass(frozen=True)
class Refuse:
    """Answer ERROR ``code`` with ``message`` and forget the request."""

    code: int
    message: str


@dataclass(frozen=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    timeout: int | None = None
    tsize: bool = False
    order: tuple[str, ...] = ()
    windowsize: int = 1


def _int_option(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def negotiate(options: dict[str, str], mode: str = "octet") -> Negotiated:
    """Pick the options we accept (RFC 2347: names case-insensitive).

    Policy (never ERROR 8 — an ignored option just falls back to the RFC
    1350 default, which every client copes with):

    - ``blksize``: non-numeric or < 8 is ignored; > 65464 is clamped.
    - ``timeout``: accepted in 1..255, otherwise ignored.
    - ``tsize``: acknowledged with the real size in octet mode only; in
      netascii mode the size on the wire is unknown up front, so it is
      ignored (as tftpd-hpa does).  The client's value (RFC 2349: 0 in a
      read request) must be a decimal number, else the option is ignored.
    - ``windowsize`` (RFC 7440): non-numeric or < 1 is ignored; > 64 is
      clamped to 64 (the RFC lets the server answer a smaller value).
    - anything else is ignored.
    Duplicate names (any case): the last one wins.
    """
    blksize, timeout, windowsize, order = DEFAULT_BLKSIZE, None, 1, []
    for raw_name, value in options.items():
        name = raw_name.lower()
        accepted = False
        if name == "blksize":
            n = _int_option(value)
            if n is not None and n >= BLKSIZE_MIN:
                blksize, accepted = min(n, BLKSIZE_MAX), True
        elif name == "timeout":
            n = _int_option(value)
            if n is not None and TIMEOUT_MIN <= n <= TIMEOUT_MAX:
                timeout, accepted = n, True
        elif name == "tsize":
            accepted = mode == "octet" and _int_option(value) is not None
        elif name == "windowsize":
            n = _int_option(value)
            if n is not None and n >= WINDOWSIZE_MIN:
                windowsize, accepted = min(n, WINDOWSIZE_MAX), True
        if accepted and name not in order:
            order.append(name)
    return Negotiated(blksize, timeout, tsize="tsize" in order, order=tuple(order),
                      windowsize=windowsize)


def normalise_path(filename: str) -> str | Refuse:
    """Turn a requested name into a root-relative path, or refuse it.

    Backslashes count as separators (Windows-style PXE configs), leading
    slashes are dropped (GRUB sends ``/grub/grub.cfg``), ``.`` and empty
    components vanish.  Any ``..`` component is refused outright, even one
    that would stay inside the root; so are control characters.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename):
        return Refuse(ERR_ACCESS, "illegal character in file name")
    parts = [p for p in filename.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return Refuse(ERR_ACCESS, "access violation")
    if not parts:
        return Refuse(ERR_NOT_FOUND, "file not found")
    return "/".join(parts)


def open_contained(root: str, rel: str, cache: _FileCache | None = FILE_CACHE
                   ) -> FileSource | BytesSource | Refuse:
    """Open ``root/rel`` read-only if it is a regular file inside ``root``.

    ``realpath`` resolves every symlink; the result must stay under the
    (real) root.  Only regular files are opened: a FIFO would block and a
    device could have side effects, so the type is checked with ``stat``
    before ``open`` and again with ``fstat`` after (``O_NOFOLLOW`` and
    ``O_NONBLOCK`` close the race in between).  Files up to
    ``cache.file_max`` bytes come back as a :class:`BytesSource` from
    ``cache`` (keyed by the ``fstat`` of the opened inode, so a replaced or
    rewritten file is a new entry) and hold no descriptor.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        return Refuse(ERR_ACCESS, "access violation")
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return Refuse(ERR_NOT_FOUND, "file not found")
    except OSError:
        return Refuse(ERR_ACCESS, "access violation")
    if not stat.S_ISREG(st.st_mode):
        return Refuse(ERR_ACCESS, "not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(real, flags)
    except OSError:
        return Refuse(ERR_ACCESS, "access violation")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return Refuse(ERR_ACCESS, "not a regular file")
        if cache is not None and st.st_size <= cache.file_max:
            key = cache.key(st)
            data = cache.get(key)
            if data is None:
                data = _read_whole(fd, st.st_size)
                if data is not None:
                    cache.put(key, data)
            if data is not None:
                os.close(fd)
                return BytesSource(data)
    except OSError:
        os.close(fd)
        return Refuse(ERR_ACCESS, "access violation")
    return FileSource(fd, st.st_size)


def _generated(generate: GenerateFn | None, rel: str, client
               ) -> bytes | Path | None | Refuse:
    if generate is None:
        return None
    try:
        data = generate(rel, client)
    except Exception:
        log.exception("generate(%r, %s) raised", rel, client)
        return Refuse(ERR_UNDEFINED, "internal error")
    if data is not None and not isinstance(data, (bytes, bytearray, Path)):
        log.error("generate(%r) returned %s, not bytes or a Path", rel, type(data).__name__)
        return Refuse(ERR_UNDEFINED, "internal error")
    return data


def decide_rrq(filename: str, mode: str, options: dict[str, str], root: str,
               generate: GenerateFn | None = None,
               client: tuple[str, int] = ("0.0.0.0", 0)) -> Accept | Refuse:
    """Decide one read request; the only place that says yes or no.

    ``generate(rel_path, client)`` is asked first, with the normalised
    root-relative path; bytes are served from memory, a ``Path`` is opened
    as :func:`open_contained` opens a file in the root (a regular file, after
    symlinks), ``None`` falls through to the file system under ``root``, an
    exception is logged and refused with ERROR 0.
    On :class:`Accept` the caller owns (and must close) ``accept.source``.
    """
    mode = mode.lower()
    if mode not in MODES:
        return Refuse(ERR_ILLEGAL_OP, f"unsupported mode {mode[:16]!r}")
    rel = normalise_path(filename)
    if isinstance(rel, Refuse):
        return rel
    got = _generated(generate, rel, client)
    if isinstance(got, Refuse):
        return got
    if isinstance(got, (bytes, bytearray)):
        source, size = BytesSource(got), len(got)
    else:
        real = os.path.realpath(got) if got is not None else None
        source = open_contained(root, rel) if real is None else \
            open_contained(os.path.dirname(real), os.path.basename(real))
        if isinstance(source, Refuse):
            return source
        size = source.size
    neg = negotiate(options, mode)
    if mode == "netascii":
        source = NetasciiSource(source, keep=(neg.windowsize + 1) * neg.blksize)
    values = {"blksize": str(neg.blksize), "timeout": str(neg.timeout), "tsize": str(size),
              "windowsize": str(neg.windowsize)}
    return Accept(source, size, {n: values[n] for n in neg.order}, neg.blksize,
                  neg.timeout, rel, neg.windowsize)


# ------------------------------------------------------------------- codec


@dataclass(frozen=True)
class Request:
    opcode: int
    filename: str
    mode: str
    options: dict[str, str]


def opcode_of(datagram: bytes) -> int | None:
    return struct.unpack("!H", datagram[:2])[0] if len(datagram) >= 2 else None


def parse_request(datagram: bytes) -> Request | Refuse:
    """Decode an RRQ/WRQ; anything malformed becomes ERROR 4, never an exception.

    Decoded here rather than with tftpy: tftpy 0.8.7's
    ``TftpPacketWithOptions.decode_options`` raises on any empty string, but
    RFC 2347 values may be empty (RFC 2090's ``multicast`` always is), and
    such an option should just be ignored.  Rules: file name and mode
    non-empty ASCII, every field NUL-terminated, options in name/value
    pairs; one stray trailing NUL (padding) is tolerated; empty names are
    dropped; the mode is lower-cased.
    """
    data = bytes(datagram)
    op = opcode_of(data)
    if op not in (OP_RRQ, OP_WRQ):
        return Refuse(ERR_ILLEGAL_OP, "illegal TFTP operation")
    if not data.endswith(b"\0") or len(data) < 4:
        return Refuse(ERR_ILLEGAL_OP, "malformed request (no NUL terminator)")
    fields = data[2:-1].split(b"\0")
    if len(fields) < 2 or not fields[0] or not fields[1]:
        return Refuse(ERR_ILLEGAL_OP, "malformed request (file name or mode missing)")
    try:
        filename, mode, *rest = (f.decode("ascii") for f in fields)
    except UnicodeDecodeError:
        return Refuse(ERR_ILLEGAL_OP, "malformed request (non-ASCII)")
    if len(rest) % 2 and rest[-1] == "":
        rest.pop()  # NUL padding after the last field
    if len(rest) % 2:
        return Refuse(ERR_ILLEGAL_OP, "malformed request (odd option list)")
    options = {name: value for name, value in zip(rest[::2], rest[1::2], strict=True)
               if name}
    return Request(op, filename, mode.lower(), options)


def parse_ack(datagram) -> int | None:
    """Block number of an ACK (trailing bytes ignored), else ``None``.

    Plain ``struct``: tftpy raises ``struct.error`` on a short ACK (#140)."""
    if len(datagram) < 4:
        return None
    op, block = ACK_DATA.unpack_from(datagram)
    return block if op == OP_ACK else None


def parse_error(datagram: bytes) -> tuple[int, str]:
    """(code, message) of a peer's ERROR; lenient, never raises."""
    code = struct.unpack("!H", datagram[2:4])[0] if len(datagram) >= 4 else 0
    msg = datagram[4:].split(b"\0", 1)[0][:128]
    return code, msg.decode("ascii", "replace")


def encode_error(code: int, message: str) -> bytes:
    text = message.encode("ascii", "replace")[:255]
    return struct.pack("!HH", OP_ERROR, code) + text + b"\0"


def encode_oack(options: dict[str, str]) -> bytes:
    pkt = TftpPacketOACK()
    pkt.options = options
    return pkt.encode().buffer


def encode_data(block: int, data: bytes) -> bytes:
    return DATA_HEADER.pack(OP_DATA, block) + data
