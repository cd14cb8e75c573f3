"""Pure parts of the read-only TFTP server: wire constants, packet codec,
option negotiation, path containment and the RRQ decision.

Nothing here touches a socket.  :func:`decide_rrq` opens the file it accepts
(so the decision and the opened inode are the same one) and hands it back in
an :class:`Accept`; the caller owns the returned source and must ``close()``
it.  :mod:`appliance.servers.tftp` wraps these in a ``selectors`` loop.

Codec note: we decode with tftpy 0.8.7's ``TftpPacketFactory`` but always
inside ``try``: its decoders raise on malformed input (``struct.error`` on a
datagram shorter than 4 bytes, ``UnicodeDecodeError`` on a non-ASCII file
name, ``TftpException`` on missing NUL terminators or odd option lists), and
tftpy's own server loop lets those escape and die — upstream msoulier/tftpy#140
("DoS when parsing a packet with a length less than 2").  Its ERROR packet
class cannot carry a custom message and has no text for code 0 (``encode``
raises ``KeyError``), and its ``decode`` logs every peer ERROR at level ERROR,
so ERROR packets are encoded and decoded here with ``struct`` instead.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import (
    TftpPacketACK,
    TftpPacketDAT,
    TftpPacketInitial,
    TftpPacketOACK,
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
BLOCK_MODULO = 1 << 16  # block numbers are 16 bit; we wrap 65535 -> 0
MODES = ("octet", "netascii")  # RFC 1350; "mail" is obsolete and refused

GenerateFn = Callable[[str, tuple[str, int]], bytes | None]


# ----------------------------------------------------------------- sources


class BytesSource:
    """Generated content served from memory."""

    def __init__(self, data: bytes):
        self._view = memoryview(bytes(data))
        self._pos = 0

    def read(self, n: int) -> bytes:
        chunk = self._view[self._pos:self._pos + n].tobytes()
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        self._view.release()


class FileSource:
    """A regular file read block by block from an already-open handle."""

    def __init__(self, fobj: io.BufferedReader):
        self._f = fobj
        self.size = os.fstat(fobj.fileno()).st_size

    def read(self, n: int) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


class NetasciiSource:
    """Wraps a source, converting LF -> CR LF and CR -> CR NUL (RFC 764).

    The mapping is byte-local, so chunk boundaries need no state; only the
    surplus of an expanded chunk is kept for the next read.  ``read(n)``
    returns exactly ``n`` bytes until the end of the data.
    """

    def __init__(self, inner):
        self._inner = inner
        self._pending = b""

    def read(self, n: int) -> bytes:
        buf = self._pending
        while len(buf) < n:
            chunk = self._inner.read(n)
            if not chunk:
                break
            buf += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        self._pending = buf[n:]
        return buf[:n]

    def close(self) -> None:
        self._inner.close()


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
      ignored (as tftpd-hpa does).  The client's value is not checked.
    - anything else (``windowsize`` too, for now) is ignored.
    Duplicate names (any case): the last one wins.
    """
    blksize, timeout, order = DEFAULT_BLKSIZE, None, []
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
            accepted = mode == "octet"
        if accepted and name not in order:
            order.append(name)
    return Negotiated(blksize, timeout, tsize="tsize" in order, order=tuple(order))


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


def open_contained(root: str, rel: str) -> FileSource | Refuse:
    """Open ``root/rel`` read-only if it is a regular file inside ``root``.

    ``realpath`` resolves every symlink; the result must stay under the
    (real) root.  Only regular files are opened: a FIFO would block and a
    device could have side effects, so the type is checked with ``stat``
    before ``open`` and again with ``fstat`` after (``O_NOFOLLOW`` and
    ``O_NONBLOCK`` close the race in between).
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
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return Refuse(ERR_ACCESS, "not a regular file")
    return FileSource(os.fdopen(fd, "rb"))


def _generated(generate: GenerateFn | None, rel: str, client) -> bytes | None | Refuse:
    if generate is None:
        return None
    try:
        data = generate(rel, client)
    except Exception:
        log.exception("generate(%r, %s) raised", rel, client)
        return Refuse(ERR_UNDEFINED, "internal error")
    if data is not None and not isinstance(data, (bytes, bytearray)):
        log.error("generate(%r) returned %s, not bytes", rel, type(data).__name__)
        return Refuse(ERR_UNDEFINED, "internal error")
    return data


def decide_rrq(filename: str, mode: str, options: dict[str, str], root: str,
               generate: GenerateFn | None = None,
               client: tuple[str, int] = ("0.0.0.0", 0)) -> Accept | Refuse:
    """Decide one read request; the only place that says yes or no.

    ``generate(rel_path, client)`` is asked first, with the normalised
    root-relative path; bytes are served from memory, ``None`` falls through
    to the file system, an exception is logged and refused with ERROR 0.
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
    if got is not None:
        source, size = BytesSource(got), len(got)
    else:
        source = open_contained(root, rel)
        if isinstance(source, Refuse):
            return source
        size = source.size
    if mode == "netascii":
        source = NetasciiSource(source)
    neg = negotiate(options, mode)
    values = {"blksize": str(neg.blksize), "timeout": str(neg.timeout), "tsize": str(size)}
    return Accept(source, size, {n: values[n] for n in neg.order}, neg.blksize,
                  neg.timeout, rel)


# ------------------------------------------------------------------- codec


@dataclass(frozen=True)
class Request:
    opcode: int
    filename: str
    mode: str
    options: dict[str, str]


_FACTORY = TftpPacketFactory()


def opcode_of(datagram: bytes) -> int | None:
    return struct.unpack("!H", datagram[:2])[0] if len(datagram) >= 2 else None


def parse_request(datagram: bytes) -> Request | Refuse:
    """Decode an RRQ/WRQ with tftpy; any decoder exception becomes ERROR 4."""
    try:
        pkt = _FACTORY.parse(bytes(datagram))
    except Exception as exc:  # noqa: BLE001 - tftpy raises on malformed input (module doc)
        return Refuse(ERR_ILLEGAL_OP, f"malformed request ({type(exc).__name__})")
    if not isinstance(pkt, TftpPacketInitial):
        return Refuse(ERR_ILLEGAL_OP, "illegal TFTP operation")
    return Request(pkt.opcode, pkt.filename, pkt.mode, dict(pkt.options))


def parse_ack(datagram: bytes) -> int | None:
    """Block number of an ACK, or ``None`` if tftpy cannot decode it."""
    try:
        pkt = _FACTORY.parse(bytes(datagram))
    except Exception:  # noqa: BLE001 - e.g. struct.error on a short ACK inside tftpy
        return None
    return pkt.blocknumber if isinstance(pkt, TftpPacketACK) else None


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
    pkt = TftpPacketDAT()
    pkt.blocknumber, pkt.data = block, data
    return pkt.encode().buffer
