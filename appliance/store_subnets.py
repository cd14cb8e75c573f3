"""The ``subnets`` table of the store: DHCP subnets added at runtime.

A mixin of :class:`appliance.store.Store` (kept apart so that the store
module stays one screenful per concept).  Every write bumps the
``subnets_generation`` counter in ``meta`` in the same transaction: the DHCP
server compares that one integer per batch of packets and re-reads the
table only when it changed (:class:`appliance.subnets.SubnetTable`).

Rows hold what :func:`appliance.config.subnet_from` validated; the store
does not re-validate (it has no config), so writers go through that
function (the CLI does).
"""

from __future__ import annotations

import json

from .model import Subnet

SUBNETS_SCHEMA = """
CREATE TABLE IF NOT EXISTS subnets (
    network TEXT PRIMARY KEY, pools TEXT NOT NULL DEFAULT '[]',
    options TEXT NOT NULL DEFAULT '{}', lease_time INTEGER, max_lease_time INTEGER);
"""
GENERATION_KEY = "subnets_generation"
_BUMP = ("INSERT INTO meta VALUES (?, '1') ON CONFLICT(key) DO UPDATE SET "
         "value = CAST(value AS INTEGER) + 1")


class SubnetRows:
    """Subnet rows; needs the host class's ``_tx`` and ``_query``."""

    def put_subnet(self, subnet: Subnet) -> None:
        """Insert or replace the subnet with ``subnet.network``."""
        with self._tx() as db:
            db.execute("INSERT INTO subnets VALUES (?,?,?,?,?) ON CONFLICT(network) DO "
                       "UPDATE SET pools=excluded.pools, options=excluded.options, "
                       "lease_time=excluded.lease_time, "
                       "max_lease_time=excluded.max_lease_time",
                       (subnet.network, json.dumps([list(p) for p in subnet.pools]),
                        json.dumps(subnet.options), subnet.lease_time,
                        subnet.max_lease_time))
            db.execute(_BUMP, (GENERATION_KEY,))

    def delete_subnet(self, network: str) -> bool:
        """Remove a subnet; ``False`` when there was none (leases stay as they are)."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM subnets WHERE network=?", (network,)).rowcount
            if gone:
                db.execute(_BUMP, (GENERATION_KEY,))
        return bool(gone)

    def subnets(self) -> list[Subnet]:
        return [Subnet(net, tuple(tuple(p) for p in json.loads(pools)), json.loads(opts),
                       lease, most, "store")
                for net, pools, opts, lease, most in self._query(
                    "SELECT network, pools, options, lease_time, max_lease_time "
                    "FROM subnets ORDER BY network")]

    def subnets_generation(self) -> int:
        """Changes whenever a subnet row is written (0: never)."""
        rows = self._query("SELECT value FROM meta WHERE key=?", (GENERATION_KEY,))
        return int(rows[0][0]) if rows else 0
