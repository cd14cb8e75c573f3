"""Address conflicts: the ping check before an OFFER, and DECLINE probation.

What ISC dhcpd's ``ping-check`` and Kea's ``ping_check`` hook do, without
blocking anybody:

* Before OFFERing an address the client does not hold now, the DHCP loop
  sends one ICMP echo (:mod:`appliance.servers.icmp_probe`) and *holds that
  one OFFER* for :data:`PROBE_TIMEOUT`.  No reply: the OFFER leaves.  A
  reply: the address is marked ``conflict`` in the store (out of the pool
  for :data:`CONFLICT_PROBATION`), a ``dhcp-conflict`` event and one warning
  line name the client's MAC, and the client is offered another address --
  probed too, at most :data:`MAX_ATTEMPTS` addresses per DISCOVER.  The loop
  keeps serving everybody else meanwhile: the guard's socket and deadlines
  feed the loop's ``select`` (:meth:`ConflictGuard.fds`,
  :meth:`ConflictGuard.timeout`); nothing sleeps.
* Under load the check is skipped (one log line per episode): when
  :data:`MAX_OUTSTANDING` probes are already out, or more than
  :data:`HIGH_RATE` DHCP packets arrived in the last :data:`RATE_WINDOW`.
  A storm gets prompt OFFERs, never dnsmasq's "3 offers in 10 s".
* DHCPDECLINE (RFC 2131 section 4.3.3) is accepted by the allocator only
  from the MAC the address was offered to or bound by; the declined
  address is on probation and is probed (a reply makes it ``conflict``).
  At most :data:`PROBATION_CAP` of the pool may be on probation: beyond
  that the oldest ``declined`` entries are released early, so a DECLINE
  storm cannot take the pool away.  ``conflict`` entries (a host really
  answered) are never released early.

The decisions are the pure functions :func:`needs_probe` and
:func:`probation_excess` and the :class:`LoadGate`; :class:`ConflictGuard`
is the thin state machine the loop drives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..leases import Allocator
from ..model import Lease
from . import dhcp_codec as c

log = logging.getLogger("plowshare.dhcp")

PROBE_TIMEOUT = 0.5       # seconds an OFFER waits for an echo reply (ISC dhcpd: 1 s)
MAX_ATTEMPTS = 3          # addresses probed for one DISCOVER before giving up on it
MAX_OUTSTANDING = 16      # probes in flight beyond which new OFFERs go unprobed
HIGH_RATE = 40            # DHCP packets per RATE_WINDOW beyond which probing stops
RATE_WINDOW = 1.0         # seconds
CONFLICT_PROBATION = 1800  # seconds an address that answered a ping stays out of the pool
PROBATION_CAP = 0.10      # fraction of the pool that may be on probation at once
SWEEP_DELAY = 1.0         # seconds after a DECLINE before the probation cap is enforced
HELD_STATES = ("offered", "bound")
PROBATION_STATES = ("declined", "conflict")


def needs_probe(ip: str, mac: str, prior: Lease | None, in_pool: bool, reserved: bool,
                now: float) -> bool:
    """Probe ``ip`` before offering it to ``mac``?

    Only dynamic-pool addresses (a reservation is the operator's word), and
    only when ``prior`` -- the MAC's lease before this DISCOVER -- is not
    this very address, offered or bound and unexpired (a retransmitted
    DISCOVER or a client that still holds it).
    """
    if not in_pool or reserved:
        return False
    holds = (prior is not None and prior.ip == ip and prior.mac == mac
             and prior.state in HELD_STATES and prior.expires > now)
    return not holds


def probation_excess(entries: list[Lease], pool_size: int,
                     cap: float = PROBATION_CAP) -> list[str]:
    """Addresses to release early so that at most ``cap`` of the pool is on probation.

    ``entries`` are the unexpired probation leases; the oldest ``declined``
    ones (earliest expiry) go first, ``conflict`` ones never.
    """
    limit = max(1, int(pool_size * cap))
    excess = len(entries) - limit
    if excess <= 0:
        return []
    declined = sorted((e for e in entries if e.state == "declined"), key=lambda e: e.expires)
    return [e.ip for e in declined[:excess]]


class LoadGate:
    """Whether the server is quiet enough to probe; logs once per busy episode."""

    def __init__(self, max_outstanding: int = MAX_OUTSTANDING, high_rate: int = HIGH_RATE,
                 window: float = RATE_WINDOW):
        self.max_outstanding = max_outstanding
        self.high_rate = high_rate
        self.window = window
        self.busy = False
        self._start = 0.0
        self._count = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            self._previous = self._count if now - self._start < 2 * self.window else 0
            self._start, self._count = now, 0

    def note_packet(self, now: float) -> None:
        self._roll(now)
        self._count += 1

    def allow(self, now: float, outstanding: int) -> bool:
        self._roll(now)
        rate = max(self._count, self._previous)
        reason = None
        if outstanding >= self.max_outstanding:
            reason = f"{outstanding} probes outstanding"
        elif rate > self.high_rate:
            reason = f"{rate} DHCP packets in {self.window:g} s"
        if reason is not None and not self.busy:
            log.warning("ping check skipped under load (%s) until it eases", reason)
        elif reason is None and self.busy:
            log.info("ping check resumed")
        self.busy = reason is not None
        return not self.busy


@dataclass
class _Held:
    req: c.DhcpRequest
    reply: c.DhcpReply
    deadline: float
    attempt: int


class ConflictGuard:
    """The ping check and DECLINE probation, driven by the DHCP loop.

    ``prober``: an :class:`~appliance.servers.icmp_probe.IcmpProber` (or the
    fake).  :meth:`start` opens it and takes the loop's callbacks: ``emit``
    sends a reply, ``decide`` is ``make_reply`` for a request, ``events``
    the event log to record on.  If the prober cannot be opened (no
    CAP_NET_RAW) the check is off, logged once, and OFFERs go out unprobed.
    """

    def __init__(self, allocator: Allocator, prober, clock=time.monotonic,
                 gate: LoadGate | None = None):
        self.allocator = allocator
        # the subnets whose pools are probed and capped; the DHCP server points
        # this at its subnet table (default: the allocator's one pool)
        self.subnets = lambda: [allocator.default_subnet()]
        self.prober = prober
        self.clock = clock
        self.gate = gate or LoadGate()
        self.enabled = False
        self._held: dict[str, _Held] = {}        # address -> the OFFER waiting for it
        self._held_mac: dict[str, str] = {}      # mac -> address of its held OFFER
        self._declined: dict[str, tuple[float, str]] = {}  # address -> (deadline, mac)
        self._sweep_at: float | None = None
        self._last_decline = 0.0
        self._emit = self._decide = None
        self.events = None

    # -- lifecycle --------------------------------------------------------------
    def start(self, emit, decide, events) -> None:
        self._emit, self._decide, self.events = emit, decide, events
        try:
            self.prober.start()
            self.enabled = True
        except OSError as exc:
            self.enabled = False
            log.warning("ping check off: no ICMP socket (%s)", exc)

    def stop(self) -> None:
        """Drop what is held (an OFFER promises nothing; the client retransmits)."""
        if self.enabled:
            self.prober.stop()
        self.enabled = False
        self._held.clear()
        self._held_mac.clear()
        self._declined.clear()

    # -- what the loop asks -------------------------------------------------------
    def fds(self) -> list:
        """What the loop should also wait on: the prober, only while a probe is out
        (else stray ICMP -- anybody's ping replies -- would wake the loop for nothing)."""
        return [self.prober] if self.enabled and (self._held or self._declined) else []

    def timeout(self, default: float) -> float:
        """Seconds the loop may wait in ``select`` before :meth:`tick` is due."""
        if not self._held and not self._declined and self._sweep_at is None:
            return default  # the common case under load: nothing is waiting
        deadlines = [h.deadline for h in self._held.values()]
        deadlines += [d for d, _mac in self._declined.values()]
        if self._sweep_at is not None:
            deadlines.append(self._sweep_at)
        if not deadlines:
            return default
        return max(0.0, min(default, min(deadlines) - self.clock()))

    def lease_before(self, req: c.DhcpRequest) -> Lease | None:
        """The MAC's lease before a DISCOVER is decided (``None`` for other messages)."""
        if not self.enabled or req.msg_type != c.DISCOVER or self.gate.busy:
            return None  # busy: no probe is coming, spare the lookup
        return self.allocator.view.lease_for_mac(req.mac)

    def intercept(self, req: c.DhcpRequest, reply: c.DhcpReply | None,
                  prior: Lease | None) -> bool:
        """Called for every request after ``make_reply``; True: the guard keeps ``reply``."""
        now = self.clock()
        self.gate.note_packet(now)
        if req.msg_type == c.DECLINE and req.requested_ip:
            self._on_decline(req.mac, req.requested_ip, now)
            return False
        if reply is None or reply.msg_type != c.OFFER:
            return False
        ip = self._held_mac.get(req.mac)
        if ip is not None:
            if ip == reply.yiaddr:  # a retransmitted DISCOVER: answer it when the probe ends
                self._held[ip].req, self._held[ip].reply = req, reply
                return True
            self._unhold(ip)
        return self._probe_offer(req, reply, prior, 1, now)

    def tick(self) -> None:
        """Take echo replies, send the OFFERs whose probe timed out, enforce the cap."""
        if not self._held and not self._declined and self._sweep_at is None:
            return  # the common case under load: nothing is waiting
        now = self.clock()
        if self.enabled and (self._held or self._declined):
            for ip in self.prober.replies():
                self._answered(ip)
        for ip in [ip for ip, h in self._held.items() if h.deadline <= now]:
            self._send(self._unhold(ip).reply)
        for ip in [ip for ip, (d, _m) in self._declined.items() if d <= now]:
            del self._declined[ip]
            self.prober.forget(ip)
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep(now)

    # -- internals ----------------------------------------------------------------
    def _probe_offer(self, req, reply, prior, attempt: int, now: float) -> bool:
        ip = reply.yiaddr
        if not self.enabled or not self.gate.allow(now, len(self._held) + len(self._declined)):
            return False
        in_pool = any(self.allocator.in_pool(ip, s) for s in self.subnets())
        if not needs_probe(ip, req.mac, prior, in_pool,
                           self.allocator.hosts.host_by_ip(ip) is not None,
                           self.allocator.clock()):
            return False
        self.prober.send(ip)
        self._held[ip] = _Held(req, reply, now + PROBE_TIMEOUT, attempt)
        self._held_mac[req.mac] = ip
        return True

    def _unhold(self, ip: str) -> _Held:
        held = self._held.pop(ip)
        self._held_mac.pop(held.req.mac, None)
        self.prober.forget(ip)
        return held

    def _answered(self, ip: str) -> None:
        if ip in self._held:
            held = self._unhold(ip)
            self._conflict(held.req.mac, ip, "offer withheld")
            self._reoffer(held)
        elif ip in self._declined:
            _deadline, mac = self._declined.pop(ip)
            lease = self.allocator.view.lease_for_ip(ip)
            if lease is not None and lease.state == "declined":
                self._conflict(mac, ip, "declined address")

    def _conflict(self, mac: str, ip: str, what: str) -> None:
        self.allocator.probation(ip, "conflict", CONFLICT_PROBATION)
        self.events.record(mac, "dhcp-conflict", f"{ip} answered a ping ({what}); out of "
                           f"the pool for {CONFLICT_PROBATION} s", log, logging.WARNING)

    def _reoffer(self, held: _Held) -> None:
        mac = held.req.mac
        if held.attempt >= MAX_ATTEMPTS:
            log.warning("%s %d offered addresses answered pings; no OFFER until it asks "
                        "again", mac, held.attempt)
            return
        reply = self._decide(held.req)
        if reply is None or reply.msg_type != c.OFFER:
            return  # pool exhausted: the allocator logged it
        if not self._probe_offer(held.req, reply, None, held.attempt + 1, self.clock()):
            self._send(reply)

    def _send(self, reply: c.DhcpReply) -> None:
        try:
            self._emit(reply)
        except Exception:
            log.exception("%s held %s not sent", reply.request.mac,
                          c.MSG_NAMES[reply.msg_type].upper())

    def _on_decline(self, mac: str, ip: str, now: float) -> None:
        lease = self.allocator.view.lease_for_ip(ip)
        if lease is None or lease.state != "declined":
            return  # refused by the allocator (not this MAC's address)
        self._last_decline = now
        if self._sweep_at is None:
            self._sweep_at = now + SWEEP_DELAY
        if self.enabled and ip not in self._declined and \
                self.gate.allow(now, len(self._held) + len(self._declined)):
            self.prober.send(ip)
            self._declined[ip] = (now + PROBE_TIMEOUT, mac)

    def _sweep(self, now: float) -> None:
        """Release the oldest ``declined`` entries beyond the probation cap."""
        self._sweep_at = None
        if now - self._last_decline < SWEEP_DELAY:  # its write may not be committed yet
            self._sweep_at = self._last_decline + SWEEP_DELAY
        entries = self.allocator.store.leases_in_states(PROBATION_STATES,
                                                       self.allocator.clock())
        excess = probation_excess(entries, sum(self.allocator.pool_size(s)
                                               for s in self.subnets()))
        released = [ip for ip in excess if self.allocator.end_probation(ip)]
        if released:
            log.warning("probation cap (%d%% of the pool) reached: released %d declined "
                        "addresses early, oldest first (%s...)", int(PROBATION_CAP * 100),
                        len(released), released[0])
