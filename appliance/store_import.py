"""Applying a dhcpd.conf import to the store: one transaction, bulk writes.

A mixin of :class:`appliance.store.Store`.  :meth:`ImportRows.apply_import`
writes added hosts, updates changed ones, deletes removed ones and upserts
subnets in ONE ``BEGIN IMMEDIATE`` transaction: when any write fails (an
address another host took since the plan was made, a disk error) nothing
of the import is kept.  A changed host keeps its profile, netboot flag,
install token and variables: an import only owns the fields it maps.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from .model import Host, Subnet
from .store_errors import StoreError
from .store_subnets import _BUMP, GENERATION_KEY

_UPDATE = ("UPDATE hosts SET name=?, ip=?, options=?, boot_rules=?, tenant=?, source=? "
           "WHERE mac=?")


def _mapped(h: Host) -> tuple:
    rules = json.dumps([dataclasses.asdict(r) for r in h.boot_rules])
    return (h.name, h.ip, json.dumps(h.options), rules, h.tenant, h.source, h.mac)


class ImportRows:
    """Needs the host class's ``_tx``, ``_host_row``, ``_HOST_UPSERT``."""

    def apply_import(self, added: list[Host], changed: list[Host], removed: list[str],
                     subnets: list[Subnet], token_ttl: float) -> None:
        """Write one import atomically (see the module docstring); raises
        StoreError naming the first write that failed, having changed nothing."""

        try:
            with self._tx() as db:
                db.executemany("DELETE FROM hosts WHERE mac=?", [(m,) for m in removed])
                # free the changed hosts' addresses first: two hosts may swap IPs
                db.executemany("UPDATE hosts SET ip=NULL WHERE mac=?",
                               [(h.mac,) for h in changed])
                db.executemany(_UPDATE, [_mapped(h) for h in changed])
                db.executemany(self._HOST_UPSERT.split(" ON CONFLICT")[0],
                               [self._host_row(h, token_ttl) for h in added])
                db.executemany("INSERT INTO subnets VALUES (?,?,?,?,?) ON CONFLICT(network) "
                               "DO UPDATE SET pools=excluded.pools, options=excluded.options, "
                               "lease_time=excluded.lease_time, "
                               "max_lease_time=excluded.max_lease_time",
                               [(s.network, json.dumps([list(p) for p in s.pools]),
                                 json.dumps(s.options), s.lease_time, s.max_lease_time)
                                for s in subnets])
                if subnets:
                    db.execute(_BUMP, (GENERATION_KEY,))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"import not applied, nothing changed: {exc}") from None
