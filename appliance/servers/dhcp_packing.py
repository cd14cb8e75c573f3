"""Which options a DHCP reply carries, in which order, and how they fit.

Two pure steps between the decision code and the wire, shared by the full
server and proxyDHCP:

* :func:`select` -- the options a client gets.  With a parameter request
  list (option 55, RFC 2132 section 9.8) it gets the options it asked for
  that we have, in its order, plus those a server always sends; without
  one, everything configured (RFC 2131 section 4.3.1: the server "MUST
  supply as many of the requested parameters as possible" and "MAY return
  parameters that were not requested").  What is always sent follows ISC
  dhcpd (``cons_options`` in common/options.c): 53, 54, then 51/58/59 ahead
  of the client's list, and the subnet mask (1) even when not asked for,
  since clients rely on it.  We add routers (3) as well, as dnsmasq does for
  its own defaults, and the PXE options the boot path needs: 60, 43, 97
  (PXE 2.1) and 175 (iPXE).  66/67 go only when asked for: the BOOTP
  ``siaddr``/``file`` header fields always carry the boot server and file,
  unless the file name is too long for the header (then 67 is sent).
  ``always`` adds the operator's codes (config ``always_send``, like Kea's
  ``always-send`` and dnsmasq's ``dhcp-option-force``).
* :func:`encode` -- the bytes, within the client's maximum message size
  (option 57, RFC 2132 section 9.10; 576 when absent, RFC 2131 section 2).
  The size counts the IP and UDP headers, as ISC dhcpd's ``DHCP_FIXED_LEN``
  does (576 = 20 + 8 + 236 + 312 option octets, RFC 2131 section 2), and is
  capped at one Ethernet frame (1500, ISC's ``DHCP_MTU_MAX``).  When the
  options do not fit: first option overload (option 52, RFC 2132 section
  9.3) into the ``file`` and/or ``sname`` fields that carry no boot file or
  server name; then options are dropped -- unrequested ones first (from the
  end), then requested ones from the end of the client's list -- with one
  log line naming them.  53, 54, 51, 1 and a relay's option 82 are never
  dropped.  A reply that fits is exactly :func:`dhcp_codec.encode`'s.

:func:`read_options` is the inverse a client applies (overload fields and
RFC 3396 concatenation), for tests and sniffers.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable

from . import dhcp_codec as c

log = logging.getLogger("plowshare.dhcp")

OPT_OVERLOAD = 52            # RFC 2132 9.3
OVERLOAD_FILE, OVERLOAD_SNAME = 1, 2  # RFC 2132 9.3: 1 file, 2 sname, 3 both
MIN_MESSAGE = 576            # RFC 2131 section 2 / RFC 2132 9.10 (minimum legal value)
MAX_MESSAGE = 1500           # one Ethernet frame; ISC dhcpd's DHCP_MTU_MAX
IP_UDP_OVERHEAD = 28         # IPv4 (20) + UDP (8) headers, counted in option 57
SNAME_OFFSET, SNAME_LEN = 44, 64   # RFC 2131 figure 1
FILE_OFFSET, FILE_LEN = 108, c.BOOTP_FILE_LEN
OVERLOAD_WIRE_LEN = 3

# ISC dhcpd sends these right after 53 and 54, ahead of the client's list
HEADER = (c.OPT_LEASE_TIME, c.OPT_RENEWAL_T1, c.OPT_REBINDING_T2)
SERVER_SENDS = frozenset({*HEADER, c.OPT_SUBNET_MASK, c.OPT_ROUTER})
BOOT_SENDS = frozenset({c.OPT_VENDOR_CLASS, c.OPT_VENDOR_SPECIFIC, c.OPT_CLIENT_UUID,
                        c.OPT_IPXE_ENCAP, c.OPT_RELAY_AGENT})
NEVER_DROPPED = frozenset({c.OPT_MESSAGE_TYPE, c.OPT_SERVER_ID, c.OPT_LEASE_TIME,
                           c.OPT_SUBNET_MASK, c.OPT_RELAY_AGENT})


def select(items: list, params: tuple[int, ...] | None,
           always: Iterable[int] = ()) -> list:
    """The reply items (codec form) a client with option 55 ``params`` gets.

    Order: 51/58/59, then the client's list, then the always-sent rest in
    the order given.  ``params`` ``None`` (no option 55): ``items`` as they are.
    """
    if params is None:
        return list(items)
    rank: dict[int, int] = {}
    for pos, code in enumerate(params):
        rank.setdefault(code, pos)
    sent = SERVER_SENDS | BOOT_SENDS | frozenset(always)
    head, asked, rest = [], [], []
    for n, item in enumerate(items):
        code = c.option_code(item)
        if code in HEADER:
            head.append(item)
        elif code in rank:
            asked.append((rank[code], n, item))
        elif code in sent:
            rest.append(item)
    return head + [item for *_, item in sorted(asked, key=lambda t: t[:2])] + rest


def select_reply(reply: c.DhcpReply, always: Iterable[int] = ()) -> c.DhcpReply:
    """:func:`select` applied to ``reply`` in place (67 kept if the header cannot hold it)."""
    if reply.request.params is None:
        return reply  # no option 55: everything configured
    extra = set(always)
    if len(reply.filename) >= c.BOOTP_FILE_LEN:
        extra.add(c.OPT_BOOTFILE)  # the file field stays empty: 67 is the only carrier
    reply.options = select(reply.options, reply.request.params, extra)
    return reply


def limit(req: c.DhcpRequest) -> int:
    """The largest UDP payload ``req``'s client accepts (see the module doc)."""
    size = req.max_size or MIN_MESSAGE
    return min(max(size, MIN_MESSAGE), MAX_MESSAGE) - IP_UDP_OVERHEAD


def drop_order(codes: list[int], params: tuple[int, ...] | None) -> list[int]:
    """Indices into ``codes`` in the order they go when a reply is too big."""
    rank: dict[int, int] = {}
    for pos, code in enumerate(params or ()):
        rank.setdefault(code, pos)
    droppable = [n for n, code in enumerate(codes) if code not in NEVER_DROPPED]
    unasked = [n for n in reversed(droppable) if codes[n] not in rank]
    asked = sorted((n for n in droppable if codes[n] in rank),
                   key=lambda n: (-rank[codes[n]], -n))
    return unasked + asked


def _layout(wires: list[bytes], rooms: list[int]) -> list[list[bytes]] | None:
    """First fit, in order, of whole options into the areas; ``None`` if one fits nowhere."""
    areas: list[list[bytes]] = [[] for _ in rooms]
    for wire in wires:
        for k, room in enumerate(rooms):
            if len(wire) <= room:
                areas[k].append(wire)
                rooms[k] -= len(wire)
                break
        else:
            return None
    return areas


def _field(wires: list[bytes], size: int) -> bytes:
    return (b"".join(wires) + bytes((c.OPT_END,))).ljust(size, bytes((c.OPT_PAD,)))


def _build(plain: bytes, areas: list[list[bytes]]) -> bytes:
    """``plain``'s header with the overload fields filled, then the main options."""
    main, file_area, sname_area = areas
    header = bytearray(plain[:c.OPTIONS_OFFSET])
    which = 0
    if file_area:
        which |= OVERLOAD_FILE
        header[FILE_OFFSET:FILE_OFFSET + FILE_LEN] = _field(file_area, FILE_LEN)
    if sname_area:
        which |= OVERLOAD_SNAME
        header[SNAME_OFFSET:SNAME_OFFSET + SNAME_LEN] = _field(sname_area, SNAME_LEN)
    if which:  # after 53 and 54, which always lead the main area
        main = [*main[:2], bytes((OPT_OVERLOAD, 1, which)), *main[2:]]
    return bytes(header) + b"".join(main) + bytes((c.OPT_END,))


def _fit(wires: list[bytes], room: int, free: tuple[bool, bool]) -> list[list[bytes]] | None:
    main_room = room - c.OPTIONS_OFFSET - 1  # 1: the end option
    if sum(map(len, wires)) <= main_room:
        return [wires, [], []]
    if not any(free):
        return None
    rooms = [main_room - OVERLOAD_WIRE_LEN, FILE_LEN - 1 if free[0] else 0,
             SNAME_LEN - 1 if free[1] else 0]
    return _layout(wires, rooms)


def _squeeze(wires: list[bytes], order: list[int], room: int,
             free: tuple[bool, bool]) -> tuple[list[list[bytes]] | None, list[int]]:
    """Drop options in ``order`` until the rest fit, then give back each dropped
    one that fits again (a small unrequested option need not go for a big one)."""
    def fit(dropped: list[int]):
        return _fit([w for n, w in enumerate(wires) if n not in dropped], room, free)

    dropped: list[int] = []
    while (areas := fit(dropped)) is None and len(dropped) < len(order):
        dropped.append(order[len(dropped)])
    for n in reversed(dropped[:-1] if areas is not None else []):
        trial = [m for m in dropped if m != n]
        if (more := fit(trial)) is not None:
            areas, dropped = more, trial
    return areas, dropped


def encode(reply: c.DhcpReply, server_ip: str) -> bytes:
    """``reply``'s bytes within its client's size limit (see the module doc)."""
    plain = c.encode(reply, server_ip)
    room = limit(reply.request)
    if len(plain) <= room:
        return plain  # the hot path: nothing to do
    items = [("message-type", reply.msg_type), ("server_id", server_ip), *reply.options]
    wires = [c.option_wire(item) for item in items]
    codes = [c.option_code(item) for item in items]
    free = (not reply.filename or len(reply.filename) >= c.BOOTP_FILE_LEN, not reply.sname)
    areas, dropped = _squeeze(wires, drop_order(codes, reply.request.params), room, free)
    mac = reply.request.mac
    if areas is None:
        log.error("%s reply does not fit %d bytes even with only %s: sent as is", mac,
                  room + IP_UDP_OVERHEAD, sorted(set(codes)))
        return plain
    overload = [name for name, area in zip(("file", "sname"), areas[1:]) if area]
    log.info("%s reply over the client's %d bytes: overload %s, dropped options %s", mac,
             room + IP_UDP_OVERHEAD, "+".join(overload) or "none",
             [codes[n] for n in dropped] or "none")
    return _build(plain, areas)


def _scan(area: bytes, out: dict[int, bytes]) -> None:
    i = 0
    while i < len(area) and area[i] != c.OPT_END:
        if area[i] == c.OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(area):
            return
        code, size = area[i], area[i + 1]
        out[code] = out.get(code, b"") + area[i + 2:i + 2 + size]
        i += 2 + size


def read_options(payload: bytes) -> dict[int, bytes]:
    """Every option of a BOOTP/DHCP message as a client reads it: main area,
    then ``file`` and ``sname`` when option 52 says so, repeats concatenated
    (RFC 3396 section 7)."""
    out: dict[int, bytes] = {}
    _scan(payload[c.OPTIONS_OFFSET:], out)
    which = struct.unpack("!B", out[OPT_OVERLOAD][:1])[0] if out.get(OPT_OVERLOAD) else 0
    if which & OVERLOAD_FILE:
        _scan(payload[FILE_OFFSET:FILE_OFFSET + FILE_LEN], out)
    if which & OVERLOAD_SNAME:
        _scan(payload[SNAME_OFFSET:SNAME_OFFSET + SNAME_LEN], out)
    return out
