"""The render worker: the child-process half of :mod:`appliance.sandbox`.

Runs in a process started by the ``forkserver`` (or ``spawn``) context of
:class:`appliance.sandbox.RenderSandbox`; nothing here runs in the appliance
process except the imports.  The worker

* lowers its own limits before it touches a template: ``RLIMIT_AS`` (memory),
  ``RLIMIT_CORE`` 0, and a per-render ``RLIMIT_CPU`` soft limit (a backstop that
  also ends a runaway render if the appliance itself is gone);
* builds ONE :class:`GuardedEnvironment` and serves requests over a pipe, one at
  a time, as JSON (never pickle: the parent must not unpickle bytes from a
  process that ran user code);
* caches compiled templates keyed by their sources, so a kernel command line
  rendered on every DHCP/HTTP request is compiled once per worker.

In-process guards (on top of Jinja2's sandbox, which blocks attribute access to
internals such as ``__class__``/``__globals__`` but not resource exhaustion):
``*`` repetition and ``%``/``|format`` padding are refused when the result
would exceed the output limit, ``**`` and ``*`` on integers when the result
would exceed :data:`MAX_INT_BITS`, ``range()`` is capped at ``max_range``
items, the output is streamed and cut at ``output_bytes``.  These make the
common payloads fail fast and cheaply; they are NOT the guarantee.  The
guarantee is the parent's wall-clock kill plus the rlimits.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import traceback
from collections import OrderedDict
from typing import Any

import jinja2
from jinja2.filters import do_format
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_INT_BITS = 1 << 16  # ~19,700 decimal digits; Python refuses str() beyond 4,300 anyway
CACHE_ENTRIES = 64  # distinct source sets (and, separately, command lines) kept compiled
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)")


class LimitExceeded(SecurityError):
    """A render asked for more than the limits allow; the message says which."""


def _check_repeat(left: Any, right: Any, limit: int) -> None:
    for seq, n in ((left, right), (right, left)):
        if (isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int)
                and len(seq) * n > limit):
            raise LimitExceeded(
                f"render exceeded output limit: repetition would produce "
                f"{len(seq) * n} items (limit {limit})")
    if (isinstance(left, int) and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS):
        raise LimitExceeded(f"render exceeded integer limit in '*' ({MAX_INT_BITS} bits)")


def _check_pow(left: Any, right: Any) -> None:
    if (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
            and right * left.bit_length() > MAX_INT_BITS):
        raise LimitExceeded(f"render exceeded integer limit in '**' ({MAX_INT_BITS} bits)")


def _check_printf(fmt: Any, args: Any, limit: int) -> None:
    """Refuse ``fmt % args`` whose field widths/precisions alone exceed ``limit``."""
    if not isinstance(fmt, str):
        return
    values = list(args) if isinstance(args, (tuple, list)) else [args]
    total = 0
    for match in _PRINTF.finditer(fmt):
        for spec in match.group(1, 2):
            if spec == "*":
                width = values.pop(0) if values else 0
                total += abs(width) if isinstance(width, int) else 0
            elif spec:
                total += int(spec)
        if match.group(3) != "%" and values:
            values.pop(0)
    if total > limit:
        raise LimitExceeded(f"render exceeded output limit: format width {total} (limit {limit})")


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with resource guards (see the module docstring).

    Immutable rather than plain ``SandboxedEnvironment``: the context is plain
    data that templates only read; forbidding ``list.append``/``dict.update``
    (``namespace()`` still works for accumulators) removes the cheapest way to
    grow memory geometrically (``l.extend(l)`` in a loop) at no cost to real
    kickstart templates.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, output_bytes: int, max_range: int) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False,
                         keep_trailing_newline=True, auto_reload=False, cache_size=400)
        self.output_bytes = output_bytes
        self.max_range = max_range
        self.globals["range"] = self._range
        self.filters["format"] = self._format

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > self.max_range:
            raise LimitExceeded(f"render exceeded range limit ({self.max_range} items)")
        return rng

    def _format(self, value: Any, *args: Any, **kwargs: Any) -> str:
        _check_printf(value, args or kwargs, self.output_bytes)
        return do_format(value, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right, self.output_bytes)
        elif operator == "**":
            _check_pow(left, right)
        elif operator == "%":
            _check_printf(left, right, self.output_bytes)
        return super().call_binop(context, operator, left, right)


class _SourcesLoader(jinja2.BaseLoader):
    """A DictLoader whose "filename" is the template name, so that rewritten
    traceback frames name the template (main or included) they belong to."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
        if template not in self.sources:
            raise jinja2.TemplateNotFound(template)
        return self.sources[template], template, lambda: True


def _error_reply(exc: BaseException, names: set[str]) -> dict:
    """Turn any exception from a render into the JSON error the parent turns
    into ``TemplateError``; ``safe`` says the message may be logged."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return {"error": exc.message or str(exc), "kind": "syntax", "safe": True,
                "lineno": exc.lineno, "template": exc.name or exc.filename or "<template>"}
    template, lineno = None, None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename in names or frame.filename == "<template>":
            template, lineno = frame.filename, frame.lineno
    if isinstance(exc, LimitExceeded):
        kind, message = "limit", str(exc)
    elif isinstance(exc, RecursionError):
        kind, message = "limit", "render exceeded recursion limit"
    elif isinstance(exc, jinja2.TemplateNotFound):
        kind, message = "notfound", f"no template named {exc.name!r}"
    elif isinstance(exc, jinja2.TemplateError):
        kind, message = type(exc).__name__, exc.message or str(exc)
    else:
        kind, message = type(exc).__name__, f"{type(exc).__name__}: {exc}"
    # Only our own limit messages are known not to quote context values (an
    # UndefinedError can name an attribute computed from a token, say).
    safe = kind == "limit"
    return {"error": message, "kind": kind, "safe": safe, "lineno": lineno,
            "template": template}


class Worker:
    """Serves ``[op, name, source(s), context]`` requests; see :func:`main`."""

    def __init__(self, output_bytes: int, max_range: int) -> None:
        self.env = GuardedEnvironment(output_bytes, max_range)
        self.output_bytes = output_bytes
        self.loaders: OrderedDict[tuple, _SourcesLoader] = OrderedDict()
        self.strings: OrderedDict[str, jinja2.Template] = OrderedDict()

    def _loader(self, sources: dict[str, str]) -> _SourcesLoader:
        key = tuple(sorted(sources.items()))
        loader = self.loaders.pop(key, None) or _SourcesLoader(sources)
        self.loaders[key] = loader  # most recently used last; keeps env.cache keys alive
        while len(self.loaders) > CACHE_ENTRIES:
            self.loaders.popitem(last=False)
        return loader

    def _from_string(self, source: str) -> jinja2.Template:
        template = self.strings.pop(source, None) or self.env.from_string(source)
        self.strings[source] = template
        while len(self.strings) > CACHE_ENTRIES:
            self.strings.popitem(last=False)
        return template

    def _stream(self, template: jinja2.Template, context: dict) -> str:
        out, size, limit = [], 0, self.output_bytes
        chunks = template.generate(context)
        try:
            for chunk in chunks:
                size += len(chunk) if chunk.isascii() else len(
                    chunk.encode("utf-8", "surrogatepass"))
                if size > limit:
                    raise LimitExceeded(f"render exceeded output limit ({limit} bytes)")
                out.append(chunk)
        finally:
            chunks.close()
        return "".join(out)

    def handle(self, op: str, name: str | None, sources: Any, context: dict | None) -> dict:
        names = set(sources) if isinstance(sources, dict) else set()
        try:
            if op == "string":
                return {"ok": self._stream(self._from_string(sources), context or {})}
            self.env.loader = self._loader(sources)
            template = self.env.get_template(name)
            if op == "check":
                return {"ok": ""}
            return {"ok": self._stream(template, context or {})}
        except MemoryError:
            return {"error": "render exceeded memory limit", "kind": "limit", "safe": True,
                    "lineno": None, "template": None, "recycle": True}
        except Exception as exc:  # noqa: BLE001 - every failure becomes TemplateError
            return _error_reply(exc, names)


def _arm_cpu_limit(cpu_seconds: int) -> None:
    """Per-render RLIMIT_CPU: the process's CPU so far plus ``cpu_seconds``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime) + cpu_seconds
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main(conn: Any, memory_mb: int, output_bytes: int, max_range: int,
         cpu_seconds: int) -> None:
    """Worker entry point: set limits, say ``ready``, then serve until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the appliance decides when we stop
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    worker = Worker(output_bytes, max_range)
    conn.send_bytes(b'{"ready": true}')
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        _arm_cpu_limit(cpu_seconds)
        reply = worker.handle(*request)
        conn.send_bytes(json.dumps(reply).encode())
        if reply.get("recycle"):
            return
