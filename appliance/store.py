"""The single state store: SQLite in WAL mode.

Contract:

* Every write method commits before it returns, with ``synchronous=FULL``,
  so what it wrote survives ``kill -9`` and power loss.
* :meth:`Store.commit_batch` is the group-commit path (used by
  :class:`appliance.groupcommit.GroupCommitter`): many lease writes and
  events in one transaction, one fsync, on a connection of its own so that
  readers on the shared connection are never blocked by the fsync.  The
  DHCP server acknowledges a lease only after the batch holding it returned
  from this method.
* One connection, guarded by a lock, shared by every thread of the process;
  other processes (the CLI while the server runs) open their own and WAL
  lets them read while the server writes.  ``busy_timeout`` absorbs short
  write contention between processes.
* Nothing else in the appliance keeps shadow state: the servers ask the
  store on every request -- except the DHCP hot path, whose in-memory
  indexes (:mod:`appliance.indexes`) follow the store through two counters
  in ``meta`` and a change token (:mod:`appliance.store_changes`).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .model import BootRule, Event, Host, Lease, UefiLoader
from .store_catalog import CatalogRows
from .store_changes import BUMP_LEASES, ChangeRows
from .store_errors import StoreError
from .store_import import ImportRows
from .store_observed import ObservedRows
from .store_schema import SCHEMA, SCHEMA_VERSION, migrate
from .store_subnets import SubnetRows
from .store_tenants import TenantRows

BUSY_TIMEOUT_MS = 10_000

HOST_COLS = ("mac, name, ip, profile, netboot, token, token_expires, variables, options, "
             "boot_rules, tenant, source, uefi_loader")


class Store(CatalogRows, SubnetRows, TenantRows, ImportRows, ChangeRows, ObservedRows):
    """Typed access to the state database.  ``open()`` does the I/O."""

    HOST_COLS = HOST_COLS  # for the mixins: every host read names its columns

    def __init__(self, path: Path | str):
        self.path = Path(path) if str(path) != ":memory:" else path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._wdb: sqlite3.Connection | None = None  # group-commit connection
        self._wlock = threading.Lock()
        self._commits = 0  # transactions committed by this Store (see change_token)

    # -- lifecycle -----------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False,
                             isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def open(self) -> Store:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.executescript(SCHEMA)
        migrate(db)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._db = db
        return self

    def close(self) -> None:
        with self._wlock:
            if self._wdb is not None:
                self._wdb.close()
                self._wdb = None
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _tx(self):
        """One IMMEDIATE transaction: committed (durably) on exit."""
        with self._lock:
            db = self._db
            if db is None:
                raise RuntimeError("store is not open")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._commits += 1

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._db is None:
                raise RuntimeError("store is not open")
            return self._db.execute(sql, args).fetchall()

    # -- hosts ---------------------------------------------------------------
    @staticmethod
    def _host(row) -> Host:
        (mac, name, ip, profile, netboot, token, _exp, variables, options, rules,
         tenant, source, uefi_loader) = row
        return Host(mac=mac, name=name, ip=ip, profile=profile, netboot=bool(netboot),
                    token=token, variables=json.loads(variables or "{}"),
                    options=json.loads(options or "{}"),
                    boot_rules=tuple(BootRule(**r) for r in json.loads(rules or "[]")),
                    tenant=tenant, source=source,
                    uefi_loader=UefiLoader(uefi_loader) if uefi_loader else None)

    @staticmethod
    def _host_row(h: Host, token_ttl: float) -> tuple:
        """The ``HOST_COLS`` values of ``h``; netboot on gets a fresh install token."""
        token, expires = (secrets.token_urlsafe(24), time.time() + token_ttl) \
            if h.netboot else (None, None)
        rules = [dataclasses.asdict(r) for r in h.boot_rules]
        return (h.mac, h.name, h.ip, h.profile, int(h.netboot), token, expires,
                json.dumps(h.variables), json.dumps(h.options), json.dumps(rules),
                h.tenant, h.source, h.uefi_loader.value if h.uefi_loader else None)

    _HOST_UPSERT = (f"INSERT INTO hosts ({HOST_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(mac) DO UPDATE SET " + ", ".join(
                        f"{c}=excluded.{c}" for c in HOST_COLS.split(", ")[1:]))

    def add_host(self, h: Host, token_ttl: float) -> Host:
        """Insert or replace a host; netboot on gets a fresh install token."""
        if h.profile is not None and self.profile(h.profile) is None:
            raise StoreError(f"host {h.mac}: no profile named {h.profile!r}")
        try:
            with self._tx() as db:
                # an upsert on the MAC: INSERT OR REPLACE would silently delete
                # another host that holds the same reserved IP
                db.execute(self._HOST_UPSERT, self._host_row(h, token_ttl))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"host {h.mac}: {exc}") from None
        return self.host(h.mac)

    def host(self, mac: str) -> Host | None:
        rows = self._query(f"SELECT {HOST_COLS} FROM hosts WHERE mac=?", (mac,))
        return self._host(rows[0]) if rows else None

    def hosts(self) -> list[Host]:
        return [self._host(r) for r in self._query(f"SELECT {HOST_COLS} FROM hosts ORDER BY mac")]

    def host_by_ip(self, ip: str) -> Host | None:
        rows = self._query(f"SELECT {HOST_COLS} FROM hosts WHERE ip=?", (ip,))
        return self._host(rows[0]) if rows else None

    def set_netboot(self, mac: str, on: bool, token_ttl: float) -> Host:
        """Turn netboot on (new install token) or off (token revoked)."""
        token, expires = (secrets.token_urlsafe(24), time.time() + token_ttl) \
            if on else (None, None)
        with self._tx() as db:
            cur = db.execute("UPDATE hosts SET netboot=?, token=?, token_expires=? WHERE mac=?",
                             (int(on), token, expires, mac))
            if cur.rowcount == 0:
                raise StoreError(f"no host {mac}")
        return self.host(mac)

    def set_uefi_loader(self, mac: str, loader: UefiLoader | None) -> Host:
        """Set the host's UEFI loader (``None``: follow its profile)."""
        with self._tx() as db:
            cur = db.execute("UPDATE hosts SET uefi_loader=? WHERE mac=?",
                             (loader.value if loader else None, mac))
            if cur.rowcount == 0:
                raise StoreError(f"no host {mac}")
        return self.host(mac)

    def host_by_token(self, token: str, now: float | None = None) -> Host | None:
        """The host whose *current* install this token belongs to, if unexpired."""
        now = time.time() if now is None else now
        rows = self._query(f"SELECT {HOST_COLS} FROM hosts WHERE token=? AND netboot=1 AND token_expires>?",
                           (token, now))
        return self._host(rows[0]) if rows else None

    def complete_install(self, token: str, now: float | None = None) -> Host | None:
        """Single-use: a valid token turns netboot off and is revoked."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT mac FROM hosts WHERE token=? AND netboot=1 "
                             "AND token_expires>?", (token, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE hosts SET netboot=0, token=NULL, token_expires=NULL WHERE mac=?",
                       (row[0],))
        return self.host(row[0])

    # -- leases -------------------------------------------------------------
    def lease_for_mac(self, mac: str) -> Lease | None:
        rows = self._query("SELECT mac, ip, expires, state, hostname FROM leases "
                           "WHERE mac=? ORDER BY expires DESC LIMIT 1", (mac,))
        return Lease(*rows[0]) if rows else None

    def lease_for_ip(self, ip: str) -> Lease | None:
        rows = self._query("SELECT mac, ip, expires, state, hostname FROM leases WHERE ip=?",
                           (ip,))
        return Lease(*rows[0]) if rows else None

    def leases(self) -> list[Lease]:
        return [Lease(*r) for r in self._query(
            "SELECT mac, ip, expires, state, hostname FROM leases ORDER BY ip")]

    def leases_in_states(self, states: tuple[str, ...], now: float) -> list[Lease]:
        """Unexpired leases in one of ``states``, earliest expiry first."""
        marks = ",".join("?" * len(states))
        return [Lease(*r) for r in self._query(
            "SELECT mac, ip, expires, state, hostname FROM leases WHERE expires>? AND state IN "
            f"({marks}) ORDER BY expires", (now, *states))]

    def mac_for_ip(self, ip: str | None, now: float | None = None) -> str | None:
        """The MAC behind a client address: a host reservation, else a bound
        lease, else a fresh observation (proxyDHCP mode: see store_observed).

        This is how TFTP and HTTP attribute a request to a machine; an offered,
        expired or released lease does not count.
        """
        if not ip:
            return None
        host = self.host_by_ip(ip)
        if host is not None:
            return host.mac
        lease = self.lease_for_ip(ip)
        now = time.time() if now is None else now
        if lease is not None and lease.state == "bound" and lease.expires > now:
            return lease.mac
        return self.observed_mac(ip, now)

    def busy_ips(self, now: float) -> dict[str, str]:
        """ip -> mac for every address that is taken now (by lease or reservation)."""
        out = {ip: mac for ip, mac in self._query(
            "SELECT ip, mac FROM leases WHERE expires>? AND state IN "
            "('offered','bound','declined','conflict')", (now,))}
        for ip, mac in self._query("SELECT ip, mac FROM hosts WHERE ip IS NOT NULL"):
            out[ip] = mac
        return out

    # The checked write as one statement (it runs per lease in every group
    # commit): insert, or replace the IP's row unless another MAC holds it
    # unexpired in a busy state; never over another host's reservation.
    _CHECKED_WRITE = (
        "INSERT INTO leases (ip, mac, expires, state, hostname) "
        "SELECT :ip, :mac, :expires, :state, :hostname "
        "WHERE NOT EXISTS (SELECT 1 FROM hosts WHERE ip = :ip AND mac <> :mac) "
        "ON CONFLICT(ip) DO UPDATE SET mac=excluded.mac, expires=excluded.expires, "
        "state=excluded.state, hostname=excluded.hostname "
        "WHERE leases.mac = excluded.mac OR leases.expires <= :at OR leases.state NOT IN "
        "('offered','bound','declined','conflict')")

    @classmethod
    def _write_lease(cls, db: sqlite3.Connection, lease: Lease,
                     check_free_at: float | None) -> bool:
        if check_free_at is None:
            db.execute("INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?)",
                       (lease.ip, lease.mac, lease.expires, lease.state, lease.hostname))
        elif db.execute(cls._CHECKED_WRITE, {
                "ip": lease.ip, "mac": lease.mac, "expires": lease.expires,
                "state": lease.state, "hostname": lease.hostname,
                "at": check_free_at}).rowcount != 1:
            return False
        if lease.mac:  # ownerless probation rows do not move a MAC's lease
            db.execute("DELETE FROM leases WHERE mac=? AND ip<>?", (lease.mac, lease.ip))
        return True

    def put_lease(self, lease: Lease, check_free_at: float | None = None) -> bool:
        """Write ``lease`` (one row per IP), durably.

        With ``check_free_at``, refuse (return False) when another MAC holds
        that IP unexpired at that time -- the check and the write are one
        transaction, so two servers or threads cannot both win an address.
        A MAC keeps one lease: its rows on other IPs are dropped.
        """
        with self._tx() as db:
            written = self._write_lease(db, lease, check_free_at)
            if written:
                db.execute(BUMP_LEASES)
            return written

    def reserved_ips(self) -> dict[str, str]:
        """ip -> mac of every host reservation."""
        return dict(self._query("SELECT ip, mac FROM hosts WHERE ip IS NOT NULL"))

    def commit_batch(self, leases: list[tuple[Lease, float | None]],
                     events: list[Event]) -> list[bool]:
        """Write many leases (each checked as in :meth:`put_lease`, in order)
        and events in ONE transaction: one fsync for the whole batch.

        Returns one flag per lease (False: refused by its check).  When this
        returns, every write of the batch is durable; when it raises, none is.
        Runs on a connection of its own (except for ``:memory:`` stores).
        """
        if self.path == ":memory:":
            lock, db = self._lock, self._db
        else:
            lock = self._wlock
        with lock:
            if self.path != ":memory:":
                if self._wdb is None:
                    self._wdb = self._connect()
                db = self._wdb
            db.execute("BEGIN IMMEDIATE")
            try:
                done = [self._write_lease(db, lease, check) for lease, check in leases]
                db.executemany("INSERT INTO events (ts, mac, kind, detail) VALUES (?,?,?,?)",
                               [(e.ts, e.mac, e.kind, e.detail) for e in events])
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if self.path == ":memory:":  # else on _wdb: the pragma of _db sees it
                self._commits += 1  # under self._lock, as every other increment
        return done

    # -- events -------------------------------------------------------------
    def add_event(self, ev: Event) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events (ts, mac, kind, detail) VALUES (?,?,?,?)",
                       (ev.ts, ev.mac, ev.kind, ev.detail))

    def events_of_kind(self, kind: str, limit: int = 1000) -> list[Event]:
        """The last ``limit`` events of one kind, oldest first."""
        rows = self._query("SELECT ts, mac, kind, detail FROM events WHERE kind=? "
                           "ORDER BY id DESC LIMIT ?", (kind, limit))
        return [Event(*r) for r in reversed(rows)]

    def events(self, mac: str | None = None, limit: int = 1000) -> list[Event]:
        if mac is None:
            rows = self._query("SELECT ts, mac, kind, detail FROM events "
                               "ORDER BY id DESC LIMIT ?", (limit,))
            return [Event(*r) for r in reversed(rows)]
        # a machine's timeline is in the order things happened: the group
        # committer writes DHCP events lazily, so an HTTP event recorded later
        # can be committed first (same timestamps: commit order)
        rows = self._query("SELECT ts, mac, kind, detail FROM events WHERE mac=? "
                           "ORDER BY ts DESC, id DESC LIMIT ?", (mac, limit))
        return [Event(*r) for r in reversed(rows)]
