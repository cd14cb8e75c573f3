"""Pool exhaustion is logged once per subnet per change, not once per DISCOVER."""

from __future__ import annotations

import logging

from appliance.config import DhcpConfig
from appliance.leases import Allocator
from appliance.log_edges import Edge, Edges
from appliance.model import Subnet
from appliance.store import Store


def test_edges_report_start_and_end_with_the_count_of_the_episode():
    e = Edges()
    assert e.note("a", False) is None  # never held: nothing to say
    assert e.note("a", True) == Edge("a", True, 1)
    assert [e.note("a", True) for _ in range(4)] == [None] * 4
    assert e.note("b", True) == Edge("b", True, 1)  # keys are independent
    assert e.holding() == {"a": 5, "b": 1}
    assert e.note("a", False) == Edge("a", False, 5)
    assert e.note("a", False) is None
    assert e.note("a", True) == Edge("a", True, 1)  # a new episode
    assert e.holding() == {"a": 1, "b": 1}


def test_exhausted_pool_logs_once_per_subnet_per_state_change(tmp_path, caplog):
    store = Store(tmp_path / "db").open()
    alloc = Allocator(store, DhcpConfig(lease_time=100, offer_hold=10), "10.5.0.1")
    small = Subnet("10.5.0.0/24", (("10.5.0.10", "10.5.0.11"),))
    other = Subnet("10.6.0.0/24", ())  # no pool at all: every DISCOVER refused
    try:
        with caplog.at_level(logging.INFO, logger="plowshare.dhcp"):
            assert alloc.offer("52:54:00:00:00:01", None, subnet=small) == "10.5.0.10"
            assert alloc.offer("52:54:00:00:00:02", None, subnet=small) == "10.5.0.11"
            for i in range(3, 50):  # a storm of new clients on a full pool
                assert alloc.offer(f"52:54:00:00:00:{i:02x}", None, subnet=small) is None
                assert alloc.offer(f"52:54:00:00:01:{i:02x}", None, subnet=other) is None
            alloc.release("52:54:00:00:00:01", "10.5.0.10")
            assert alloc.offer("52:54:00:00:00:77", None, subnet=small) == "10.5.0.10"
            assert alloc.offer("52:54:00:00:00:78", None, subnet=small) is None
    finally:
        store.close()
    lines = [r.getMessage() for r in caplog.records if "pool of" in r.getMessage()]
    exhausted = "{} pool of {} exhausted, no offer (no more lines until an address frees up)"
    assert lines == [
        exhausted.format("52:54:00:00:00:03", "10.5.0.0/24"),
        exhausted.format("52:54:00:00:01:03", "10.6.0.0/24"),
        ("pool of 10.5.0.0/24 has a free address again (10.5.0.10): 47 DISCOVERs were "
         "refused while it was exhausted"),
        exhausted.format("52:54:00:00:00:78", "10.5.0.0/24")]
