"""DHCPv4 wire format: decode a request into plain data, encode a reply.

Two implementations of the same two functions:

* ``decode_scapy`` / ``encode_scapy`` in :mod:`.dhcp_codec_scapy` -- scapy's
  BOOTP/DHCP layers do the byte work.  They are the reference.
* :func:`decode` / :func:`encode` -- the hot path: ``struct`` over the fixed
  BOOTP header and a table (:data:`REPLY_OPTIONS`, :data:`REQUEST_OPTIONS`)
  naming every option they read or write.  About 50x cheaper than scapy.
  tests/unit/test_dhcp_codec.py checks them differentially against the
  reference (whatever one builds, the other parses identically) over a
  property-based corpus and the golden captures.

Field quirks handled here so that the decision code never sees them
(measured with scapy 2.8; the fast path reproduces them):

* scapy never raises on malformed options: it yields raw ``bytes`` items,
  message type 99, duplicates, or no DHCP layer at all without the magic
  cookie.  :func:`decode` turns all of that into ``None`` or a best-effort
  :class:`DhcpRequest`, and never raises.
* iPXE sends option 77 as a bare string ``iPXE``, not the RFC 3004 list of
  length-prefixed strings; both spellings are recognised.
* Option 93 may carry several 16-bit types; the first one counts.
* Option 82 (RFC 3046) is kept as the raw bytes the relay sent
  (``relay_info``) so that a reply can echo it byte for byte;
  :func:`relay_suboptions` reads circuit-id and remote-id out of it.
* Option 51 in a request (``lease_time``) is the client's wish; with more
  than four bytes, the first four count (as scapy reads it).
* A code that appears more than once is one option whose value is the
  concatenation (RFC 3396 section 7), in the main options area; for the
  fixed-size codes that means the first instance counts.  Replies split a
  value longer than 255 bytes into consecutive instances (RFC 3396 sec. 5).
* Option 55 (``params``) is ``None`` when absent or empty (ISC dhcpd treats
  an empty list as none); option 57 (``max_size``) is the client's number,
  unchecked -- :mod:`appliance.servers.dhcp_packing` applies the limits.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
from dataclasses import dataclass, field

log = logging.getLogger("plowshare.dhcp")

# BOOTP (RFC 951 / RFC 2131 section 2)
BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHER = 1
HLEN_ETHER = 6
FLAG_BROADCAST = 0x8000
BOOTP_FILE_LEN = 128

# DHCP message types (RFC 2132 section 9.6)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
MSG_NAMES = {DISCOVER: "discover", OFFER: "offer", REQUEST: "request", DECLINE: "decline",
             ACK: "ack", NAK: "nak", RELEASE: "release", INFORM: "inform"}

# Option codes
OPT_SUBNET_MASK = 1          # RFC 2132 3.3
OPT_ROUTER = 3               # RFC 2132 3.5
OPT_DNS = 6                  # RFC 2132 3.8
OPT_HOSTNAME = 12            # RFC 2132 3.14
OPT_DOMAIN = 15              # RFC 2132 3.17
OPT_BROADCAST = 28           # RFC 2132 5.3
OPT_VENDOR_SPECIFIC = 43     # RFC 2132 8.4 (PXE vendor options)
OPT_REQUESTED_IP = 50        # RFC 2132 9.1
OPT_LEASE_TIME = 51          # RFC 2132 9.2
OPT_MESSAGE_TYPE = 53        # RFC 2132 9.6
OPT_SERVER_ID = 54           # RFC 2132 9.7
OPT_RENEWAL_T1 = 58          # RFC 2132 9.11
OPT_REBINDING_T2 = 59        # RFC 2132 9.12
OPT_VENDOR_CLASS = 60        # RFC 2132 9.13
OPT_TFTP_SERVER = 66         # RFC 2132 9.4
OPT_BOOTFILE = 67            # RFC 2132 9.5
OPT_USER_CLASS = 77          # RFC 3004
OPT_RELAY_AGENT = 82         # RFC 3046 2.0 (relay agent information)
RELAY_CIRCUIT_ID = 1         # RFC 3046 3.1
RELAY_REMOTE_ID = 2          # RFC 3046 3.2
OPT_CLIENT_ARCH = 93         # RFC 4578 2.1
OPT_CLIENT_NDI = 94          # RFC 4578 2.2
OPT_CLIENT_UUID = 97         # RFC 4578 2.3
OPT_IPXE_ENCAP = 175         # iPXE encapsulated options (iPXE docs, "dhcp options")
IPXE_NO_PXEDHCP = 176        # sub-option of 175: skip waiting for proxyDHCP
PXE_DISCOVERY_CONTROL = 6    # PXE 2.1 spec, option 43 sub-option 6
PXE_DISCOVERY_USE_BOOTFILE = 0x08  # bit 3: use the boot file name, no server discovery
OPT_END = 255
MAX_OPTION_LEN = 255         # RFC 2132 section 2: one length octet per instance


@dataclass(frozen=True)
class DhcpRequest:
    """A decoded client message; only what the decision code reads."""

    msg_type: int
    xid: int
    mac: str
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    requested_ip: str | None = None
    server_id: str | None = None
    hostname: str | None = None
    vendor_class: str | None = None
    user_class: str | None = None
    arch: int | None = None
    uuid: bytes | None = None
    ipxe_options: bool = False
    hops: int = 0
    chaddr: bytes = b""
    lease_time: int | None = None   # option 51: the lease time the client asks for
    relay_info: bytes | None = None  # option 82 as the relay sent it
    params: tuple[int, ...] | None = None  # option 55, in the client's order
    max_size: int | None = None  # option 57: the largest message it accepts

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)


@dataclass
class DhcpReply:
    """What the decision code wants sent; :func:`encode` makes the bytes."""

    msg_type: int
    request: DhcpRequest
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    filename: str = ""
    sname: str = ""  # BOOTP server host name field (RFC 951), empty unless set
    # scapy (name, value...) items, or (code, raw bytes) for any other option; in order
    options: list = field(default_factory=list)
    note: str = ""  # what the boot policy decided, for the event log
    durable: object = None  # Ticket of the lease an ACK promises (None: nothing to wait for)


def relay_suboptions(raw: bytes | None) -> dict[int, bytes]:
    """Sub-option code -> value of an option-82 payload (first occurrence).

    A truncated sub-option ends the scan; what came before it still counts.
    """
    out: dict[int, bytes] = {}
    i, end = 0, len(raw or b"")
    while i + 1 < end:
        code, size = raw[i], raw[i + 1]
        if i + 2 + size > end:
            break
        out.setdefault(code, raw[i + 2:i + 2 + size])
        i += 2 + size
    return out


def _user_class(raw: bytes) -> str:
    """RFC 3004 list (len+data...) or iPXE's bare string, as text."""
    if raw and raw[0] + 1 == len(raw):
        return raw[1:].decode("latin-1")
    return raw.decode("latin-1")


def _arch(raw) -> int | None:
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not isinstance(raw, bytes) or len(raw) < 2:
        return None
    return struct.unpack("!H", raw[:2])[0]


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)  # dotted quad -> 4 bytes (the hot path's cost)


# -- the hot path: struct + named option table --------------------------------------
# Fixed BOOTP header (RFC 2131 figure 1): op htype hlen hops xid secs flags
# ciaddr yiaddr siaddr giaddr chaddr(16) sname(64) file(128), then the cookie.
BOOTP_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
MAGIC_COOKIE = b"\x63\x82\x53\x63"   # RFC 2131 section 3
OPTIONS_OFFSET = BOOTP_HEADER.size + len(MAGIC_COOKIE)  # 240
OPT_PAD = 0
OPT_MAX_MESSAGE_SIZE = 57    # RFC 2132 9.10
OPT_ERROR_MESSAGE = 56       # RFC 2132 9.9

# Encodings: "ip" one address, "ips" a list of addresses, "u8"/"u32" integers,
# "bytes" opaque.  Keys are the names scapy uses, so a DhcpReply's options
# mean the same thing to both encoders.
REPLY_OPTIONS: dict[str | int, tuple[int, str]] = {
    "message-type": (OPT_MESSAGE_TYPE, "u8"),
    "server_id": (OPT_SERVER_ID, "ip"),
    "subnet_mask": (OPT_SUBNET_MASK, "ip"),
    "broadcast_address": (OPT_BROADCAST, "ip"),
    "router": (OPT_ROUTER, "ips"),
    "name_server": (OPT_DNS, "ips"),
    "domain": (OPT_DOMAIN, "bytes"),
    "hostname": (OPT_HOSTNAME, "bytes"),
    "lease_time": (OPT_LEASE_TIME, "u32"),
    "renewal_time": (OPT_RENEWAL_T1, "u32"),
    "rebinding_time": (OPT_REBINDING_T2, "u32"),
    "error_message": (OPT_ERROR_MESSAGE, "bytes"),
    "vendor_class_id": (OPT_VENDOR_CLASS, "bytes"),
    "vendor_specific": (OPT_VENDOR_SPECIFIC, "bytes"),
    "tftp_server_name": (OPT_TFTP_SERVER, "bytes"),
    "boot-file-name": (OPT_BOOTFILE, "bytes"),
    "pxe_client_machine_identifier": (OPT_CLIENT_UUID, "bytes"),
    "relay_agent_information": (OPT_RELAY_AGENT, "bytes"),
    OPT_IPXE_ENCAP: (OPT_IPXE_ENCAP, "bytes"),
}

# How scapy types the fixed-size options a request may carry.  scapy decodes
# such an option only when its length is a non-zero multiple of the size and
# otherwise gives up on the rest of the options (raw bytes); the fast path
# does the same for these codes.  Every other code is opaque bytes to both.
FIXED_SIZE = {"ip": 4, "ips": 4, "u8": 1, "u16": 2, "u32": 4}
REQUEST_OPTIONS: dict[int, str] = {
    OPT_SUBNET_MASK: "ip", OPT_ROUTER: "ips", OPT_DNS: "ips", OPT_BROADCAST: "ip",
    OPT_REQUESTED_IP: "ip", OPT_LEASE_TIME: "u32", OPT_MESSAGE_TYPE: "u8",
    OPT_SERVER_ID: "ip", OPT_RENEWAL_T1: "u32", OPT_REBINDING_T2: "u32",
    OPT_MAX_MESSAGE_SIZE: "u16",
}
OPT_PARAMS = 55              # RFC 2132 9.8 (parameter request list)


def _ip_text(raw: bytes) -> str:
    return socket.inet_ntoa(raw[:4])  # OSError when short: decode() gives None


def _scan_options(payload: bytes) -> dict[int, bytes]:
    """code -> raw value, repeats concatenated (RFC 3396 7; scapy's stop rules)."""
    out: dict[int, bytes] = {}
    i, end = OPTIONS_OFFSET, len(payload)
    while i < end:
        code = payload[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END or i + 1 >= end:
            break
        size = payload[i + 1]
        value = payload[i + 2:i + 2 + size]
        if len(value) < size:
            break  # overruns the packet: the rest is garbage
        unit = FIXED_SIZE.get(REQUEST_OPTIONS.get(code, ""), 0)
        if unit and (size == 0 or size % unit):
            break  # scapy stops decoding here as well
        out[code] = out[code] + value if code in out else value
        i += 2 + size
    return out


def decode(payload: bytes) -> DhcpRequest | None:
    """Same result as :func:`.dhcp_codec_scapy.decode_scapy`, without scapy.  Never raises."""
    try:
        if len(payload) < OPTIONS_OFFSET or \
                payload[BOOTP_HEADER.size:OPTIONS_OFFSET] != MAGIC_COOKIE:
            return None
        (op, htype, hlen, hops, xid, _secs, flags, ciaddr, _yiaddr, _siaddr, giaddr,
         chaddr16, _sname, _file) = BOOTP_HEADER.unpack_from(payload)
        if op != BOOTREQUEST or htype != HTYPE_ETHER or hlen != HLEN_ETHER:
            return None
        opts = _scan_options(payload)
        kind = opts.get(OPT_MESSAGE_TYPE)
        if not kind or kind[0] not in MSG_NAMES:
            return None
        chaddr = chaddr16[:HLEN_ETHER]
        user = opts.get(OPT_USER_CLASS)
        text = {code: opts[code].decode("latin-1").rstrip("\x00")
                for code in (OPT_HOSTNAME, OPT_VENDOR_CLASS) if code in opts}
        requested, server = opts.get(OPT_REQUESTED_IP), opts.get(OPT_SERVER_ID)
        lease, size = opts.get(OPT_LEASE_TIME), opts.get(OPT_MAX_MESSAGE_SIZE)
        return DhcpRequest(
            msg_type=kind[0], xid=xid, mac=chaddr.hex(":"), flags=flags,
            ciaddr=_ip_text(ciaddr), giaddr=_ip_text(giaddr), hops=hops,
            requested_ip=_ip_text(requested) if requested else None,
            server_id=_ip_text(server) if server else None,
            hostname=text.get(OPT_HOSTNAME), vendor_class=text.get(OPT_VENDOR_CLASS),
            user_class=_user_class(user) if user is not None else None,
            arch=_arch(opts.get(OPT_CLIENT_ARCH)), uuid=opts.get(OPT_CLIENT_UUID),
            ipxe_options=OPT_IPXE_ENCAP in opts, chaddr=chaddr,
            lease_time=struct.unpack_from("!I", lease)[0] if lease else None,
            relay_info=opts.get(OPT_RELAY_AGENT),
            params=tuple(opts.get(OPT_PARAMS, b"")) or None,
            max_size=struct.unpack_from("!H", size)[0] if size else None)
    except Exception:  # noqa: BLE001 - a malformed packet is dropped, never fatal
        log.debug("undecodable DHCP payload of %d bytes", len(payload))
        return None


def _option_bytes(item) -> bytes:
    name, *values = item
    if isinstance(name, int) and name not in REPLY_OPTIONS:
        code, kind = name, "bytes"  # (code, raw bytes), e.g. from appliance.dhcp_options
    else:
        code, kind = REPLY_OPTIONS[name]  # KeyError: an option nobody named
    if kind == "u8":
        value = bytes(values[:1])
    elif kind == "u32":
        value = struct.pack("!I", values[0])
    elif kind in ("ip", "ips"):
        value = b"".join(ip_bytes(v) for v in (values if kind == "ips" else values[:1]))
    else:
        value = values[0] if isinstance(values[0], bytes) else str(values[0]).encode()
    if len(value) <= MAX_OPTION_LEN:
        return bytes((code, len(value))) + value
    return b"".join(bytes((code, len(part))) + part for part in split_long(value))


def split_long(value: bytes) -> list[bytes]:
    """RFC 3396 section 5: a long value as consecutive pieces of at most 255 bytes."""
    return [value[i:i + MAX_OPTION_LEN] for i in range(0, len(value), MAX_OPTION_LEN)]


def option_code(item) -> int:
    """The option code of a reply item (scapy name or raw code)."""
    name = item[0]
    return name if isinstance(name, int) and name not in REPLY_OPTIONS \
        else REPLY_OPTIONS[name][0]


# A reply's options are nearly always the same few items (the subnet's, the
# lease times): their wire form is memoised.  Pure, and bounded.
OPTION_CACHE_SIZE = 4096
_cached_option_bytes = functools.lru_cache(maxsize=OPTION_CACHE_SIZE)(_option_bytes)


def option_wire(item) -> bytes:
    """The wire form of one reply item (several instances if long: RFC 3396)."""
    try:
        return _cached_option_bytes(item)
    except TypeError:  # an unhashable value (a list): encoded every time
        return _option_bytes(item)


def encode(reply: DhcpReply, server_ip: str) -> bytes:
    """Byte-for-byte what :func:`.dhcp_codec_scapy.encode_scapy` builds, without scapy."""
    req = reply.request
    file_field = reply.filename.encode() if len(reply.filename) < BOOTP_FILE_LEN else b""
    ciaddr = req.ciaddr if reply.msg_type != NAK else "0.0.0.0"
    header = BOOTP_HEADER.pack(
        BOOTREPLY, HTYPE_ETHER, HLEN_ETHER, 0, req.xid, 0, req.flags, ip_bytes(ciaddr),
        ip_bytes(reply.yiaddr), ip_bytes(reply.siaddr), ip_bytes(req.giaddr),
        req.chaddr.ljust(16, b"\x00"), reply.sname.encode()[:63], file_field)
    options = [("message-type", reply.msg_type), ("server_id", server_ip), *reply.options]
    return b"".join((header, MAGIC_COOKIE, *map(option_wire, options), bytes((OPT_END,))))
