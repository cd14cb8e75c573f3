"""The state database's schema and its migrations (see :class:`appliance.store.Store`).

``SCHEMA`` creates every table and index that is missing (``IF NOT EXISTS``:
new tables and indexes need no migration step); :func:`migrate` adds the
columns and indexes older databases lack and records ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import sqlite3

from .store_changes import CHANGES_SCHEMA
from .store_observed import OBSERVED_SCHEMA
from .store_subnets import SUBNETS_SCHEMA
from .store_tenants import TENANTS_SCHEMA

SCHEMA_VERSION = 6

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS distros (
    name TEXT PRIMARY KEY, kernel TEXT NOT NULL, initrd TEXT NOT NULL,
    arch TEXT NOT NULL, breed TEXT NOT NULL, variables TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT PRIMARY KEY, distro TEXT NOT NULL REFERENCES distros(name),
    template TEXT, cmdline TEXT NOT NULL DEFAULT '', variables TEXT NOT NULL DEFAULT '{}',
    uefi_loader TEXT NOT NULL DEFAULT 'ipxe');
CREATE TABLE IF NOT EXISTS templates (
    name TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, ts REAL NOT NULL,
    note TEXT NOT NULL DEFAULT '', PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS hosts (
    mac TEXT PRIMARY KEY, name TEXT, ip TEXT UNIQUE,
    profile TEXT REFERENCES profiles(name), netboot INTEGER NOT NULL,
    token TEXT UNIQUE, token_expires REAL, variables TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}', boot_rules TEXT NOT NULL DEFAULT '[]',
    tenant TEXT, source TEXT, uefi_loader TEXT);
CREATE TABLE IF NOT EXISTS leases (
    ip TEXT PRIMARY KEY, mac TEXT NOT NULL, expires REAL NOT NULL,
    state TEXT NOT NULL, hostname TEXT);
CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, mac TEXT NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS events_mac ON events(mac, id);
CREATE INDEX IF NOT EXISTS events_mac_ts ON events(mac, ts);
""" + SUBNETS_SCHEMA + TENANTS_SCHEMA + CHANGES_SCHEMA + OBSERVED_SCHEMA
# schema 6: the UEFI loader choice (Secure Boot: shim + GRUB) on hosts and profiles
UEFI_LOADER_COLUMNS = (("hosts", "uefi_loader", "TEXT"),
                       ("profiles", "uefi_loader", "TEXT NOT NULL DEFAULT 'ipxe'"))


def migrate(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: variables on distros and profiles; 2 -> 3: options on
    hosts (the subnets table is created by the schema script); 3 -> 4:
    boot_rules, tenant, source on hosts (tenant tables: schema script); 4 -> 5:
    the events_kind index (:meth:`events_of_kind`: the last rows of one kind,
    by id, read from the index alone -- ``id`` is the rowid every index holds)
    and the observed-addresses table (schema script); 5 -> 6:
    ``UEFI_LOADER_COLUMNS``."""
    for table, column, decl in (
            ("distros", "variables", "TEXT NOT NULL DEFAULT '{}'"),
            ("profiles", "variables", "TEXT NOT NULL DEFAULT '{}'"),
            ("hosts", "options", "TEXT NOT NULL DEFAULT '{}'"),
            ("hosts", "boot_rules", "TEXT NOT NULL DEFAULT '[]'"),
            ("hosts", "tenant", "TEXT"), ("hosts", "source", "TEXT"),
            *UEFI_LOADER_COLUMNS):
        cols = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in cols:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    db.execute("CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id)")
    db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
