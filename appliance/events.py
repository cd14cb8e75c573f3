"""The per-MAC boot timeline.

Protocol adapters call :meth:`EventLog.record` once per decision they make
(DHCP offer/ack, TFTP file, HTTP script/kernel/initrd/kickstart, completion,
power action).  Each record is one row in the store and one log line on the
subsystem's logger, MAC first.  Recording must never break a boot: a store
failure is logged and swallowed.

``EventLog.via(writer)`` is the same log writing through a
:class:`~appliance.groupcommit.GroupCommitter`: the row rides the next
group commit instead of costing a transaction (and an fsync) of its own.
"""

from __future__ import annotations

import logging
import time

from .model import Event
from .store import Store

log = logging.getLogger("plowshare.events")


class EventLog:
    def __init__(self, store: Store, clock=time.time, writer=None):
        self.store = store
        self.clock = clock
        self.writer = writer

    def via(self, writer) -> EventLog:
        """This log, with rows queued on ``writer`` (a GroupCommitter)."""
        return EventLog(self.store, self.clock, writer)

    def record(self, mac: str, kind: str, detail: str = "",
               logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        (logger or log).log(level, "%s %s %s", mac, kind, detail)
        try:
            ev = Event(self.clock(), mac, kind, detail)
            if self.writer is not None:
                self.writer.add_event(ev)
            else:
                self.store.add_event(ev)
        except Exception:
            log.exception("%s could not record event %s", mac, kind)

    def timeline(self, mac: str, limit: int = 1000) -> list[Event]:
        return self.store.events(mac, limit)
