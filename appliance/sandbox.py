"""Render user templates (kickstarts, snippets, kernel command lines) so that a
runaway template cannot stall or kill the appliance.

Contract
--------
:class:`RenderSandbox` keeps ``limits.workers`` worker processes (started with
the ``forkserver`` context, ``spawn`` where that is missing -- never ``fork``:
the appliance is multithreaded).  Each call checks a worker out, sends it the
sources and a plain JSON-like context, and waits at most ``limits.seconds``.
Every failure -- syntax error, undefined name, sandbox violation, limit hit,
timeout, dead worker, context that is not plain data -- reaches the caller as
:class:`TemplateError`, never as anything else.

Threat model
------------
Template authors (operators, and tenants for their own machines) are untrusted.

Guaranteed, whatever the template does:

* the calling thread gets an answer within ``limits.seconds`` of its worker
  starting the render (waiting for a free worker is bounded by the same amount,
  replacing a dead worker by the startup time); on timeout the worker is
  SIGKILLed and replaced;
* a worker cannot grow past ``limits.memory_mb`` of address space
  (``RLIMIT_AS``) nor use much more CPU than the time limit (``RLIMIT_CPU``,
  which also ends a render orphaned by a dead appliance);
* a render returns at most ``limits.output_bytes`` (UTF-8) of text;
* the appliance never unpickles bytes from a worker (replies are JSON, read
  with a size cap), and never logs the context (it carries install tokens).

Operational note: like every ``spawn``/``forkserver`` user, the program's
``__main__`` must be safe to import (``if __name__ == "__main__":``); a worker
re-imports it before it starts.  ``python -m appliance`` (skipped by
multiprocessing) and the ``plowshare`` console script are.

Relied upon, not guaranteed here: Jinja2's ``ImmutableSandboxedEnvironment``
for "a template cannot reach Python internals" (``__class__``, ``__globals__``,
``_TemplateReference__context``...).  A sandbox escape would run code as the
appliance's user inside the worker: the worker has the appliance's privileges
and file-system view (no seccomp, namespaces or uid change).  Other
workers' renders keep going during a runaway render; with every worker busy,
callers wait (bounded) and then fail -- a determined tenant can therefore
delay other renders by up to ``limits.seconds`` per worker it occupies.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import signal
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Self

from . import sandbox_worker

log = logging.getLogger("plowshare.templates")

ANONYMOUS = "<template>"  # the name render_string templates carry in errors
STARTUP_SECONDS = 20.0  # a (re)started worker must say "ready" within this


@dataclass(frozen=True)
class Limits:
    """Per-render limits.  ``max_range`` caps ``range()`` (Jinja's own cap is 100000)."""

    seconds: float = 2.0
    memory_mb: int = 256
    output_bytes: int = 1 << 20
    workers: int = 2
    max_range: int = 10_000


class TemplateError(ValueError):
    """A template failed to parse, render, or stay within its limits.

    ``message`` is the bare reason; ``str(exc)`` prefixes ``"<template>:<line>: "``
    when the line is known (``"<template>: "`` when only the template is).
    """

    def __init__(self, message: str, lineno: int | None = None,
                 template: str | None = None) -> None:
        self.message, self.lineno, self.template = message, lineno, template
        if lineno is not None:
            message = f"{template or ANONYMOUS}:{lineno}: {message}"
        elif template:
            message = f"{template}: {message}"
        super().__init__(message)


class WorkerDied(TemplateError):
    """The worker was gone before it answered (not a timeout, not a bad reply)."""


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Workers fork from a server that already imported Jinja2: replacing a
        # killed worker costs milliseconds.  Only effective before the server
        # starts; harmless afterwards (workers then import it themselves).
        ctx.set_forkserver_preload(["appliance.sandbox_worker"])
        return ctx
    return multiprocessing.get_context("spawn")


def _death(exitcode: int | None) -> str:
    if exitcode == -signal.SIGXCPU:
        return "render exceeded CPU limit"
    if exitcode is not None and exitcode < 0:
        return f"render worker died (killed by signal {-exitcode})"
    return f"render worker died (exit code {exitcode})"


class _Worker:
    """One render process and the parent's end of its pipe.

    The thread that checked the worker out owns ``conn``; ``lock`` serialises
    the process operations that :meth:`RenderSandbox.stop` may race with.
    """

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.lock = threading.Lock()
        self.proc: Any = None
        self.conn: Any = None
        self.exitcode: int | None = None
        self.broken = True  # not started yet

    def spawn(self, ctx: Any, limits: Limits) -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=sandbox_worker.main, name="plowshare-render", daemon=True,
            args=(child, limits.memory_mb, limits.output_bytes, limits.max_range,
                  math.ceil(limits.seconds) + 1))
        with self.lock:
            proc.start()
            self.proc, self.conn, self.exitcode = proc, parent, None
        child.close()

    def wait_ready(self, timeout: float) -> None:
        try:
            ready = self.conn.poll(timeout) and self.conn.recv_bytes(64) == b'{"ready": true}'
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise TemplateError(f"render worker did not start ({_death(self.exitcode)})")
        self.broken = False

    def pid(self) -> int | None:
        with self.lock:
            return self.proc.pid if self.proc is not None and self.proc.is_alive() else None

    def usable(self) -> bool:
        return not self.broken and self.pid() is not None

    def kill(self) -> None:
        """SIGKILL (if still running), reap, release the process handle."""
        with self.lock:
            self.broken = True
            if self.proc is None:
                return
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
            self.exitcode = self.proc.exitcode
            if self.exitcode is not None:
                self.proc.close()
                self.proc = None

    def close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, payload: bytes, seconds: float, max_reply: int) -> dict:
        """Send one request, wait ``seconds`` for the reply, kill on any failure."""
        died = False
        try:
            self.conn.send_bytes(payload)
            answered = self.conn.poll(seconds)
            reply = json.loads(self.conn.recv_bytes(max_reply)) if answered else None
        except (EOFError, BrokenPipeError, ConnectionResetError):  # it died first
            reply = answered = None
            died = True
        except (OSError, ValueError):  # reply too big, garbage
            reply = answered = None
        if not isinstance(reply, dict):
            self.kill()
            if answered is False:
                raise TemplateError(f"render exceeded {float(seconds)} s")
            raise (WorkerDied if died else TemplateError)(_death(self.exitcode))
        if reply.get("recycle"):
            self.kill()
        return reply


class _Pool:
    """Idle workers, handed to waiting callers strictly first come, first served.

    (``queue.Queue`` is not fair: a thread that just returned a worker takes it
    straight back, and with 8 threads on 2 workers some callers starved for
    ~0.8 s -- long enough, under load, to hit the checkout limit.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[list] = deque()  # [event, worker-or-None]

    def put(self, worker: _Worker) -> None:
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter[1] = worker
                waiter[0].set()
            else:
                self._idle.append(worker)

    def get(self, timeout: float) -> _Worker | None:
        with self._lock:
            if self._idle:
                return self._idle.popleft()
            waiter = [threading.Event(), None]
            self._waiters.append(waiter)
        waiter[0].wait(timeout)
        with self._lock:
            if waiter[1] is None:
                self._waiters.remove(waiter)
            return waiter[1]

    def drain(self) -> list[_Worker]:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
            return idle


def _failed(label: str, exc: TemplateError, kind: str, safe: bool = True) -> TemplateError:
    """Log one line per failed render -- never the context -- and return ``exc``.

    Messages that may quote context values (an undefined attribute whose name a
    template computed from a token, say) are logged as their kind only.
    """
    where = f"{exc.template or label}:{exc.lineno}" if exc.lineno else label
    reason = exc.message if safe or kind == "syntax" else kind
    level = logging.WARNING if kind in ("limit", "SecurityError") else logging.INFO
    log.log(level, "template %s refused at %s: %s", label, where, reason)
    return exc


def _encode(label: str, request: list) -> bytes:
    try:
        return json.dumps(request).encode()
    except (TypeError, ValueError) as exc:
        raise _failed(label, TemplateError(
            f"context is not plain data ({type(exc).__name__})"), "limit") from None


def _result(label: str, reply: dict) -> str:
    """The rendered text of a worker reply, or its error as TemplateError."""
    if isinstance(reply.get("ok"), str):
        return reply["ok"]
    lineno, template = reply.get("lineno"), reply.get("template")
    exc = TemplateError(str(reply.get("error", "render failed")),
                        lineno if isinstance(lineno, int) else None,
                        template if isinstance(template, str) else None)
    raise _failed(label, exc, str(reply.get("kind")), reply.get("safe") is True)


class _Api:
    """The rendering API shared by RenderSandbox and
    :class:`~appliance.sandbox_inline.InlineSandbox` (``_call`` differs)."""

    def render(self, name: str, sources: dict[str, str], context: dict) -> str:
        """Render ``sources[name]``; includes/imports/extends resolve in ``sources``."""
        return self._call(name, ["render", name, sources, context])

    def render_string(self, source: str, context: dict) -> str:
        """Render an anonymous template (a kernel command line); compiled once per worker."""
        return self._call(ANONYMOUS, ["string", None, source, context])

    def check(self, name: str, sources: dict[str, str]) -> None:
        """Parse and compile ``sources[name]``; raise TemplateError (with lineno) if invalid."""
        self._call(name, ["check", name, sources, None])

    def __enter__(self) -> Self:
        return self.start()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()  # type: ignore[attr-defined]


class RenderSandbox(_Api):
    """A pool of render workers; thread-safe.  See the module docstring."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._idle = _Pool()
        self._workers: list[_Worker] = []
        self._generation = 0
        self._running = False
        self._ctx: Any = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Start ``limits.workers`` workers and wait until each is ready."""
        with self._lock:
            if self._running:
                return self
            self._ctx = self._ctx or _context()
            self._generation += 1
            workers = [_Worker(self._generation) for _ in range(max(1, self.limits.workers))]
            try:
                for worker in workers:
                    worker.spawn(self._ctx, self.limits)
                for worker in workers:
                    worker.wait_ready(STARTUP_SECONDS)
            except BaseException:
                for worker in workers:
                    worker.kill()
                    worker.close_conn()
                raise
            self._idle, self._workers, self._running = _Pool(), workers, True
            for worker in workers:
                self._idle.put(worker)
        return self

    def stop(self) -> None:
        """Kill every worker (busy ones too: their callers get TemplateError)."""
        with self._lock:
            self._running = False
            workers, self._workers = self._workers, []
            idle = self._idle.drain()
        for worker in workers:
            worker.kill()
        for worker in idle:
            worker.close_conn()

    def worker_pids(self) -> list[int]:
        """Pids of the live workers (for status pages and tests)."""
        pids = (worker.pid() for worker in list(self._workers))
        return [pid for pid in pids if pid is not None]

    def _call(self, label: str, request: list) -> str:
        """One render on a checked-out worker.  A worker found dead (killed from
        outside -- an operator, the OOM killer -- while idle or mid-render)
        costs one retry on another worker: renders are pure, and the caller
        should not see a death that was not its template's doing."""
        payload = _encode(label, request)
        for attempt in (1, 2):
            worker = self._checkout(label)
            try:
                reply = worker.request(payload, self.limits.seconds,
                                       6 * self.limits.output_bytes + 65536)
            except WorkerDied as exc:
                if attempt == 1:
                    log.warning("template %s: %s; retrying once on another worker",
                                label, exc.message)
                    continue
                raise _failed(label, exc, "limit") from None
            except TemplateError as exc:
                raise _failed(label, exc, "limit") from None
            finally:
                self._checkin(worker)
            return _result(label, reply)
        raise AssertionError("unreachable")  # pragma: no cover

    def _checkout(self, label: str) -> _Worker:
        if not self._running:
            raise _failed(label, TemplateError("render sandbox is not running"), "limit")
        worker = self._idle.get(self.limits.seconds)
        if worker is None:
            raise _failed(label, TemplateError(
                f"no render worker free within {float(self.limits.seconds)} s"), "limit")
        if not worker.usable():
            try:
                self._respawn(worker)
            except TemplateError as exc:
                self._checkin(worker, respawn=False)
                raise _failed(label, exc, "limit") from None
        return worker

    def _respawn(self, worker: _Worker) -> None:
        with self._lock:
            if not self._running or worker.generation != self._generation:
                raise TemplateError("render sandbox is not running")
            worker.kill()
            worker.close_conn()
            try:
                worker.spawn(self._ctx, self.limits)
            except Exception as exc:  # noqa: BLE001 - fork/forkserver failure
                log.error("cannot start a render worker: %s", exc)
                raise TemplateError("render worker unavailable") from None
            worker.wait_ready(STARTUP_SECONDS)

    def _checkin(self, worker: _Worker, respawn: bool = True) -> None:
        if worker.broken and respawn:
            try:
                self._respawn(worker)
            except Exception as exc:  # noqa: BLE001 - the next checkout retries; slot kept
                log.error("cannot replace a render worker: %s", exc)
        with self._lock:
            if self._running and worker.generation == self._generation:
                self._idle.put(worker)
                return
        worker.kill()
        worker.close_conn()
