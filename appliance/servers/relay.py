"""Relay agents (RFC 3046): whose option 82 counts, and how it is reported.

Pure helpers for :mod:`appliance.servers.dhcp`.  ``ctx`` is anything with
``config`` (``config.dhcp.relays``: the trusted relay addresses) and, for
:func:`note_untrusted`, an ``untrusted`` set of senders already logged.

Trust is by giaddr alone: option 82 is honoured only when the relay that
set giaddr is listed.  A client can forge option 82 and giaddr alike, so on
an untrusted segment the listed relays must be the only path to the server
(the relay agent itself drops client-supplied option 82, RFC 3046 2.1).
"""

from __future__ import annotations

import logging

from . import dhcp_codec as c

log = logging.getLogger("plowshare.dhcp")

MAX_NOTED = 4096  # senders remembered as logged; then the memory starts over


def trusted_relay_info(req: c.DhcpRequest, ctx) -> bytes | None:
    """Option 82 of ``req`` if it came from a trusted relay, else ``None`` (pure)."""
    if req.relay_info is None or req.giaddr == "0.0.0.0":
        return None
    return req.relay_info if req.giaddr in ctx.config.dhcp.relays else None


def note_untrusted(req: c.DhcpRequest, ctx) -> None:
    """Log (once per sender) that ``req``'s option 82 is not honoured."""
    if len(ctx.untrusted) > MAX_NOTED:
        ctx.untrusted.clear()
    sender = req.giaddr if req.giaddr != "0.0.0.0" else req.mac
    if req.relay_info is not None and sender not in ctx.untrusted \
            and trusted_relay_info(req, ctx) is None:
        ctx.untrusted.add(sender)
        log.warning("%s option 82 via %s ignored: not a trusted relay (logged once)",
                    req.mac, req.giaddr)


def relay_note(req: c.DhcpRequest, ctx) -> str:
    """The relay part of an event's detail ('' for a request without relay)."""
    if req.giaddr == "0.0.0.0":
        return ""
    sub = c.relay_suboptions(trusted_relay_info(req, ctx))
    ids = "".join(f" {name} {sub[code].hex()}" for name, code in
                  (("circuit-id", c.RELAY_CIRCUIT_ID), ("remote-id", c.RELAY_REMOTE_ID))
                  if code in sub)
    return f" relay {req.giaddr}{ids}"
