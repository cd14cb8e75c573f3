"""The DHCP decision for one request: decode -> Machine -> policy + allocator
-> reply.  :func:`make_reply` is what the server loop
(:mod:`appliance.servers.dhcp`) and the unit tests with golden packets call;
it has no socket.  Its contract on durability: an ACK's lease goes on the
reply as a :class:`~appliance.groupcommit.Ticket` (``reply.durable``), and
the loop sends such a reply only once that ticket's commit returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import dhcp_options
from ..config import Config
from ..events import EventLog
from ..leases import Allocator
from ..model import Subnet
from ..policy import BootPolicy
from ..subnets import SubnetTable
from . import dhcp_codec as c
from . import dhcp_packing as packing
from .dhcp_boot import boot_answer
from .relay import note_untrusted, trusted_relay_info

log = logging.getLogger("plowshare.dhcp")


@dataclass
class DhcpContext:
    """Everything :func:`make_reply` consults besides the request."""

    config: Config
    policy: BootPolicy
    allocator: Allocator
    events: EventLog
    interface: str | None = None
    subnets: SubnetTable | None = None  # None: built from config and store on first use
    untrusted: set = field(default_factory=set)  # option-82 senders already logged

    def table(self) -> SubnetTable:
        """The subnet table of the current config (rebuilt if the config was replaced)."""
        if self.subnets is None or self.subnets.config is not self.config:
            self.subnets = SubnetTable(self.config, self.allocator.store)
        return self.subnets


def _with_boot(reply: c.DhcpReply, req: c.DhcpRequest, ctx: DhcpContext) -> c.DhcpReply:
    answer = boot_answer(req, ctx)
    if answer is None:
        return reply
    reply.filename = answer.filename
    reply.siaddr = answer.spec.next_server or ctx.config.address
    reply.sname = answer.spec.server_name or ""
    reply.options += answer.options
    reply.note = answer.note
    return reply


def _host_options(host) -> list:
    if host is None or not host.name or "host-name" in host.options:
        return []
    return [("hostname", host.name.encode())]


def _options(req, ctx, subnet: Subnet, host, lease_time: int | None) -> list:
    return ctx.table().options(subnet, host, lease_time) + _host_options(host)


def _offer(req, ctx, subnet: Subnet) -> c.DhcpReply | None:
    host = ctx.allocator.hosts.host(req.mac)  # one lookup per request, shared below
    ip = ctx.allocator.offer(req.mac, req.requested_ip, req.hostname, host=host,
                             subnet=subnet)
    if ip is None:
        return None
    lease_time = ctx.table().lease_time(subnet, host, req.lease_time)
    reply = c.DhcpReply(c.OFFER, req, yiaddr=ip,
                        options=_options(req, ctx, subnet, host, lease_time))
    return _with_boot(reply, req, ctx)


def nak(req: c.DhcpRequest, relay_info: bytes | None = None) -> c.DhcpReply:
    """A DHCPNAK; ``relay_info``: a trusted relay's option 82 to echo."""
    options = [("error_message", b"address not available")]
    if relay_info is not None:
        options.append(("relay_agent_information", relay_info))
    return c.DhcpReply(c.NAK, req, options=options)


def _request(req, ctx, subnet: Subnet) -> c.DhcpReply | None:
    ours = ctx.config.address
    if req.server_id is not None and req.server_id != ours:
        log.info("%s chose server %s, not us", req.mac, req.server_id)
        return None
    ip = req.requested_ip or (req.ciaddr if req.ciaddr != "0.0.0.0" else None)
    if ip is None:
        return None
    host = ctx.allocator.hosts.host(req.mac)
    lease_time = ctx.table().lease_time(subnet, host, req.lease_time)
    bound = ctx.allocator.bind_async(req.mac, ip, req.hostname, host=host, subnet=subnet,
                                     lease_time=lease_time)
    if bound is None:
        return nak(req)
    reply = c.DhcpReply(c.ACK, req, yiaddr=ip, durable=bound[1],
                        options=_options(req, ctx, subnet, host, lease_time))
    return _with_boot(reply, req, ctx)


def make_reply(req: c.DhcpRequest, ctx: DhcpContext) -> c.DhcpReply | None:
    """The reply to ``req``, or ``None`` to stay silent.  Side effects: leases.

    An ACK comes back with ``reply.durable``, the ticket of its lease write:
    the caller must not send it before that ticket is done (with a
    group-committing allocator it is not done yet when this returns).
    """
    subnet = ctx.table().select(req.giaddr, req.ciaddr, req.mac)
    if subnet is None:
        return None  # relayed from a network we do not serve (logged by the table)
    note_untrusted(req, ctx)
    reply = _answer(req, ctx, subnet)
    if reply is not None and reply.msg_type != c.NAK and req.params is not None:
        always = ctx.config.dhcp.always_send + subnet.always_send
        packing.select_reply(reply, dhcp_options.always_codes(always))  # option 55
    echo = trusted_relay_info(req, ctx)
    if reply is not None and echo is not None and reply.msg_type != c.NAK:
        reply.options.append(("relay_agent_information", echo))  # RFC 3046 2.2: last
    elif reply is not None and echo is not None:
        reply = nak(req, echo)
    return reply


def _answer(req: c.DhcpRequest, ctx: DhcpContext, subnet: Subnet) -> c.DhcpReply | None:
    kind = req.msg_type
    if kind == c.DISCOVER:
        return _offer(req, ctx, subnet)
    if kind == c.REQUEST:
        return _request(req, ctx, subnet)
    if kind == c.INFORM:
        host = ctx.allocator.hosts.host(req.mac)
        reply = c.DhcpReply(c.ACK, req, options=_options(req, ctx, subnet, host, None))
        return _with_boot(reply, req, ctx)
    if kind == c.RELEASE and req.ciaddr != "0.0.0.0":
        ctx.allocator.release(req.mac, req.ciaddr)
    elif kind == c.DECLINE and req.requested_ip:
        if req.server_id is not None and req.server_id != ctx.config.address:
            log.info("%s DECLINE of %s is for server %s, not us", req.mac, req.requested_ip,
                     req.server_id)
        elif ctx.allocator.decline(req.mac, req.requested_ip):
            log.warning("%s declined %s (address in use?): on probation", req.mac,
                        req.requested_ip)
        else:
            log.warning("%s DECLINE of %s ignored: not offered to or bound by it", req.mac,
                        req.requested_ip)
    return None
