"""The in-process stand-in for :class:`appliance.sandbox.RenderSandbox`.

A fake shipped with the code for unit tests of the sandbox's callers: the same
API, the same in-worker guards and error mapping, but no worker process.
"""

from __future__ import annotations

import json
import threading
from typing import Self

from . import sandbox_worker
from .sandbox import Limits, _Api, _encode, _result


class InlineSandbox(_Api):
    """The same API and in-process guards (Jinja2 sandbox, range/repeat/format/
    output caps, error mapping, JSON-only context) in the calling thread --
    WITHOUT time or memory limits and without process isolation.  For unit
    tests of callers; never for user templates in a running appliance.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._worker: sandbox_worker.Worker | None = None

    def start(self) -> Self:
        return self

    def stop(self) -> None:
        self._worker = None

    def worker_pids(self) -> list[int]:
        return []

    def _call(self, label: str, request: list) -> str:
        request = json.loads(_encode(label, request))
        with self._lock:  # one Environment, whose loader is swapped per call
            if self._worker is None:
                self._worker = sandbox_worker.Worker(self.limits.output_bytes,
                                                     self.limits.max_range)
            reply = self._worker.handle(*request)
        return _result(label, reply)
