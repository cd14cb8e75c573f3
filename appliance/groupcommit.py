"""Group commit: one writer thread, many lease writes and events per fsync.

Contract (the DHCP server's durability rests on it):

* :meth:`GroupCommitter.put_lease` decides *and* enqueues atomically (under
  one lock) and returns a :class:`Ticket`.  The writer thread takes
  everything queued, calls :meth:`Store.commit_batch` (one transaction, one
  fsync), and only after that call returned marks the batch's tickets done
  and runs their callbacks.  **A callback registered with
  :meth:`Ticket.then` never runs before the commit of its lease's batch
  returned** -- the DHCP server sends an ACK only from such a callback.
* The next batch starts as soon as the previous commit finished: no timer,
  no sleep.  Under load, whatever arrived during one fsync rides the next.
* Until their batch is committed, queued leases are visible to the
  allocator through :meth:`lease_for_ip`, :meth:`lease_for_mac` and
  :meth:`busy_ips`, which lay the pending writes over the committed leases
  (same rules as :meth:`Store.put_lease`: one row per IP, one lease per MAC).
  The pending writes are not shadow state: they are the writes in flight
  and empty themselves as they commit.
* The committed leases are read from memory, not SQLite: a
  :class:`~appliance.indexes.LeaseIndex` loaded by :meth:`start` and then
  changed by the writer thread only, with exactly the writes each commit
  reported done, in the same locked step that drops them from the pending
  view (a reader never sees a write in neither or both).  While a committer
  runs it must be the only writer of leases; a write that bypasses it
  bumps ``leases_generation``, and :meth:`sync` (the DHCP loop calls it once
  per batch) has the writer reload the index, as it does after a commit
  that refused a write.
* Host reservations are checked against :attr:`GroupCommitter.hosts`: the
  store, or the DHCP server's :class:`~appliance.indexes.HostIndex`.
* Events ride the same batches; nothing waits for them.  Queuing one takes
  no lock and wakes nobody (two per DHCP packet).  Nor does a lease write
  queued with ``wake=False`` (an OFFER's hold: nothing waits for it either,
  and the REQUEST that follows within milliseconds brings it along in its
  commit -- one fsync per exchange instead of two).  A batch takes whatever
  is queued; when only such writes are queued, they are committed within
  ``lazy_delay`` (:data:`LAZY_DELAY`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from .indexes import BUSY_STATES, LeaseIndex
from .model import Event, Lease
from .store import Store
from .store_changes import LEASES_GENERATION

log = logging.getLogger("plowshare.store")

MAX_BATCH = 512  # writes per transaction; more simply wait for the next one
LAZY_DELAY = 0.2  # seconds events and wake=False writes wait at most for a commit
__all__ = ["BUSY_STATES", "GroupCommitter", "Ticket"]


class Ticket:
    """The durability promise of one queued lease write.

    One per lease write, so it is cheap: a lock and a flag; the
    :class:`threading.Event` that :meth:`wait` blocks on is made only for a
    caller that waits (the DHCP loop never does: it uses :meth:`then`).
    """

    __slots__ = ("_callbacks", "_done", "_event", "_lock", "ok")

    def __init__(self, done: bool = False, ok: bool = True):
        self._lock = threading.Lock()
        self._done = done
        self._event: threading.Event | None = None
        self._callbacks: list = []
        self.ok = ok

    @property
    def done(self) -> bool:
        return self._done

    def then(self, callback) -> None:
        """Run ``callback(ok)`` once the write is committed (now, if it is)."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self.ok)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until committed; True when the write was committed and accepted."""
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._done:
                    self._event.set()
            event = self._event
        if not event.wait(timeout):
            raise TimeoutError("lease write not committed in time")
        return self.ok

    def _resolve(self, ok: bool) -> None:
        with self._lock:
            self.ok = ok
            self._done = True
            if self._event is not None:
                self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb(ok)
            except Exception:
                log.exception("callback after a group commit failed")


@dataclass
class _Write:
    seq: int
    lease: Lease
    check: float | None
    ticket: Ticket
    ip_keys: list[str] = field(default_factory=list)
    mac_key: str | None = None


def _busy(lease: Lease | None, now: float) -> bool:
    return lease is not None and lease.state in BUSY_STATES and lease.expires > now


class GroupCommitter:
    def __init__(self, store: Store, max_batch: int = MAX_BATCH,
                 lazy_delay: float = LAZY_DELAY):
        self.store = store
        self.max_batch = max_batch
        self.lazy_delay = lazy_delay
        self._cond = threading.Condition()
        self._writes: list[_Write] = []
        self._waking = 0  # queued writes somebody waits for
        self._events: deque[Event] = deque()  # appended without the lock
        self._by_ip: dict[str, tuple[int, Lease | None]] = {}
        self._by_mac: dict[str, tuple[int, str]] = {}
        self._seq = 0
        self._inflight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.hosts = store  # host_by_ip() and reserved_ips(): the store or a HostIndex
        self.committed = LeaseIndex()
        self._generation: int | None = None  # leases_generation the index reflects
        self._reload = False
        self.reloads = 0  # full reads of the leases table so far

    def _load(self) -> None:
        """Read the committed leases into the index (writer thread, or before it runs)."""
        generation = self.store.generations().get(LEASES_GENERATION, 0)
        rows = self.store.leases()  # after the counter: a later write moves it again
        with self._cond:
            self.committed.load(rows)
            self._generation = generation
            self._reload = False
            self.reloads += 1

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> GroupCommitter:
        """Load the committed leases, then start the writer thread."""
        self._load()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        """Commit everything queued, then end the writer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush(self, timeout: float = 10) -> None:
        """Wait until everything queued so far is committed."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writes and not self._events
                                       and not self._inflight, timeout):
                raise TimeoutError("group commit did not drain")

    def sync(self, generation: int | None) -> None:
        """Have the writer reload the index if ``leases_generation`` moved since."""
        with self._cond:
            if generation is not None and generation != self._generation \
                    and not self._reload:
                self._reload = True
                self._cond.notify_all()

    def backlog(self) -> int:
        """Lease writes queued and not yet taken by a commit (read without the lock)."""
        return len(self._writes)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Block until at most ``limit`` writes are queued, or ``timeout``; True: room.

        The producer's backpressure: while it waits it holds neither the lock nor
        the GIL, so the writer thread commits (and sends ACKs) at full speed.
        """
        with self._cond:
            return self._cond.wait_for(lambda: len(self._writes) <= limit or self._stopping,
                                       timeout)

    # -- producers -------------------------------------------------------------
    def put_lease(self, lease: Lease, check_free_at: float | None = None,
                  wake: bool = True) -> Ticket | None:
        """Queue ``lease``; ``None`` when the check fails against the pending view.

        ``wake=False``: nobody waits for this write; it rides the next commit
        (see module doc), visible in the pending view meanwhile.
        """
        with self._cond:
            if check_free_at is not None:
                cur = self._lease_for_ip(lease.ip)
                if _busy(cur, check_free_at) and cur.mac != lease.mac:
                    return None
                host = self.hosts.host_by_ip(lease.ip)
                if host is not None and host.mac != lease.mac:
                    return None
            self._seq += 1
            w = _Write(self._seq, lease, check_free_at, Ticket(), [lease.ip])
            if lease.mac:  # ownerless probation rows do not move a MAC's lease
                old = self._lease_for_mac(lease.mac)
                if old is not None and old.ip != lease.ip:
                    self._by_ip[old.ip] = (w.seq, None)
                    w.ip_keys.append(old.ip)
                self._by_mac[lease.mac] = (w.seq, lease.ip)
                w.mac_key = lease.mac
            self._by_ip[lease.ip] = (w.seq, lease)
            self._writes.append(w)
            if wake:
                self._waking += 1
                self._cond.notify_all()
            return w.ticket

    def add_event(self, ev: Event) -> None:
        self._events.append(ev)  # deque.append is atomic; the writer comes by

    # -- the view: committed store + pending writes ---------------------------
    def _lease_for_ip(self, ip: str) -> Lease | None:
        if ip in self._by_ip:
            return self._by_ip[ip][1]
        row = self.committed.for_ip(ip)
        if row is not None and row.mac in self._by_mac and self._by_mac[row.mac][1] != ip:
            return None  # a pending write moved that MAC elsewhere
        return row

    def _lease_for_mac(self, mac: str) -> Lease | None:
        if mac in self._by_mac:
            lease = self._lease_for_ip(self._by_mac[mac][1])
            return lease if lease is not None and lease.mac == mac else None
        row = self.committed.for_mac(mac)
        if row is not None and row.ip in self._by_ip:
            lease = self._by_ip[row.ip][1]
            return lease if lease is not None and lease.mac == mac else None
        return row

    def lease_for_ip(self, ip: str) -> Lease | None:
        with self._cond:
            return self._lease_for_ip(ip)

    def lease_for_mac(self, mac: str) -> Lease | None:
        with self._cond:
            return self._lease_for_mac(mac)

    def busy_ips(self, now: float) -> dict[str, str]:
        """As :meth:`Store.busy_ips`, with the pending writes applied."""
        with self._cond:
            out = self.committed.busy(now)
            for ip, (_seq, lease) in self._by_ip.items():
                if _busy(lease, now):
                    out[ip] = lease.mac
                else:
                    out.pop(ip, None)
            out.update(self.hosts.reserved_ips())
            return out

    # -- the writer --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._waking or self._stopping
                                           or self._reload, self.lazy_delay) \
                        and not self._events and not self._writes:
                    continue  # idle
                reload = self._reload
                if not reload and not self._writes and not self._events:
                    return  # stopping and drained
            if reload:
                self._reload_index()
                continue
            with self._cond:
                writes, self._writes = self._writes[:self.max_batch], \
                    self._writes[self.max_batch:]
                self._waking = len(self._writes)  # what is left waits no longer
                events = [self._events.popleft() for _ in range(len(self._events))]
                self._inflight = len(writes) + len(events)
            self._commit(writes, events)

    def _commit(self, writes: list[_Write], events: list[Event]) -> None:
        try:
            results = self.store.commit_batch([(w.lease, w.check) for w in writes], events)
        except Exception:
            log.exception("group commit of %d leases and %d events failed",
                          len(writes), len(events))
            results = [False] * len(writes)
        self.commits += 1
        with self._cond:
            for w, ok in zip(writes, results, strict=True):
                if ok:
                    self.committed.apply(w.lease)
                else:
                    self._reload = True  # the store knew something the index did not
            for w in writes:
                for ip in w.ip_keys:
                    if self._by_ip.get(ip, (None,))[0] == w.seq:
                        del self._by_ip[ip]
                if w.mac_key is not None and self._by_mac.get(w.mac_key, (None,))[0] == w.seq:
                    del self._by_mac[w.mac_key]
            self._inflight = 0
            self._cond.notify_all()
        for w, ok in zip(writes, results, strict=True):
            if not ok:
                log.warning("%s lease %s refused at commit (taken meanwhile)",
                            w.lease.mac, w.lease.ip)
            w.ticket._resolve(ok)

    def _reload_index(self) -> None:
        try:
            self._load()
        except Exception:
            log.exception("leases not re-read; the index stays as it was")
            with self._cond:
                self._reload = False
        else:
            log.info("lease index reloaded (%d rows)", len(self.committed))
