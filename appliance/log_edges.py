"""Log a condition when it starts and when it ends, not every time it is seen.

A storm repeats the same condition thousands of times a second (every
DISCOVER of a full pool is refused); one line per occurrence buries
everything else.  :class:`Edges` is the pure bookkeeping: the caller says,
per key (a subnet, a relay...), whether the condition holds now, and gets
back an :class:`Edge` only when that changed, carrying how often the
condition was seen while it held.  The caller writes the one log line.

Contract: the first ``note(key, True)`` of a key returns an edge (count 1);
later ones return ``None`` and are counted; the next ``note(key, False)``
returns an edge with the count of the whole episode; ``note(key, False)``
for a key whose condition does not hold returns ``None`` (so the happy path
costs one dict lookup and logs nothing).  Not locked: two threads noting one
key at the same moment can at worst log one change twice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edge:
    """``key`` started (``holds``) or stopped holding; ``count``: times seen meanwhile."""

    key: object
    holds: bool
    count: int


class Edges:
    def __init__(self):
        self._counts: dict = {}  # key -> times seen since the condition started

    def note(self, key, holds: bool) -> Edge | None:
        """The change to log, or ``None`` when there is nothing new to say."""
        if holds:
            seen = self._counts.get(key)
            self._counts[key] = 1 if seen is None else seen + 1
            return Edge(key, True, 1) if seen is None else None
        seen = self._counts.pop(key, None)
        return None if seen is None else Edge(key, False, seen)

    def holding(self) -> dict:
        """Keys whose condition holds now, with the times seen so far."""
        return dict(self._counts)
