"""What a DHCP batch answers first, and what it drops, when the loop is behind.

Pure decision (no socket, no clock) beside the DHCP loop
(:class:`~appliance.servers.dhcp.DhcpServer`), which calls :func:`triage`
once per batch with the decoded requests in arrival order and its load
signal.

Contract:

* **Not behind** (the loop emptied the socket in one drain): every request
  is handled, in arrival order; nothing is shed.
* **Behind** (the drain stopped at its limit, so more is queued): requests
  that finish work already started -- REQUEST, and RELEASE, DECLINE,
  INFORM, which are cheap and carry a client's state -- are all handled
  first, in arrival order.  Then DISCOVERs (new work; anything else that
  decoded counts as new work too) up to ``budget`` requests in the batch,
  but never fewer than ``floor``, so that a storm of REQUESTs cannot
  starve new clients entirely.  The DISCOVERs kept
  are the newest: the oldest ones have waited longest in the socket queue
  and their clients are the likeliest to have given up or retransmitted
  already (RFC 2131 section 4.1: a client retransmits a DISCOVER it got no
  OFFER for).  The DISCOVERs not kept are shed: not answered, not recorded.
* Nothing else is dropped: every non-DISCOVER in the batch is handled.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dhcp_codec as c

# Message types that finish or settle an exchange (RFC 2131 section 3.1, 3.2, 4.4.6)
_FINISHING = frozenset((c.REQUEST, c.RELEASE, c.DECLINE, c.INFORM))


@dataclass(frozen=True)
class Triage:
    """The decision for one batch: ``handle`` in that order; ``shed`` dropped."""

    handle: list
    shed: list

    @property
    def first(self) -> int:
        """How many of ``handle`` were put before the DISCOVERs (behind only)."""
        return sum(1 for r in self.handle if r.msg_type in _FINISHING)


def triage(requests: list, behind: bool, budget: int, floor: int = 0) -> Triage:
    """Order and shed ``requests`` (decoded, arrival order) for one batch.

    ``behind``: the loop's load signal (more was queued than it drained).
    ``budget``: how many requests the loop means to handle per batch;
    ``floor``: DISCOVERs kept per batch however many others came in.
    """
    if not behind:
        return Triage(list(requests), [])
    finishing = [r for r in requests if r.msg_type in _FINISHING]
    discovers = [r for r in requests if r.msg_type not in _FINISHING]
    keep = max(budget - len(finishing), floor, 0)
    cut = max(len(discovers) - keep, 0)  # the oldest DISCOVERs go
    return Triage(finishing + discovers[cut:], discovers[:cut])
