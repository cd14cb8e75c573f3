"""The DHCP hot path's in-memory indexes agree with the store they mirror.

* LeaseIndex against a real Store, over random write sequences (hypothesis):
  after every write the store accepted, both answer every lookup alike;
  Store.put_lease's single-statement check is compared with the rules
  written out plainly here.
* HostIndex and the group committer's lease index follow writes made by
  another connection (the CLI, an importer) through the store's counters.
* A running DhcpServer answers a reservation added while it runs.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.groupcommit import BUSY_STATES, GroupCommitter
from appliance.indexes import HostIndex, LeaseIndex
from appliance.model import Host, Lease
from appliance.store import Store
from appliance.store_changes import HOSTS_GENERATION, LEASES_GENERATION

MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03", ""]
IPS = ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
RESERVED = ("10.0.0.12", "52:54:00:00:00:03")  # a host reservation in every example

writes = st.lists(st.tuples(
    st.sampled_from(MACS), st.sampled_from(IPS),
    st.sampled_from(("offered", "bound", "released", "declined", "conflict")),
    st.sampled_from((50.0, 100.0, 150.0, 200.0, 300.0)),  # expires (the checks at 100, 200)
    st.sampled_from((None, 100.0, 200.0))), max_size=25)  # check_free_at


def expected_ok(rows: dict[str, Lease], lease: Lease, at: float | None) -> bool:
    """Store.put_lease's check, spelled out: no other MAC's busy unexpired row,
    no other host's reservation."""
    if at is None:
        return True
    cur = rows.get(lease.ip)
    if cur is not None and cur.state in BUSY_STATES and cur.expires > at \
            and cur.mac != lease.mac:
        return False
    return not (lease.ip == RESERVED[0] and lease.mac != RESERVED[1])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes)
def test_lease_index_answers_as_the_store(seq):
    store = Store(":memory:").open()
    try:
        store.add_host(Host(mac=RESERVED[1], ip=RESERVED[0], profile=None, netboot=False),
                       token_ttl=60)
        index = LeaseIndex()
        index.load(store.leases())
        for mac, ip, state, expires, at in seq:
            lease = Lease(mac, ip, expires, state)
            want = expected_ok({row.ip: row for row in store.leases()}, lease, at)
            assert store.put_lease(lease, at) is want
            if want:
                index.apply(lease)
            for addr in IPS:
                assert index.for_ip(addr) == store.lease_for_ip(addr)
            for owner in MACS[:-1]:
                assert index.for_mac(owner) == store.lease_for_mac(owner)
            busy = {ip: m for ip, m in store.busy_ips(100.0).items() if ip != RESERVED[0]}
            assert {ip: m for ip, m in index.busy(100.0).items() if ip != RESERVED[0]} == busy
        reloaded = LeaseIndex()
        reloaded.load(store.leases())
        assert all(reloaded.for_ip(a) == index.for_ip(a) for a in IPS)
    finally:
        store.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db").open()
    yield s
    s.close()


def test_store_counters_move_on_host_writes_from_any_connection(store):
    other = Store(store.path).open()
    try:
        token = store.change_token()
        before = store.generations()[HOSTS_GENERATION]
        other.add_host(Host(mac="52:54:00:00:01:01", ip=None, profile=None, netboot=False),
                       token_ttl=60)
        assert store.generations()[HOSTS_GENERATION] == before + 1
        assert store.change_token() != token  # another process committed
        token = store.change_token()
        store.set_netboot("52:54:00:00:01:01", True, 60)  # this connection, an UPDATE
        assert store.generations()[HOSTS_GENERATION] == before + 2
        assert store.change_token() != token  # this Store committed
        token = store.change_token()
        assert store.change_token() == token  # nothing committed: unchanged
    finally:
        other.close()


def test_host_index_rereads_only_the_hosts_that_changed(store):
    index = HostIndex(store)
    store.add_host(Host(mac="52:54:00:00:02:00", ip="10.0.0.76", profile=None,
                        netboot=False), token_ttl=60)
    index.refresh()
    assert index.host("52:54:00:00:02:01") is None and index.loads == 1
    store.put_lease(Lease("52:54:00:00:02:09", "10.0.0.50", 1e12, "bound"))
    generation = index.generation
    index.refresh()
    assert index.generation == generation  # a lease write is not a host change
    other = Store(store.path).open()  # another process: the CLI, an importer
    other.add_host(Host(mac="52:54:00:00:02:01", ip="10.0.0.77", profile=None,
                        netboot=False), token_ttl=60)
    index.refresh()
    assert index.host("52:54:00:00:02:01").ip == "10.0.0.77"
    assert index.host_by_ip("10.0.0.77").mac == "52:54:00:00:02:01"
    # a reservation moves from one host to another, and a host goes (raw SQL, as
    # an importer might write): triggers note both MACs
    with other._tx() as db:
        db.execute("UPDATE hosts SET ip=NULL WHERE mac='52:54:00:00:02:01'")
        db.execute("UPDATE hosts SET ip='10.0.0.77' WHERE mac='52:54:00:00:02:00'")
        db.execute("DELETE FROM hosts WHERE mac='52:54:00:00:02:01'")
    other.close()
    index.refresh()
    assert index.host("52:54:00:00:02:01") is None
    assert index.reserved_ips() == {"10.0.0.77": "52:54:00:00:02:00"}
    assert index.loads == 1  # only the changed hosts were read
    fresh = HostIndex(store)
    fresh.refresh()
    assert fresh.reserved_ips() == index.reserved_ips()
    assert {m: fresh.host(m) for m in ("52:54:00:00:02:00", "52:54:00:00:02:01")} == \
        {m: index.host(m) for m in ("52:54:00:00:02:00", "52:54:00:00:02:01")}


def test_committer_reloads_after_a_write_that_bypassed_it(store):
    writer = GroupCommitter(store).start()
    try:
        assert writer.lease_for_ip("10.0.0.60") is None
        other = Store(store.path).open()
        other.put_lease(Lease("52:54:00:00:03:01", "10.0.0.60", 1e12, "bound"))
        other.close()
        assert writer.lease_for_ip("10.0.0.60") is None  # not told yet
        reloads = writer.reloads
        writer.sync(store.generations()[LEASES_GENERATION])
        done = threading.Event()
        for _ in range(500):
            if writer.reloads > reloads:
                done.set()
                break
            done.wait(0.01)
        assert done.is_set(), "the writer did not reload its lease index"
        assert writer.lease_for_ip("10.0.0.60").mac == "52:54:00:00:03:01"
        # the view refuses the address to anybody else now
        assert writer.put_lease(Lease("52:54:00:00:03:02", "10.0.0.60", 1e12, "bound"),
                                check_free_at=1.0) is None
    finally:
        writer.stop()


def test_committer_index_follows_its_own_commits(store):
    writer = GroupCommitter(store).start()
    try:
        mac = "52:54:00:00:04:01"
        assert writer.put_lease(Lease(mac, "10.0.0.70", 1e12, "offered"), 1.0).wait(10)
        assert writer.put_lease(Lease(mac, "10.0.0.71", 1e12, "bound"), 1.0).wait(10)
        writer.flush()
        # answered from the index alone, and the same as the store says
        assert writer.committed.for_mac(mac) == store.lease_for_mac(mac)
        assert writer.committed.for_ip("10.0.0.70") is None is store.lease_for_ip("10.0.0.70")
        assert writer.reloads == 1  # the load at start, nothing since
    finally:
        writer.stop()


def test_server_honours_a_reservation_added_while_it_runs(tmp_path):
    from appliance.servers import dhcp_codec as c

    from .test_dhcp import LINUX, packet, recording_server

    server, sent, store = recording_server(tmp_path, "10.99.0.100-10.99.0.200")
    cfg = server.ctx.config
    mac = "52:54:00:00:05:01"
    try:
        server.handle_batch([packet(LINUX, mac=mac)])
        first = sent[-1].yiaddr
        other = Store(cfg.db_path).open()  # as the CLI would, from another process
        other.add_host(Host(mac=mac, ip="10.99.0.42", profile=None, netboot=False), 60)
        other.add_host(Host(mac="52:54:00:00:05:02", ip=first, profile=None, netboot=False),
                       60)
        other.close()
        server.handle_batch([packet(LINUX, mac=mac)])
        assert sent[-1].msg_type == c.OFFER and sent[-1].yiaddr == "10.99.0.42"
        # the address it was offered first is now another host's: never offered again
        server.handle_batch([packet(LINUX, mac="52:54:00:00:05:03")])
        assert sent[-1].yiaddr not in (first, "10.99.0.42")
    finally:
        server.writer.stop()
        store.close()
