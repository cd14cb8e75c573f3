"""Addresses Plowshare saw a machine use without handing them out itself.

A mixin of :class:`appliance.store.Store`.  In proxyDHCP mode another DHCP
server leases the addresses, so neither a reservation nor a lease tells TFTP
and HTTP which machine a request comes from.  The proxy records what the
client's own messages say (the address it requests from the other server, or
the ``ciaddr`` it sends to port 4011), and :meth:`Store.mac_for_ip` falls
back to the latest such observation while it is fresh.  An observation is a
hint, never an allocation: nothing reads it for leasing.
"""

from __future__ import annotations

OBSERVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS observed (
    ip TEXT PRIMARY KEY, mac TEXT NOT NULL, ts REAL NOT NULL);
"""
OBSERVED_TTL = 12 * 3600.0  # seconds an observation attributes requests (an install's length)


class ObservedRows:
    """Observed addresses; needs the host class's ``_tx`` and ``_query``."""

    def observe_address(self, mac: str, ip: str, ts: float) -> bool:
        """Record that ``mac`` uses ``ip`` as of ``ts`` (the address's previous
        user is forgotten).  True when this changed who uses ``ip``.  A repeat
        within half the TTL writes nothing (a PXE client sends several
        REQUESTs per boot; each write is a durable transaction)."""
        rows = self._query("SELECT mac, ts FROM observed WHERE ip=?", (ip,))
        if rows and rows[0][0] == mac and rows[0][1] > ts - OBSERVED_TTL / 2:
            return False
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO observed (ip, mac, ts) VALUES (?,?,?)",
                       (ip, mac, ts))
        return not rows or rows[0][0] != mac

    def observed_mac(self, ip: str, now: float, ttl: float = OBSERVED_TTL) -> str | None:
        """The MAC last seen using ``ip`` within ``ttl`` seconds before ``now``."""
        rows = self._query("SELECT mac FROM observed WHERE ip=? AND ts>?", (ip, now - ttl))
        return rows[0][0] if rows else None
