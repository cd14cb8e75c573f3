"""DHCP messages seen from the client's side: a server's reply decoded (what
the rogue-server detector reads off the wire) and a minimal DISCOVER (what its
active probe sends).  Same wire rules as :mod:`appliance.servers.dhcp_codec`."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import dhcp_codec as c


@dataclass(frozen=True)
class ServerMessage:
    """A decoded c.BOOTREPLY (OFFER, ACK, NAK) -- what :func:`decode_reply` returns.

    ``mac`` is the client's chaddr; ``server_id`` is option 54, which RFC
    2131 makes mandatory in OFFER/ACK/NAK but a broken server may omit.
    """

    msg_type: int
    xid: int
    mac: str
    yiaddr: str
    giaddr: str
    server_id: str | None
    lease_time: int | None


def decode_reply(payload: bytes) -> ServerMessage | None:
    """Parse a server's reply (the other direction of :func:`decode`).  Never raises."""
    try:
        if len(payload) < c.OPTIONS_OFFSET or \
                payload[c.BOOTP_HEADER.size:c.OPTIONS_OFFSET] != c.MAGIC_COOKIE:
            return None
        (op, htype, hlen, _hops, xid, _secs, _flags, _ciaddr, yiaddr, _siaddr, giaddr,
         chaddr16, _sname, _file) = c.BOOTP_HEADER.unpack_from(payload)
        if op != c.BOOTREPLY or htype != c.HTYPE_ETHER or hlen != c.HLEN_ETHER:
            return None
        opts = c._scan_options(payload)
        kind = opts.get(c.OPT_MESSAGE_TYPE)
        if not kind or kind[0] not in c.MSG_NAMES:
            return None
        server, lease = opts.get(c.OPT_SERVER_ID), opts.get(c.OPT_LEASE_TIME)
        return ServerMessage(
            msg_type=kind[0], xid=xid, mac=chaddr16[:c.HLEN_ETHER].hex(":"),
            yiaddr=c._ip_text(yiaddr), giaddr=c._ip_text(giaddr),
            server_id=c._ip_text(server) if server else None,
            lease_time=struct.unpack("!I", lease[:4])[0] if lease else None)
    except Exception:  # noqa: BLE001 - a malformed packet is dropped, never fatal
        return None


def discover_payload(mac: str, xid: int) -> bytes:
    """A minimal DHCPDISCOVER from ``mac`` with the broadcast flag set (so every
    server answers by broadcast, RFC 2131 section 4.1)."""
    chaddr = bytes.fromhex(mac.replace(":", ""))
    zero = bytes(4)
    header = c.BOOTP_HEADER.pack(c.BOOTREQUEST, c.HTYPE_ETHER, c.HLEN_ETHER, 0, xid, 0,
                               c.FLAG_BROADCAST, zero, zero, zero, zero,
                               chaddr.ljust(16, b"\x00"), b"", b"")
    options = bytes((c.OPT_MESSAGE_TYPE, 1, c.DISCOVER, c.OPT_END))
    return header + c.MAGIC_COOKIE + options
