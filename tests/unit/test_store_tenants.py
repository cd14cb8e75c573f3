"""Schema 4: boot rules, tenant and source on hosts; tenant tables; atomic import writes."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.model import BootRule, Host, Subnet
from appliance.store import SCHEMA_VERSION, Store, StoreError

MAC = "52:54:00:12:34:56"
SCHEMA_3 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '3');
CREATE TABLE hosts (mac TEXT PRIMARY KEY, name TEXT, ip TEXT UNIQUE,
    profile TEXT, netboot INTEGER NOT NULL, token TEXT UNIQUE, token_expires REAL,
    variables TEXT NOT NULL DEFAULT '{}', options TEXT NOT NULL DEFAULT '{}');
INSERT INTO hosts VALUES ('52:54:00:12:34:56', 'old', '10.99.0.9', NULL, 0, NULL, NULL,
    '{"a": 1}', '{"interface-mtu": 1400}');
"""


def test_migration_from_schema_3_keeps_hosts_and_adds_rules_tenant_source(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript(SCHEMA_3)
    db.close()
    store = Store(tmp_path / "old.db").open()
    host = store.host(MAC)
    assert (host.name, host.ip, host.options, host.boot_rules, host.tenant, host.source) == \
        ("old", "10.99.0.9", {"interface-mtu": 1400}, (), None, None)
    rules = (BootRule('option user-class = "iPXE"', "http://x/y"), BootRule(None, "a.kpxe"))
    store.add_host(Host(MAC, None, boot_rules=rules, tenant=None, source="dhcpd:operator"), 60)
    assert store.host(MAC).boot_rules == rules and store.host(MAC).source == "dhcpd:operator"
    assert store.tenants() == []
    store.close()
    db = sqlite3.connect(tmp_path / "old.db")
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == \
        (str(SCHEMA_VERSION),)
    db.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db").open()
    yield s
    s.close()


def test_tenants_own_macs_exclusively(store):
    store.add_tenant("acme")
    store.add_tenant("globex")
    store.assign_tenant("acme", [MAC], [("10.0.0.10", "10.0.0.19")])
    assert store.tenant_macs() == {MAC: "acme"}
    assert store.tenant_ranges() == {"acme": [("10.0.0.10", "10.0.0.19")]}
    with pytest.raises(StoreError, match="already belongs to tenant 'acme'"):
        store.assign_tenant("globex", [MAC])
    with pytest.raises(StoreError, match="no tenant"):
        store.assign_tenant("nobody", ["52:54:00:00:00:09"])
    with pytest.raises(StoreError, match="first address after the last"):
        store.assign_tenant("globex", [], [("10.0.0.9", "10.0.0.1")])
    with pytest.raises(StoreError):
        store.add_tenant("bad name; drop")
    assert store.tenant_macs() == {MAC: "acme"}  # refused writes left nothing


def test_apply_import_is_one_transaction(store):
    store.add_host(Host("52:54:00:00:00:01", None, ip="10.0.0.1"), 60)
    store.add_host(Host("52:54:00:00:00:02", None, ip="10.0.0.2", source="dhcpd:operator"), 60)
    added = [Host("52:54:00:00:00:03", None, ip="10.0.0.3", source="dhcpd:operator"),
             Host("52:54:00:00:00:04", None, ip="10.0.0.1", source="dhcpd:operator")]
    with pytest.raises(StoreError, match="nothing changed"):
        store.apply_import(added, [], ["52:54:00:00:00:02"], [Subnet("10.0.0.0/24")], 60)
    assert [h.mac for h in store.hosts()] == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    assert store.subnets() == [] and store.subnets_generation() == 0


def test_apply_import_swaps_addresses_and_keeps_install_state(store):
    a = store.add_host(Host("52:54:00:00:00:01", None, ip="10.0.0.1", source="s"), 60)
    store.add_host(Host("52:54:00:00:00:02", None, ip="10.0.0.2", source="s"), 60)
    store.apply_import([], [Host("52:54:00:00:00:01", None, ip="10.0.0.2", source="s"),
                            Host("52:54:00:00:00:02", None, ip="10.0.0.1", source="s")],
                       [], [], 60)
    assert store.host("52:54:00:00:00:01").ip == "10.0.0.2"
    assert store.host("52:54:00:00:00:01").token == a.token and a.token
