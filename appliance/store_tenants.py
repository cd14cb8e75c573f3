"""Tenants in the store: who owns which MACs and which address ranges.

A mixin of :class:`appliance.store.Store`.  A MAC belongs to at most one
tenant (``tenant_macs.mac`` is unique); a tenant may have any number of
inclusive IPv4 ranges.  A tenant with no range may use any address that is
not reserved by a host of someone else (that check is the importer's, see
:mod:`appliance.dhcpd_conf.plan`).  Tenant names are short words: they end
up in host ``source`` tags (``dhcpd:<tenant>``) and on command lines.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3

TENANTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tenant_macs (
    mac TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name));
CREATE TABLE IF NOT EXISTS tenant_ranges (
    tenant TEXT NOT NULL REFERENCES tenants(name), first TEXT NOT NULL, last TEXT NOT NULL,
    PRIMARY KEY (tenant, first, last));
"""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

from .store_errors import StoreError


def check_range(first: str, last: str) -> tuple[str, str]:
    """Canonical ``(first, last)``; ValueError unless both are IPv4 and first <= last."""
    a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
    if a > b:
        raise ValueError(f"range {a}-{b}: first address after the last")
    return str(a), str(b)


class TenantRows:
    """Tenant rows; needs the host class's ``_tx`` and ``_query`` (and StoreError)."""

    def add_tenant(self, name: str) -> None:

        if not _NAME.fullmatch(name) or name == "operator":
            raise StoreError(f"tenant {name!r}: use letters, digits, '_', '.', '-' "
                             "(and not 'operator')")
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO tenants VALUES (?)", (name,))

    def tenants(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM tenants ORDER BY name")]

    def assign_tenant(self, name: str, macs: list[str],
                      ranges: list[tuple[str, str]] = ()) -> None:
        """Give ``macs`` (normalised) and ``ranges`` to tenant ``name``, in one
        transaction; a MAC that another tenant owns is refused (StoreError)."""

        with self._tx() as db:
            if db.execute("SELECT 1 FROM tenants WHERE name=?", (name,)).fetchone() is None:
                raise StoreError(f"no tenant {name!r} (plowshare tenant add {name})")
            for mac in macs:
                row = db.execute("SELECT tenant FROM tenant_macs WHERE mac=?",
                                 (mac,)).fetchone()
                if row is not None and row[0] != name:
                    raise StoreError(f"MAC {mac} already belongs to tenant {row[0]!r}")
            try:
                db.executemany("INSERT OR IGNORE INTO tenant_macs VALUES (?,?)",
                               [(mac, name) for mac in macs])
                db.executemany("INSERT OR IGNORE INTO tenant_ranges VALUES (?,?,?)",
                               [(name, *check_range(a, b)) for a, b in ranges])
            except (sqlite3.IntegrityError, ValueError) as exc:
                raise StoreError(f"tenant {name}: {exc}") from None

    def tenant_macs(self) -> dict[str, str]:
        """mac -> tenant for every assigned MAC."""
        return dict(self._query("SELECT mac, tenant FROM tenant_macs"))

    def tenant_ranges(self) -> dict[str, list[tuple[str, str]]]:
        """tenant -> its ranges (tenants without ranges are absent)."""
        out: dict[str, list[tuple[str, str]]] = {}
        for tenant, first, last in self._query(
                "SELECT tenant, first, last FROM tenant_ranges ORDER BY tenant, first"):
            out.setdefault(tenant, []).append((first, last))
        return out
