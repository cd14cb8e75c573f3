"""Round trip through the real ISC dhcpd: import a corpus file into a store,
export it, ``dhcpd -t`` accepts the export, importing the export into a
fresh store gives the same hosts, boot rules and subnets."""

from __future__ import annotations

import pytest

from appliance.dhcpd_conf.export import export
from appliance.dhcpd_conf.importer import apply, load
from appliance.dhcpd_conf.plan import Snapshot, plan
from appliance.store import Store
from tests.protocol.test_dhcpd_corpus import GOOD, dhcpd_check

IMPORTABLE = [p for p in GOOD if p.name not in
              ("events-and-execute.conf", "man-ddns-keys-zones.conf")]


def imported(path, db) -> Store:
    store = Store(db).open()
    result = plan(load(path), Snapshot.of(store))
    assert result.ok, result.errors
    apply(result, store, 60)
    return store


def contents(store: Store) -> tuple:
    hosts = [(h.mac, h.name, h.ip, h.options, h.boot_rules, h.source) for h in store.hosts()]
    return hosts, store.subnets()


@pytest.mark.parametrize("path", IMPORTABLE, ids=lambda p: p.name)
def test_import_export_dhcpd_accepts_reimport_is_identical(path, tmp_path):
    first = imported(path, tmp_path / "one.db")
    out = tmp_path / "exported.conf"
    out.write_text(export(first.hosts(), first.subnets()))
    result = dhcpd_check(out, tmp_path)
    assert result.returncode == 0, result.stderr + out.read_text()
    second = imported(out, tmp_path / "two.db")
    assert contents(second) == contents(first)
    assert first.hosts() or first.subnets(), "nothing was imported from this file"
    first.close()
    second.close()
