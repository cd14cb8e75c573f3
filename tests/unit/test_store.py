"""The store: install-token lifecycle, lease rules, visibility across processes."""

from __future__ import annotations

import pytest

from appliance.config import DhcpConfig
from appliance.leases import Allocator
from appliance.model import Distro, Event, Host, Profile
from appliance.store import Store, StoreError

MAC, OTHER = "52:54:00:00:00:01", "52:54:00:00:00:02"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db").open()
    (tmp_path / "k").write_bytes(b"k")
    s.add_distro(Distro("d", str(tmp_path / "k"), str(tmp_path / "k")))
    s.add_profile(Profile("p", "d"))
    yield s
    s.close()


def test_token_is_single_use_and_turns_netboot_off(store):
    token = store.add_host(Host(MAC, "p"), 3600).token
    assert store.host_by_token(token).mac == MAC
    assert store.complete_install(token).netboot is False
    assert store.complete_install(token) is None
    assert store.host_by_token(token) is None


def test_new_install_revokes_old_token(store):
    old = store.add_host(Host(MAC, "p"), 3600).token
    new = store.set_netboot(MAC, True, 3600).token
    assert new != old
    assert store.host_by_token(old) is None and store.complete_install(old) is None
    assert store.host_by_token(new).mac == MAC


def test_expired_token_is_refused(store):
    token = store.add_host(Host(MAC, "p"), 10).token
    import time
    assert store.host_by_token(token, now=time.time() + 11) is None
    assert store.complete_install(token, now=time.time() + 11) is None
    assert store.host(MAC).netboot is True


def test_netboot_off_host_has_no_token(store):
    assert store.add_host(Host(MAC, "p", netboot=False), 60).token is None


def test_references_are_checked(store):
    with pytest.raises(StoreError):
        store.add_host(Host(MAC, "nosuch"), 60)
    with pytest.raises(StoreError):
        store.add_profile(Profile("x", "nosuch"))
    with pytest.raises(StoreError):
        store.set_netboot(OTHER, True, 60)


def test_duplicate_reserved_ip_refused(store):
    store.add_host(Host(MAC, "p", ip="10.0.0.5"), 60)
    with pytest.raises(StoreError):
        store.add_host(Host(OTHER, "p", ip="10.0.0.5"), 60)


def test_writes_are_visible_to_another_connection(store, tmp_path):
    store.add_host(Host(MAC, "p"), 60)
    other = Store(tmp_path / "db").open()
    try:
        assert other.host(MAC) is not None
    finally:
        other.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def alloc(store):
    clock = Clock()
    dhcp = DhcpConfig(pool_first="10.0.0.10", pool_last="10.0.0.12", lease_time=100,
                      offer_hold=10)
    return Allocator(store, dhcp, "10.0.0.1", clock), clock


def test_offer_hold_expires_and_address_is_reused(alloc):
    a, clock = alloc
    assert a.offer(MAC, None) == "10.0.0.10"
    assert a.offer(OTHER, None) == "10.0.0.11"
    clock.now += 11  # MAC never requested: its hold lapsed
    assert a.offer("52:54:00:00:00:03", None) == "10.0.0.12"  # next fit
    assert a.offer("52:54:00:00:00:04", None) == "10.0.0.10"  # wrapped: lapsed hold reused


def test_bound_lease_is_kept_until_expiry(alloc):
    a, clock = alloc
    assert a.bind(MAC, a.offer(MAC, None)).ip == "10.0.0.10"
    assert a.bind(OTHER, "10.0.0.10") is None
    clock.now += 101
    assert a.bind(OTHER, "10.0.0.10") is not None


def test_requested_address_honoured_when_free(alloc):
    a, _ = alloc
    assert a.offer(MAC, "10.0.0.12") == "10.0.0.12"
    assert a.offer(OTHER, "10.0.0.12") == "10.0.0.10"


def test_out_of_pool_and_server_address_refused(alloc):
    a, _ = alloc
    assert a.bind(MAC, "10.0.0.99") is None
    assert a.bind(MAC, "10.0.0.1") is None


def test_release_frees_address(alloc):
    a, _ = alloc
    a.bind(MAC, "10.0.0.10")
    a.release(MAC, "10.0.0.10")
    assert a.offer(OTHER, "10.0.0.10") == "10.0.0.10"


def test_timeline_is_in_the_order_things_happened(store):
    """DHCP events reach the store lazily (group commit), so one recorded
    earlier can be committed after an HTTP event: the timeline sorts by time."""
    mac = "52:54:00:00:00:07"
    store.add_event(Event(100.0, mac, "dhcp-discover", ""))
    store.add_event(Event(102.0, mac, "http-script", "local"))  # committed first...
    store.add_event(Event(101.0, mac, "dhcp-ack", "10.0.0.5"))  # ...than this one
    store.add_event(Event(102.0, mac, "http-file", "same time: commit order"))
    assert [e.kind for e in store.events(mac)] == [
        "dhcp-discover", "dhcp-ack", "http-script", "http-file"]
    assert [e.kind for e in store.events(mac, limit=2)] == ["http-script", "http-file"]
