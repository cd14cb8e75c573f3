"""What changed in the store since: the counters the DHCP hot path's indexes follow.

A mixin of :class:`appliance.store.Store` (kept apart as the subnet rows
are).  :mod:`appliance.indexes` keeps hosts and leases in memory and needs
to know, cheaply and whoever wrote, when to re-read them:

* :meth:`ChangeRows.change_token` -- differs after *anything* was committed
  since (no table read): ``PRAGMA data_version`` of the shared connection,
  which moves with every other connection's commit (another process, the
  group-commit connection), plus the Store's own count of commits on the
  shared connection, which the pragma does not see.
* ``hosts_generation`` in ``meta`` -- bumped by SQLite triggers on every
  insert, update or delete of a ``hosts`` row, whoever writes it (this
  process, the CLI, an importer's raw SQL); the same triggers note the
  row's MAC at that generation in ``host_changes``, so an index re-reads
  only the hosts written since (:meth:`ChangeRows.host_changes`).
* ``leases_generation`` in ``meta`` -- bumped by every lease write that does
  *not* go through :meth:`Store.commit_batch` (the group committer applies
  its own commits to its index, and reloads when this moves).
"""

from __future__ import annotations

from .model import Host

HOSTS_GENERATION = "hosts_generation"
LEASES_GENERATION = "leases_generation"
BIND_LIMIT = 500  # host MACs per IN (...) query: SQLite's bound-parameter limit, with margin

CHANGES_SCHEMA = """
INSERT OR IGNORE INTO meta VALUES ('hosts_generation', '0'), ('leases_generation', '0');
CREATE TABLE IF NOT EXISTS host_changes (mac TEXT PRIMARY KEY, generation INTEGER NOT NULL);
"""


def _host_trigger(op: str, rows: tuple[str, ...]) -> str:
    """After ``op`` on hosts: bump hosts_generation, note the row's MAC(s) at it."""
    # DELETE + INSERT, not INSERT OR REPLACE: an outer statement's conflict
    # clause (add_host's upsert) would override the trigger's
    notes = "".join(f"""
    DELETE FROM host_changes WHERE mac = {row}.mac;
    INSERT INTO host_changes SELECT {row}.mac, CAST(value AS INTEGER) FROM meta
        WHERE key = 'hosts_generation';""" for row in rows)
    return f"""
CREATE TRIGGER IF NOT EXISTS hosts_changed_{op.lower()} AFTER {op} ON hosts BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'hosts_generation';{notes}
END;"""


CHANGES_SCHEMA += (_host_trigger("INSERT", ("NEW",)) + _host_trigger("UPDATE", ("OLD", "NEW"))
                   + _host_trigger("DELETE", ("OLD",)))
BUMP_LEASES = "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'leases_generation'"


class ChangeRows:
    """Change counters; needs the host class's ``_lock``, ``_db``, ``_commits``,
    ``_query`` and ``_host``."""

    def change_token(self) -> tuple[int, int]:
        """A value that differs after anything was committed to the database since."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("store is not open")
            return self._db.execute("PRAGMA data_version").fetchone()[0], self._commits

    def generations(self) -> dict[str, int]:
        """Every ``*_generation`` counter in ``meta`` (one query)."""
        return {key: int(value) for key, value in self._query(
            "SELECT key, value FROM meta WHERE key LIKE '%\\_generation' ESCAPE '\\'")}

    def host_changes(self, since: int) -> list[str]:
        """MACs of the hosts added, changed or deleted after ``hosts_generation`` ``since``."""
        return [r[0] for r in self._query("SELECT mac FROM host_changes WHERE generation>?",
                                          (since,))]

    def hosts_by_mac(self, macs: list[str]) -> list[Host]:
        out: list[Host] = []
        for i in range(0, len(macs), BIND_LIMIT):
            chunk = macs[i:i + BIND_LIMIT]
            out += [self._host(r) for r in self._query(
                f"SELECT {self.HOST_COLS} FROM hosts WHERE mac IN "
                f"({','.join('?' * len(chunk))})",
                tuple(chunk))]
        return out
