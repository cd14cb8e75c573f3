"""RenderSandbox: rendering, includes, error line numbers, limits, concurrency,
worker replacement and shutdown.  Timing goals live in bench/, not here."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.sandbox import Limits, RenderSandbox, TemplateError
from appliance.sandbox_inline import InlineSandbox


@pytest.fixture(scope="module")
def sandbox():
    with RenderSandbox(Limits(seconds=2.0, workers=2)) as sb:
        yield sb


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between open and read
        return True


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.01)


def _children(ppid: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                pids.add(int(entry))
    return pids


def test_template_error_shape():
    assert str(TemplateError("boom")) == "boom"
    exc = TemplateError("boom", 3, "a.j2")
    assert (str(exc), exc.lineno, exc.template, exc.message) == ("a.j2:3: boom", 3, "a.j2", "boom")
    assert str(TemplateError("boom", 2)) == "<template>:2: boom"
    assert isinstance(exc, ValueError)


def test_constructor_does_no_io():
    sb = RenderSandbox()
    assert sb.worker_pids() == []
    with pytest.raises(TemplateError, match="not running"):
        sb.render_string("x", {})


def test_render_with_context(sandbox):
    sources = {"ks.j2": "host {{ host.name }} {{ host.mac }}\n{% for s in ntp %}ntp {{ s }}\n{% endfor %}"}
    ctx = {"host": {"name": "n1", "mac": "52:54:00:00:00:01"}, "ntp": ["a", "b"]}
    assert sandbox.render("ks.j2", sources, ctx) == (
        "host n1 52:54:00:00:00:01\nntp a\nntp b\n")


def test_include_import_extends_resolve_in_sources(sandbox):
    sources = {
        "base.j2": "BEGIN\n{% block body %}{% endblock %}\nEND\n",
        "main.j2": ('{% extends "base.j2" %}{% import "macros.j2" as m %}'
                    '{% block body %}{% include "snippets/net.j2" %}{{ m.twice(x) }}{% endblock %}'),
        "snippets/net.j2": "net {{ host.ip }}\n",
        "macros.j2": "{% macro twice(v) %}{{ v }}{{ v }}{% endmacro %}",
    }
    out = sandbox.render("main.j2", sources, {"host": {"ip": "10.0.0.5"}, "x": "ab"})
    assert out == "BEGIN\nnet 10.0.0.5\nabab\nEND\n"


def test_same_name_different_sources_is_not_served_from_cache(sandbox):
    assert sandbox.render("t", {"t": "one"}, {}) == "one"
    assert sandbox.render("t", {"t": "two"}, {}) == "two"
    assert sandbox.render_string("{{ a }}", {"a": 1}) == "1"
    assert sandbox.render_string("{{ a }}", {"a": 2}) == "2"


def test_undefined_reports_template_and_line(sandbox):
    sources = {"ks.j2": "line1\nline2 {{ host.name }}\nline3 {{ nope }}\n"}
    with pytest.raises(TemplateError) as info:
        sandbox.render("ks.j2", sources, {"host": {"name": "n"}})
    assert (info.value.lineno, info.value.template) == (3, "ks.j2")
    assert str(info.value) == "ks.j2:3: 'nope' is undefined"


def test_undefined_attribute_in_included_template_names_it(sandbox):
    sources = {"main.j2": "a\n{% include 'inc.j2' %}\n", "inc.j2": "x\ny\n{{ host.missing }}\n"}
    with pytest.raises(TemplateError) as info:
        sandbox.render("main.j2", sources, {"host": {}})
    assert (info.value.template, info.value.lineno) == ("inc.j2", 3)
    assert "missing" in info.value.message


def test_render_string_runtime_error_line(sandbox):
    with pytest.raises(TemplateError) as info:
        sandbox.render_string("a\n{{ 1 + 'x' }}", {})
    assert (info.value.lineno, info.value.template) == (2, "<template>")
    assert str(info.value).startswith("<template>:2: TypeError")


def test_syntax_error_line_from_check_and_render(sandbox):
    sources = {"bad.j2": "ok\n{% if x %}\nfine\n{% endfor %}\n"}
    for call in (lambda: sandbox.check("bad.j2", sources),
                 lambda: sandbox.render("bad.j2", sources, {"x": 1})):
        with pytest.raises(TemplateError) as info:
            call()
        assert (info.value.lineno, info.value.template) == (4, "bad.j2")
    with pytest.raises(TemplateError) as info:
        sandbox.render_string("a\nb {{ x", {})
    assert info.value.lineno == 2
    assert sandbox.check("ok.j2", {"ok.j2": "{{ undefined_is_fine_at_check }}"}) is None


def test_missing_template_and_unknown_filter(sandbox):
    with pytest.raises(TemplateError, match="no template named 'gone.j2'"):
        sandbox.render("main.j2", {"main.j2": "{% include 'gone.j2' %}"}, {})
    with pytest.raises(TemplateError, match="no template named 'x'"):
        sandbox.render("x", {}, {})
    with pytest.raises(TemplateError) as info:
        sandbox.check("f.j2", {"f.j2": "\n{{ x | nosuchfilter }}"})
    assert info.value.lineno == 2


def test_context_must_be_plain_data(sandbox):
    with pytest.raises(TemplateError, match="not plain data"):
        sandbox.render_string("{{ x }}", {"x": object()})


def test_output_limit():
    with RenderSandbox(Limits(output_bytes=1000, workers=1)) as sb:
        assert len(sb.render_string("{{ 'x' * 1000 }}", {})) == 1000
        with pytest.raises(TemplateError, match="output limit"):
            sb.render_string("{% for i in range(20) %}{{ 'x' * 100 }}{% endfor %}", {})
        with pytest.raises(TemplateError, match="output limit"):
            sb.render_string("{{ x }}{{ x }}", {"x": "é" * 600})  # 2400 UTF-8 bytes
        assert sb.render_string("ok", {}) == "ok"


def test_range_limit_is_configurable():
    with RenderSandbox(Limits(max_range=10, workers=1)) as sb:
        assert sb.render_string("{{ range(10) | sum }}", {}) == "45"
        with pytest.raises(TemplateError, match="range limit"):
            sb.render_string("{{ range(11) | sum }}", {})


def test_200_sequential_render_string(sandbox):
    source = "console=ttyS0 ks={{ ks_url }} hostname={{ host.name }}"
    for i in range(200):
        ctx = {"ks_url": f"http://10.0.0.1/ks/{i}", "host": {"name": f"n{i}"}}
        assert sandbox.render_string(source, ctx) == (
            f"console=ttyS0 ks=http://10.0.0.1/ks/{i} hostname=n{i}")


def test_concurrent_renders_from_8_threads(sandbox):
    sources = {"main.j2": "{% include 'inc.j2' %}-{{ n * 2 }}", "inc.j2": "{{ who }}"}

    def work(thread: int) -> None:
        for i in range(25):
            n = thread * 100 + i
            assert sandbox.render("main.j2", sources, {"who": f"t{thread}", "n": n}) == (
                f"t{thread}-{n * 2}")
            assert sandbox.render_string("{{ n }}", {"n": n}) == str(n)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work, t) for t in range(8)]:
            future.result()


def test_externally_killed_worker_is_replaced(sandbox):
    victim = sandbox.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    _wait_gone(victim)
    for i in range(4):  # goes through every worker slot, the dead one included
        assert sandbox.render_string("{{ i }}", {"i": i}) == str(i)
    pids = sandbox.worker_pids()
    assert victim not in pids and len(pids) == 2


def test_worker_killed_mid_render_fails_that_render_only(sandbox):
    outcome = {}

    def runaway() -> None:
        try:
            sandbox.render_string(
                "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}", {})
        except TemplateError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=runaway)
    thread.start()
    time.sleep(0.3)
    for pid in sandbox.worker_pids():
        os.kill(pid, signal.SIGKILL)
    thread.join(10)
    # killed mid-render: retried once on a fresh worker, where it runs into
    # the time limit (or dies again if the kill loop caught the new one)
    assert "exceeded" in outcome["error"] or "worker died" in outcome["error"]
    assert sandbox.render_string("{{ 6 * 7 }}", {}) == "42"


def test_idle_worker_killed_from_outside_is_invisible_to_callers(sandbox):
    assert sandbox.render_string("{{ 1 }}", {}) == "1"
    for pid in sandbox.worker_pids():
        os.kill(pid, signal.SIGKILL)  # an operator or the OOM killer
    # at once, before the pool can notice: the render is retried on a new worker
    assert sandbox.render_string("{{ 6 * 7 }}", {}) == "42"
    assert sandbox.render_string("{{ 6 * 8 }}", {}) == "48"


def test_memory_limit_recycles_the_worker():
    with RenderSandbox(Limits(memory_mb=256, workers=1)) as sb:
        before = sb.worker_pids()
        with pytest.raises(TemplateError, match="memory limit"):
            sb.render_string("{{ 'a' | center(10**9) }}", {})
        assert sb.render_string("ok", {}) == "ok"
        assert sb.worker_pids() != before


def test_stop_leaves_no_child_processes():
    before = _children(os.getpid())
    sb = RenderSandbox(Limits(workers=3)).start()
    workers = sb.worker_pids()
    assert len(workers) == 3
    assert sb.render_string("{{ 1 }}", {}) == "1"
    sb.stop()
    for pid in workers:
        assert _gone(pid), pid
    assert sb.worker_pids() == []
    # The only new child allowed is multiprocessing's shared fork server, and
    # it must have no render workers left under it.
    for pid in _children(os.getpid()) - before:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"forkserver" in f.read()
        assert _children(pid) == set()
    with pytest.raises(TemplateError, match="not running"):
        sb.render_string("x", {})
    sb.start()  # restartable
    assert sb.render_string("{{ 2 }}", {}) == "2"
    sb.stop()


def test_inline_sandbox_has_the_same_api_and_guards():
    with InlineSandbox(Limits(output_bytes=100, max_range=10)) as sb:
        assert sb.render("m", {"m": "{% include 'i' %}!", "i": "{{ x }}"}, {"x": 1}) == "1!"
        assert sb.render_string("{{ a }}", {"a": "b"}) == "b"
        assert sb.check("m", {"m": "{{ x }}"}) is None
        with pytest.raises(TemplateError) as info:
            sb.render("m", {"m": "\n\n{{ nope }}"}, {})
        assert (info.value.template, info.value.lineno) == ("m", 3)
        for payload, match in [("{{ 'a' * 101 }}", "output limit"),
                               ("{{ range(11) | sum }}", "range limit"),
                               ("{{ ''.__class__ }}", "unsafe")]:
            with pytest.raises(TemplateError, match=match):
                sb.render_string(payload, {})
        with pytest.raises(TemplateError, match="not plain data"):
            sb.render_string("{{ x }}", {"x": object()})
        assert sb.worker_pids() == []
