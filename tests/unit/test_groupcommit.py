"""Group commit: an ACK never leaves before its lease's batch committed.

The store used here is a real :class:`Store` subclass (shipped with the
tests, no mocks) whose :meth:`commit_batch` can be held back and records
which leases each commit made durable and when it returned.
"""

from __future__ import annotations

import threading

import pytest

from appliance.config import DhcpConfig
from appliance.groupcommit import GroupCommitter
from appliance.leases import Allocator
from appliance.model import Event, Lease
from appliance.store import Store

POOL = DhcpConfig(pool_first="10.0.0.10", pool_last="10.0.0.250", lease_time=100,
                  offer_hold=10)


class ObservableStore(Store):
    """A Store whose commits can be paused and are recorded once returned."""

    def __init__(self, path):
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.committed: list[set[str]] = []  # ips made durable, per returned commit
        self.durable: set[str] = set()
        self.log_lock = threading.Lock()

    def commit_batch(self, leases, events):
        self.entered.set()
        self.gate.wait(10)
        done = super().commit_batch(leases, events)
        with self.log_lock:  # recorded only after the commit returned
            ips = {lease.ip for (lease, _), ok in zip(leases, done, strict=True) if ok}
            self.committed.append(ips)
            self.durable |= ips
        return done


@pytest.fixture
def store(tmp_path):
    s = ObservableStore(tmp_path / "db").open()
    yield s
    s.close()


@pytest.fixture
def writer(store):
    w = GroupCommitter(store).start()
    yield w
    w.stop()


def test_ack_callback_never_runs_before_its_commit_returned(store, writer):
    alloc = Allocator(store, POOL, "10.0.0.1", writer=writer)
    seen, violations, done = [], [], threading.Event()
    n = 40

    def ack(ip):
        def cb(ok):
            with store.log_lock:
                if not ok or ip not in store.durable:
                    violations.append(ip)  # the ACK would have left too early
            seen.append(ip)
            if len(seen) == n:
                done.set()
        return cb

    store.gate.clear()  # the first commit "fsyncs" until we say so
    for i in range(n):
        mac = f"52:54:00:00:01:{i:02x}"
        lease, ticket = alloc.bind_async(mac, alloc.offer(mac, None))
        ticket.then(ack(lease.ip))
        if i == 0:
            assert store.entered.wait(5)  # writer is inside commit 1, holding lease 0
    assert not seen, "an ACK callback ran while its commit was still in progress"
    store.gate.set()
    assert done.wait(10)
    assert violations == []
    assert len(set(seen)) == n


def test_concurrent_requests_share_commits(store, writer):
    alloc = Allocator(store, POOL, "10.0.0.1", writer=writer)
    store.gate.clear()
    tickets = []
    for i in range(50):
        mac = f"52:54:00:00:02:{i:02x}"
        tickets.append(alloc.bind_async(mac, alloc.offer(mac, None))[1])
    store.gate.set()
    assert all(t.wait(10) for t in tickets)
    writer.flush()
    # 50 offers + 50 binds: far fewer transactions (fsyncs) than writes
    assert 1 <= len(store.committed) < 10, store.committed


def test_pending_writes_are_visible_to_the_allocator(store, writer):
    """Addresses offered/bound in a batch not yet committed are never reused."""
    alloc = Allocator(store, POOL, "10.0.0.1", writer=writer)
    store.gate.clear()
    ips = [alloc.offer(f"52:54:00:00:03:{i:02x}", None) for i in range(20)]
    assert len(set(ips)) == 20
    a, b = "52:54:00:00:03:00", "52:54:00:00:03:01"
    assert alloc.bind_async(b, ips[0]) is None  # a's pending offer, b cannot have it
    assert alloc.bind_async(a, ips[0]) is not None
    store.gate.set()
    writer.flush()
    assert {lease.ip for lease in store.leases()} == set(ips)


def test_moved_lease_frees_old_address_in_the_view(store, writer):
    mac = "52:54:00:00:04:01"
    store.put_lease(Lease(mac, "10.0.0.10", 10_000_000_000, "bound"))
    store.gate.clear()
    assert writer.put_lease(Lease(mac, "10.0.0.20", 10_000_000_000, "bound")) is not None
    assert writer.lease_for_ip("10.0.0.10") is None
    assert writer.lease_for_mac(mac).ip == "10.0.0.20"
    assert "10.0.0.10" not in writer.busy_ips(0)
    store.gate.set()
    writer.flush()
    assert store.lease_for_ip("10.0.0.10") is None


def test_events_ride_the_batches(store, writer):
    store.gate.clear()
    writer.put_lease(Lease("52:54:00:00:05:01", "10.0.0.30", 10_000_000_000, "offered"))
    assert store.entered.wait(5)
    for i in range(30):
        writer.add_event(Event(float(i), "52:54:00:00:05:01", "dhcp-test", str(i)))
    store.gate.set()
    writer.flush()
    assert len(store.events("52:54:00:00:05:01")) == 30
    assert len(store.committed) <= 3


def test_refused_at_commit_resolves_not_ok(store, writer):
    """Another process took the address between decision and commit: no ACK."""
    other = Store(store.path).open()
    store.gate.clear()
    ticket = writer.put_lease(Lease("52:54:00:00:06:01", "10.0.0.40", 1e12, "bound"),
                              check_free_at=1.0)
    assert store.entered.wait(5)
    other.put_lease(Lease("52:54:00:00:06:02", "10.0.0.40", 1e12, "bound"))
    other.close()
    store.gate.set()
    assert ticket.wait(10) is False


def test_dhcp_server_sends_acks_only_after_commit(tmp_path):
    """The socket loop's contract, end to end minus the socket."""
    from appliance.config import load_config
    from appliance.events import EventLog
    from appliance.kickstart import Renderer
    from appliance.policy import BootPolicy
    from appliance.sandbox_inline import InlineSandbox
    from appliance.servers import dhcp_codec as c
    from appliance.servers.dhcp import DhcpContext, DhcpServer
    from appliance.templates import TemplateLibrary

    from .test_dhcp import LINUX, SERVER, packet

    cfg = load_config(None, address=SERVER, pool="10.99.0.100-10.99.0.200",
                      state_dir=str(tmp_path), kickstarts_dir=str(tmp_path))
    store = ObservableStore(cfg.db_path).open()
    ctx = DhcpContext(cfg, BootPolicy(store, cfg, Renderer(
        InlineSandbox(), TemplateLibrary(store, tmp_path))),
        Allocator(store, cfg.dhcp, SERVER), EventLog(store), None)
    sent, early = [], []

    class Recording(DhcpServer):
        def send(self, reply, payload):
            with store.log_lock:
                if reply.msg_type == c.ACK and reply.yiaddr not in store.durable:
                    early.append(reply.yiaddr)
            sent.append(reply)

    server = Recording(ctx)
    server.attach_writer()
    try:
        macs = [f"52:54:00:00:07:{i:02x}" for i in range(30)]
        server.handle_batch([packet(LINUX, mac=m) for m in macs])
        server.writer.flush()
        offers = {ctx.allocator.view.lease_for_mac(m).ip: m for m in macs}
        store.gate.clear()
        server.handle_batch([packet(LINUX, c.REQUEST, mac=m, requested=ip, server_id=SERVER)
                             for ip, m in offers.items()])
        assert store.entered.wait(5)
        acks_before = sum(1 for r in sent if r.msg_type == c.ACK)
        store.gate.set()
        server.writer.flush()
    finally:
        server.writer.stop()
        store.close()
    assert acks_before == 0, "an ACK left while its commit was held back"
    assert early == []
    assert len(sent) == 60


def test_a_write_nobody_waits_for_rides_the_next_commit(store):
    """An OFFER's hold (wake=False) is visible at once and shares the next fsync."""
    writer = GroupCommitter(store, lazy_delay=60).start()  # only a waking write commits
    try:
        hold = Lease("52:54:00:00:08:01", "10.0.0.81", 1e12, "offered")
        assert writer.put_lease(hold, 1.0, wake=False) is not None
        assert writer.lease_for_ip("10.0.0.81") == hold  # pending, already in the view
        with pytest.raises(TimeoutError):  # nobody woke the writer for it
            writer.flush(timeout=0.5)
        assert store.committed == []
        bound = writer.put_lease(Lease("52:54:00:00:08:02", "10.0.0.83", 1e12, "bound"), 1.0)
        assert bound.wait(10)
        assert store.committed == [{"10.0.0.81", "10.0.0.83"}]  # one commit, one fsync
    finally:
        writer.stop()


def test_a_lone_write_nobody_waits_for_is_still_committed(store, writer):
    lone = Lease("52:54:00:00:08:03", "10.0.0.82", 1e12, "offered")
    writer.put_lease(lone, 1.0, wake=False)
    writer.flush()  # nothing woke the writer: it commits the hold within lazy_delay
    assert store.lease_for_ip("10.0.0.82") == lone
