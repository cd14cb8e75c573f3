"""The reference DHCPv4 codec: scapy's BOOTP/DHCP layers do the byte work.

:func:`decode_scapy` / :func:`encode_scapy` mean exactly what
:func:`appliance.servers.dhcp_codec.decode` / ``encode`` mean; the fast pair
is tested differentially against this one (tests/unit/test_dhcp_codec.py).
Not used on any server path.
"""

from __future__ import annotations

import ipaddress

from scapy.layers.dhcp import BOOTP, DHCP

from . import dhcp_codec as c


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00")
    return str(value) if value is not None else None


def _options(pkt) -> dict:
    """Each named option; repeats concatenated (RFC 3396), else the first counts."""
    out: dict = {}
    dhcp = pkt.getlayer(DHCP)
    if dhcp is None:
        return out
    for item in dhcp.options:
        if not (isinstance(item, tuple) and len(item) >= 2):
            continue  # raw/unparsable items dropped
        name, value = item[0], item[1]
        if name not in out:
            out[name] = value
        elif type(out[name]) is type(value) and isinstance(value, (bytes, list)):
            out[name] = out[name] + value
    return out


def decode_scapy(payload: bytes) -> c.DhcpRequest | None:
    """Parse one UDP payload from a client; ``None`` for anything unusable."""
    try:
        pkt = BOOTP(payload)
        if pkt.op != c.BOOTREQUEST or pkt.htype != c.HTYPE_ETHER or pkt.hlen != c.HLEN_ETHER:
            return None
        opts = _options(pkt)
        msg_type = opts.get("message-type")
        if not isinstance(msg_type, int) or msg_type not in c.MSG_NAMES:
            return None
        chaddr = bytes(pkt.chaddr)[:c.HLEN_ETHER]
        user = opts.get("user_class")
        uuid = opts.get("pxe_client_machine_identifier")
        lease = opts.get("lease_time")
        relay = opts.get("relay_agent_information")
        size = opts.get("max_dhcp_size")
        return c.DhcpRequest(
            msg_type=msg_type, xid=pkt.xid, mac=":".join(f"{b:02x}" for b in chaddr),
            flags=int(pkt.flags), ciaddr=pkt.ciaddr, giaddr=pkt.giaddr, hops=pkt.hops,
            requested_ip=_ip_or_none(opts.get("requested_addr")),
            server_id=_ip_or_none(opts.get("server_id")),
            hostname=_text(opts.get("hostname")),
            vendor_class=_text(opts.get("vendor_class_id")),
            user_class=c._user_class(user) if isinstance(user, bytes) else _text(user),
            arch=c._arch(opts.get("pxe_client_architecture")),
            uuid=uuid if isinstance(uuid, bytes) else None,
            ipxe_options=c.OPT_IPXE_ENCAP in opts, chaddr=chaddr,
            lease_time=lease if isinstance(lease, int) else None,
            relay_info=relay if isinstance(relay, bytes) else None,
            params=tuple(opts.get("param_req_list") or ()) or None,
            max_size=size if isinstance(size, int) else None)
    except Exception:  # noqa: BLE001 - a malformed packet is dropped, never fatal
        c.log.debug("undecodable DHCP payload of %d bytes", len(payload))
        return None


def _ip_or_none(value) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value)) if value else None
    except (ValueError, TypeError):
        return None


def encode_scapy(reply: c.DhcpReply, server_ip: str) -> bytes:
    """The BOOTP payload of ``reply`` (options in the order given)."""
    req = reply.request
    file_field = reply.filename.encode() if len(reply.filename) < c.BOOTP_FILE_LEN else b""
    pkt = BOOTP(op=c.BOOTREPLY, htype=c.HTYPE_ETHER, hlen=c.HLEN_ETHER, hops=0, xid=req.xid,
                flags=req.flags, ciaddr=req.ciaddr if reply.msg_type != c.NAK else "0.0.0.0",
                yiaddr=reply.yiaddr, siaddr=reply.siaddr, giaddr=req.giaddr,
                chaddr=req.chaddr + b"\x00" * 10, file=file_field)
    options = [("message-type", reply.msg_type), ("server_id", server_ip)]
    for name, *values in reply.options:  # scapy cannot build a long option: split it
        if len(values) == 1 and isinstance(values[0], bytes) and len(values[0]) > c.MAX_OPTION_LEN:
            options += [(name, part) for part in c.split_long(values[0])]
        else:
            options.append((name, *values))
    options.append("end")
    return bytes(pkt / DHCP(options=options))
