"""DHCP server adapter: decode -> Machine -> policy + allocator -> reply.

:func:`~appliance.servers.dhcp_reply.make_reply` (in :mod:`.dhcp_reply`,
re-exported here) is the whole decision for one request and is what unit
tests call with golden packets; :class:`DhcpServer` is the thin socket loop
around it.  Contract of the loop:

* one UDP socket on ``0.0.0.0:67`` bound to the provisioning interface with
  ``SO_BINDTODEVICE`` (a socket bound to the interface address would not see
  the broadcast requests), so the ingress interface is always known;
* replies follow RFC 2131 section 4.1: to the relay (giaddr), to ciaddr, by
  broadcast when the client set the flag (or for a NAK), else unicast to
  yiaddr at the client's hardware address -- sent as a raw Ethernet frame on
  the same interface, because the client cannot answer ARP yet;
* **an ACK leaves only after the group commit holding its lease returned**:
  :func:`make_reply` puts the lease's :class:`~appliance.groupcommit.Ticket`
  on the reply (``reply.durable``) and the loop sends such a reply only from
  ``ticket.then`` -- never directly;
* packets are handled in batches (whatever is queued on the socket, up to
  :data:`DRAIN`); a full drain means the loop is behind: :mod:`~appliance.servers.dhcp_triage` answers the requests that
  finish exchanges first and sheds the oldest DISCOVERs (``shed`` counts
  them); and while more than :data:`BACKLOG` lease writes wait for their
  commit, the loop waits too (holding no lock and no GIL), so the writer
  commits and sends ACKs instead of competing with new work; lease writes and events are queued on one :class:`~appliance.groupcommit.GroupCommitter` whose writer
  thread commits them with one fsync per batch while the loop goes on;
* no packet, however malformed, stops the loop;
* the store is not read per packet: once per batch its change token (a
  pragma) says whether anything was committed since the last batch, and only
  then its generation counters (one query) tell the subnet table, the host
  index (:class:`~appliance.indexes.HostIndex`, which :func:`make_reply` and
  the allocator read hosts from while the server runs) and the group
  committer's lease index whether to re-read anything.

Options: a client's parameter request list (option 55) and maximum message
size (option 57) shape every OFFER and ACK (:mod:`.dhcp_packing`).

Relays (RFC 3046): a request with giaddr is answered for the subnet of the
relay, to the relay.  Option 82 counts only from a relay in
``[dhcp] relays``: its circuit-id and remote-id go on the
:class:`~appliance.model.Machine` and the event, and the option is echoed
unchanged as the reply's last option (RFC 3046 section 2.2).  From any other
relay, or without giaddr, option 82 is neither used nor echoed (logged once
per sender).
"""

from __future__ import annotations

import logging
import select
import socket
import threading

from ..arch import describe
from ..groupcommit import GroupCommitter
from ..indexes import HostIndex
from ..store_changes import HOSTS_GENERATION, LEASES_GENERATION
from . import dhcp_codec as c
from . import dhcp_packing as packing
from .dhcp_reply import DhcpContext, make_reply, nak
from .dhcp_triage import triage
from .l2 import L2Sender
from .relay import relay_note, trusted_relay_info

log = logging.getLogger("plowshare.dhcp")

RECV_BUFFER = 4096
POLL_SECONDS = 0.5
BATCH = 64  # requests a batch answers when the loop keeps up
DRAIN = 4 * BATCH  # packets taken off the socket at most per batch
BEHIND = DRAIN - 1  # a drain of more packets than this: the loop is behind
BUDGET = 2 * BATCH  # requests a batch answers when behind (REQUESTs first)
SHED_FLOOR = BATCH // 2  # DISCOVERs a batch answers however far behind
BACKLOG = 4 * BATCH  # lease writes queued for commit past which the loop waits
RCVBUF = 1 << 20  # socket receive buffer: holds more than one DRAIN of requests
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    """Past ``net.core.rmem_max`` when allowed (root), else as far as it goes."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, size)
    except (OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class DhcpServer:
    """Socket loop around :func:`make_reply` on one interface.

    ``writer``: the group committer to use (default: one of its own, started
    and stopped with the server, attached to ``ctx.allocator`` meanwhile).
    ``guard``: a :class:`~appliance.servers.conflict.ConflictGuard` (ping
    check, DECLINE probation) or ``None``; it may hold an OFFER and send it
    later through :meth:`emit`, and its socket and deadlines join the loop's
    ``select``.
    """

    def __init__(self, ctx: DhcpContext, bind: str = "0.0.0.0",
                 writer: GroupCommitter | None = None, guard=None):
        self.ctx = ctx
        self.guard = guard
        self.bind = bind
        self.writer = writer
        self._own_writer = writer is None
        self.events = ctx.events
        self._sock: socket.socket | None = None
        self._l2: L2Sender | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hosts: HostIndex | None = None
        self._store_token = None  # Store.change_token() when last synced
        self.shed = 0  # DISCOVERs shed because the loop was behind (dhcp_triage)

    def attach_writer(self) -> None:
        """Start the group committer (unless given) and the host index; attach both."""
        alloc = self.ctx.allocator
        self.hosts = HostIndex(alloc.store)
        self.hosts.refresh()
        if self.writer is None:
            self.writer = GroupCommitter(alloc.store).start()
        alloc.writer, alloc.hosts, self.writer.hosts = self.writer, self.hosts, self.hosts
        self.events = self.ctx.events.via(self.writer)

    def open(self) -> None:
        """Bind the socket and start the writer (and guard) without reading yet.

        Requests sent meanwhile wait in the socket; :meth:`start` reads them.
        """
        if self._sock is not None:
            return
        d = self.ctx.config.dhcp
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        _set_rcvbuf(sock, RCVBUF)
        if self.ctx.interface:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ctx.interface.encode())
            self._l2 = L2Sender(self.ctx.interface)
            self._l2.open()
        sock.bind((self.bind, d.server_port))
        sock.setblocking(False)  # _receive waits in select(), then drains
        self._sock = sock
        self.attach_writer()
        if self.guard is not None:
            self.guard.subnets = lambda: self.ctx.table().subnets()
            self.guard.start(self.emit, lambda req: make_reply(req, self.ctx), self.events)

    def start(self) -> None:
        """:meth:`open` (unless done), then answer requests in the loop thread."""
        self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dhcp", daemon=True)
        self._thread.start()
        log.info("listening on %s:%d (interface %s)", self.bind, self.ctx.config.dhcp.server_port,
                 self.ctx.interface or "any")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.guard is not None:
            self.guard.stop()
        if self.writer is not None and self._own_writer:
            self.writer.stop()  # commits what is queued and sends its ACKs
            self.writer = None
        self.ctx.allocator.writer = None
        self.ctx.allocator.hosts = self.ctx.allocator.store
        self.events = self.ctx.events
        for s in (self._sock, self._l2):
            if s is not None:
                s.close()
        self._sock = self._l2 = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _receive(self) -> list[bytes]:
        """Wait (up to POLL_SECONDS) for packets, then take what is queued (<= DRAIN)."""
        payloads: list[bytes] = []
        guard = self.guard
        waits = [self._sock, *guard.fds()] if guard else [self._sock]
        timeout = guard.timeout(POLL_SECONDS) if guard else POLL_SECONDS
        if self._sock not in select.select(waits, [], [], timeout)[0]:
            return payloads
        recv = self._sock.recv
        while len(payloads) < DRAIN:
            try:
                payloads.append(recv(RECV_BUFFER))
            except (BlockingIOError, InterruptedError):
                break
        return payloads

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                payloads = self._receive()
            except OSError:
                if self._stop.is_set():
                    return
                raise
            if payloads:
                self.handle_batch(payloads, behind=len(payloads) > BEHIND)
            writer = self.writer
            if writer is not None and writer.backlog() > BACKLOG:
                writer.wait_for_room(BACKLOG // 2, POLL_SECONDS)  # let the ACKs out first
            if self.guard is not None:
                try:
                    self.guard.tick()
                except Exception:
                    log.exception("error in the ping check")

    def sync_store(self) -> None:
        """Bring the host index, lease index and subnet table up to the store."""
        store = self.ctx.allocator.store
        token = store.change_token()  # read first: a later commit changes it again
        if token == self._store_token:
            return  # nothing committed since; a new table (reload) reads on first use
        generations = store.generations()
        if self.hosts is not None:
            self.hosts.refresh(generations.get(HOSTS_GENERATION, 0))
        if self.writer is not None:
            self.writer.sync(generations.get(LEASES_GENERATION, 0))
        self.ctx.table().refresh()
        self._store_token = token

    def handle_batch(self, payloads: list[bytes], behind: bool = False) -> None:
        """Answer one batch; ``behind``: more was queued than a batch handles, so
        :func:`~appliance.servers.dhcp_triage.triage` orders it and sheds DISCOVERs."""
        try:
            self.sync_store()
        except Exception:
            log.exception("store not re-read; answering from the previous hosts, leases "
                          "and subnets")
        requests = []
        for payload in payloads:
            req = c.decode(payload)  # never raises
            if req is not None:
                requests.append(req)
        plan = triage(requests, behind, BUDGET, SHED_FLOOR)
        if plan.shed:
            self.shed += len(plan.shed)
            log.info("behind: %d packets queued, %d answered first, %d DISCOVERs answered, "
                     "%d oldest DISCOVERs shed (%d so far)", len(payloads), plan.first,
                     len(plan.handle) - plan.first, len(plan.shed), self.shed)
        for req in plan.handle:
            try:
                self.answer(req)
            except Exception:
                log.exception("%s error handling a DHCP %s", req.mac,
                              c.MSG_NAMES.get(req.msg_type, req.msg_type))

    def handle(self, payload: bytes) -> None:
        req = c.decode(payload)
        if req is not None:
            self.answer(req)

    def answer(self, req: c.DhcpRequest) -> None:
        """Record ``req``, decide, and send (or hand to the guard) the reply."""
        ev = self.events
        ev.record(req.mac, f"dhcp-{c.MSG_NAMES[req.msg_type]}",
                  f"arch {describe(req.arch)} vendor {req.vendor_class!r} "
                  f"user {req.user_class!r}{relay_note(req, self.ctx)}", log)
        prior = self.guard.lease_before(req) if self.guard is not None else None
        reply = make_reply(req, self.ctx)
        if self.guard is not None and self.guard.intercept(req, reply, prior):
            return  # held while its address is probed; the guard emits it later
        if reply is not None:
            self.emit(reply)

    def emit(self, reply: c.DhcpReply) -> None:
        """Record and send ``reply`` (an ACK only once its lease is durable)."""
        self.events.record(reply.request.mac, f"dhcp-{c.MSG_NAMES[reply.msg_type]}",
                           f"{reply.yiaddr} {reply.note}".strip(), log)
        data = packing.encode(reply, self.ctx.config.address)
        if reply.durable is None:
            self.send(reply, data)
        else:  # the ACK waits for its lease's group commit
            reply.durable.then(lambda ok: self._deliver(reply, data, ok))

    def _deliver(self, reply: c.DhcpReply, data: bytes, committed: bool) -> None:
        """Runs after the commit that holds ``reply``'s lease returned."""
        if not committed:
            log.warning("%s lease %s not committed: NAK instead of ACK", reply.request.mac,
                        reply.yiaddr)
            reply = nak(reply.request, trusted_relay_info(reply.request, self.ctx))
            data = packing.encode(reply, self.ctx.config.address)
        try:
            self.send(reply, data)
        except OSError as exc:
            log.warning("%s reply not sent: %s", reply.request.mac, exc)

    def send(self, reply: c.DhcpReply, payload: bytes) -> None:
        req, d = reply.request, self.ctx.config.dhcp
        if req.giaddr != "0.0.0.0":
            self._sock.sendto(payload, (req.giaddr, d.server_port))
        elif req.ciaddr != "0.0.0.0" and reply.msg_type != c.NAK:
            self._sock.sendto(payload, (req.ciaddr, d.client_port))
        elif req.broadcast or reply.msg_type == c.NAK or self._l2 is None \
                or reply.yiaddr == "0.0.0.0":
            self._sock.sendto(payload, ("255.255.255.255", d.client_port))
        else:
            self._l2.send_udp(req.chaddr, self.ctx.config.address, reply.yiaddr,
                              d.server_port, d.client_port, payload)
