"""proxyDHCP: boot information for PXE and iPXE clients, no addresses.

For sites whose own DHCP server stays in place (PXE 2.1 "proxyDHCP";
dnsmasq's ``dhcp-range=...,proxy`` and pixiecore behave this way).  The
site's server hands out every address; Plowshare answers only boot clients
the policy has a :class:`~appliance.model.BootSpec` for, with the same boot
file :func:`appliance.servers.dhcp_boot.boot_options` gives in server mode.

:func:`make_proxy_reply` is the whole decision for one request; it touches
no leases and no sockets.  :class:`ProxyDhcpServer` is the thin loop:

* port 67: one UDP socket on ``0.0.0.0:67`` bound to the provisioning
  interface (``SO_BINDTODEVICE``, as :class:`~appliance.servers.dhcp.DhcpServer`
  -- the two are never run together, ``[dhcp] mode`` picks one).  A
  DISCOVER from a boot client gets a proxy OFFER (yiaddr 0.0.0.0, siaddr and
  option 54 ours, option 60 ``PXEClient``, option 43 with
  PXE_DISCOVERY_CONTROL = 0x08, option 97 echoed, boot file in the BOOTP
  ``file`` field and option 67), broadcast to 255.255.255.255:68 out of that
  interface (to giaddr:67 when relayed).  REQUEST, RELEASE, DECLINE, INFORM
  and every non-PXE client are left to the site's server: silence.
* port 4011 (PXE "boot server" / ProxyDHCP REQUEST): a REQUEST unicast to
  our address gets an ACK with the same boot information (yiaddr 0, ciaddr
  echoed; a PXE boot item, option 43 sub-option 71, echoed) sent from port
  4011 back to the request's source address and port.  EDK2 sends it for a
  "ProxyBinl" offer, iPXE for a proxy offer without a boot file.

iPXE and option 175.176 (``no-pxedhcp``): iPXE reads that flag only from an
offer that carries an address (``dhcp_discovery_rx`` stores it with the
chosen DHCPOFFER) and it means "ignore ProxyDHCP offers" -- the opposite of
what this mode is for.  So proxy replies never carry it (nor any other
option 175 content); iPXE leaves discovery as soon as it holds the site's
offer *and* ours, so the ~3 s proxyDHCP wait noted in NETBOOT-NOTES does not
happen while we answer.  Option 60 ``PXEClient`` is what makes iPXE (and
EDK2) treat the reply as a proxy offer at all, so iPXE clients get it too.

No packet, however malformed, stops the loop.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from scapy.layers.dhcp import BOOTP, DHCP

from .. import dhcp_options
from ..config import Config
from ..events import EventLog
from ..policy import BootPolicy
from . import dhcp_codec as c
from . import dhcp_packing as packing
from .dhcp_boot import boot_answer, is_boot_client

log = logging.getLogger("plowshare.dhcp")

RECV_BUFFER = 4096
POLL_SECONDS = 0.5
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
PXE_BOOT_ITEM = 71           # PXE 2.1 spec, option 43 sub-option 71 (type, layer)
PXE_BOOT_ITEM_LEN = 4
BROADCAST = "255.255.255.255"


@dataclass
class ProxyContext:
    """What :func:`make_proxy_reply` consults besides the request (no allocator)."""

    config: Config
    policy: BootPolicy
    events: EventLog
    interface: str | None = None
    # observe(mac, ip, ts) -> changed: remember which machine uses an address
    # the other DHCP server leased (Store.observe_address), so TFTP and HTTP
    # requests from it are attributed to the machine's timeline
    observe: Callable[[str, str, float], bool] | None = None


def _vendor_specific(boot_item: bytes | None) -> bytes:
    """Option 43: "use the boot file, no boot server discovery" (+ boot item)."""
    data = bytes([c.PXE_DISCOVERY_CONTROL, 1, c.PXE_DISCOVERY_USE_BOOTFILE])
    if boot_item is not None and len(boot_item) == PXE_BOOT_ITEM_LEN:
        data += bytes([PXE_BOOT_ITEM, PXE_BOOT_ITEM_LEN]) + boot_item
    return data + bytes([c.OPT_END])


def proxy_options(opts: list, http_client: bool, boot_item: bytes | None = None) -> list:
    """Server-mode boot options rewritten for a proxy reply.

    Option 175 goes (see the module docstring); PXE clients, iPXE included,
    get option 60 ``PXEClient`` and option 43 first.  UEFI HTTP clients keep
    option 60 ``HTTPClient`` and get no option 43.
    """
    keep = [o for o in opts if o[0] not in (c.OPT_IPXE_ENCAP, "vendor_class_id",
                                            "vendor_specific")]
    if http_client:
        return [("vendor_class_id", b"HTTPClient"), *keep]
    return [("vendor_class_id", b"PXEClient"),
            ("vendor_specific", _vendor_specific(boot_item)), *keep]


def _in_our_subnet(ip: str, ctx: ProxyContext) -> bool:
    net = ipaddress.IPv4Network(f"{ctx.config.address}/{ctx.config.dhcp.prefix}",
                                strict=False)
    return ipaddress.IPv4Address(ip) in net


def _wanted(req: c.DhcpRequest, ctx: ProxyContext, pxe_port: bool) -> int | None:
    """The reply type this request deserves, or ``None`` (not ours to answer)."""
    if req.giaddr != "0.0.0.0" and not _in_our_subnet(req.giaddr, ctx):
        log.info("%s relayed via %s outside our subnet, ignored", req.mac, req.giaddr)
        return None
    if not pxe_port:
        return c.OFFER if req.msg_type == c.DISCOVER else None
    if req.msg_type != c.REQUEST:
        return None
    if req.server_id is not None and req.server_id != ctx.config.address:
        return None
    return c.ACK


def observed_address(req: c.DhcpRequest, ctx: ProxyContext, pxe_port: bool) -> str | None:
    """The address a boot client's message says it uses, if it is in our
    subnet: ``ciaddr`` when set (a port 4011 REQUEST, a renewal), else the
    address a REQUEST asks the other server for (option 50, RFC 2132 9.1 --
    not yet ACKed, but what the client will use if it boots on)."""
    if not is_boot_client(req):
        return None
    addr = req.ciaddr if req.ciaddr != "0.0.0.0" else None
    if addr is None and req.msg_type == c.REQUEST and not pxe_port:
        addr = req.requested_ip
    if addr is None:
        return None
    try:
        return addr if _in_our_subnet(addr, ctx) else None
    except ValueError:
        return None


def make_proxy_reply(req: c.DhcpRequest, ctx: ProxyContext, *, pxe_port: bool = False,
                     boot_item: bytes | None = None) -> c.DhcpReply | None:
    """The proxy reply to ``req`` (received on 67, or on 4011 when ``pxe_port``).

    ``None`` means silence: not a boot client, not a message proxyDHCP
    answers, no boot spec for this machine, or nothing to boot.  No side
    effects (no leases, no events).
    """
    kind = _wanted(req, ctx, pxe_port)
    if kind is None:
        return None
    answer = boot_answer(req, ctx)
    if answer is None or not answer.filename:
        return None
    reply = c.DhcpReply(kind, req, yiaddr="0.0.0.0", siaddr=ctx.config.address,
                        filename=answer.filename,
                        options=proxy_options(answer.options, answer.machine.http_client,
                                              boot_item),
                        note=answer.note)
    always = dhcp_options.always_codes(ctx.config.dhcp.always_send)
    return packing.select_reply(reply, always)  # option 55: 66/67 only if asked


def pxe_boot_item(payload: bytes) -> bytes | None:
    """The 4-byte PXE boot item (option 43 sub-option 71) of a request, if any."""
    try:
        dhcp = BOOTP(payload).getlayer(DHCP)
        raw = next((o[1] for o in dhcp.options if isinstance(o, tuple)
                    and o[0] == "vendor_specific"), None) if dhcp else None
    except Exception:  # noqa: BLE001 - malformed: no boot item
        return None
    if not isinstance(raw, bytes):
        return None
    i = 0
    while i + 1 < len(raw) and raw[i] != c.OPT_END:
        code, length = raw[i], raw[i + 1]
        if code == 0:  # pad
            i += 1
            continue
        if code == PXE_BOOT_ITEM and length == PXE_BOOT_ITEM_LEN:
            value = raw[i + 2:i + 2 + length]
            return value if len(value) == PXE_BOOT_ITEM_LEN else None
        i += 2 + length
    return None


class ProxyDhcpServer:
    """Socket loop around :func:`make_proxy_reply`: port 67 and port 4011."""

    def __init__(self, ctx: ProxyContext, bind: str = "0.0.0.0"):
        self.ctx = ctx
        self.bind = bind
        self._sock: socket.socket | None = None
        self._pxe: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if self.ctx.interface:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE,
                                self.ctx.interface.encode())
            sock.bind((self.bind, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        d = self.ctx.config.dhcp
        self._sock = self._socket(d.server_port)
        try:
            self._pxe = self._socket(d.pxe_port)
        except OSError:
            self._sock.close()
            self._sock = None
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="proxydhcp", daemon=True)
        self._thread.start()
        log.info("proxyDHCP listening on %s:%d and :%d (interface %s)", self.bind,
                 d.server_port, d.pxe_port, self.ctx.interface or "any")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for s in (self._sock, self._pxe):
            if s is not None:
                s.close()
        self._sock = self._pxe = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ, False)
            sel.register(self._pxe, selectors.EVENT_READ, True)
            while not self._stop.is_set():
                for key, _ in sel.select(POLL_SECONDS):
                    self._receive(key.fileobj, key.data)

    def _receive(self, sock: socket.socket, pxe_port: bool) -> None:
        try:
            payload, src = sock.recvfrom(RECV_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            if self._stop.is_set():
                return
            raise
        try:
            self.handle(payload, src, pxe_port)
        except Exception:
            log.exception("error handling a %d-byte proxyDHCP packet from %s", len(payload),
                          src)

    def handle(self, payload: bytes, src: tuple[str, int], pxe_port: bool = False) -> None:
        req = c.decode(payload)
        if req is None:
            return
        self._observe(req, pxe_port)
        item = pxe_boot_item(payload) if pxe_port else None
        reply = make_proxy_reply(req, self.ctx, pxe_port=pxe_port, boot_item=item)
        if reply is None:
            log.debug("%s %s on port %d: not ours", req.mac, c.MSG_NAMES[req.msg_type],
                      self.ctx.config.dhcp.pxe_port if pxe_port else
                      self.ctx.config.dhcp.server_port)
            return
        kind = "dhcp-proxy-ack" if pxe_port else "dhcp-proxy-offer"
        self.ctx.events.record(req.mac, kind, reply.note, log)
        data = packing.encode(reply, self.ctx.config.address)
        self._sendto(data, self.destination(reply, src, pxe_port), pxe_port)

    def _observe(self, req: c.DhcpRequest, pxe_port: bool) -> None:
        addr = observed_address(req, self.ctx, pxe_port)
        if (addr is not None and self.ctx.observe is not None
                and self.ctx.observe(req.mac, addr, time.time())):
            log.info("%s uses %s (seen by proxyDHCP): its TFTP and HTTP requests are "
                     "attributed to it", req.mac, addr)

    def destination(self, reply: c.DhcpReply, src: tuple[str, int],
                    pxe_port: bool) -> tuple[str, int]:
        d, req = self.ctx.config.dhcp, reply.request
        if pxe_port:
            return (src[0] if src[0] != "0.0.0.0" else BROADCAST, src[1])
        if req.giaddr != "0.0.0.0":
            return (req.giaddr, d.server_port)
        return (BROADCAST, d.client_port)

    def _sendto(self, data: bytes, dest: tuple[str, int], pxe_port: bool) -> None:
        sock = self._pxe if pxe_port else self._sock
        if sock is not None:
            sock.sendto(data, dest)
