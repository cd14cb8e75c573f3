"""Server-side template injection against RenderSandbox: every payload must fail
with TemplateError within the time limit, and the appliance must keep
answering other renders -- afterwards, and while the payload is running.

Payload sources:

* Jinja2 sandbox documentation, "Sandbox" chapter
  (https://jinja.palletsprojects.com/en/3.1.x/sandbox/): what the sandbox
  blocks (attributes starting with ``_``, internal attributes of functions,
  methods, frames, generators; ``range`` above ``MAX_RANGE``) and what it
  explicitly does not (CPU and memory use, output size).
* The well-known Jinja2 SSTI payload classes (PayloadsAllTheThings "Server Side
  Template Injection / Jinja2", PortSwigger's SSTI research): MRO walks to
  ``object.__subclasses__()``, ``__globals__`` through template globals
  (``cycler``, ``joiner``, ``lipsum``), ``self._TemplateReference__context``.
* Resource-exhaustion classes noted in /work/shared/NETBOOT-NOTES.md: huge or
  nested ``range`` loops, huge string/list repetition, huge powers, printf
  padding, unbounded recursion, geometric growth through ``~``.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from appliance.sandbox import Limits, RenderSandbox, TemplateError

LIMITS = Limits(seconds=1.0, workers=2)
DEADLINE = LIMITS.seconds + 3.0
NORMAL = ("console=ttyS0 ks={{ ks_url }}", {"ks_url": "http://10.0.0.1/ks/t"},
          "console=ttyS0 ks=http://10.0.0.1/ks/t")
SLOW = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def sandbox():
    with RenderSandbox(LIMITS) as sb:
        yield sb


def _normal_render_is_prompt(sandbox: RenderSandbox) -> None:
    source, ctx, expected = NORMAL
    started = time.monotonic()
    assert sandbox.render_string(source, ctx) == expected
    # well under the runaway's time limit: it did not wait behind the runaway
    assert time.monotonic() - started < LIMITS.seconds / 2


def refused(sandbox: RenderSandbox, payload: str, match: str, context: dict | None = None) -> str:
    """Run ``payload`` in a thread; meanwhile and afterwards normal renders work."""
    outcome: dict = {}

    def attack() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = sandbox.render_string(payload, context or {})
        except TemplateError as exc:
            outcome["error"] = exc
        except BaseException as exc:  # noqa: BLE001 - report anything else as a failure
            outcome["other"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=attack)
    thread.start()
    _normal_render_is_prompt(sandbox)  # a second worker answers meanwhile
    thread.join(DEADLINE + 1)
    assert not thread.is_alive()
    assert "other" not in outcome, outcome.get("other")
    assert "result" not in outcome, f"payload rendered: {outcome['result'][:200]!r}"
    assert outcome["elapsed"] < DEADLINE
    assert re.search(match, str(outcome["error"])), outcome["error"]
    _normal_render_is_prompt(sandbox)
    print(f"{payload!r} -> {outcome['error']} ({outcome['elapsed'] * 1000:.0f} ms)")
    return str(outcome["error"])


UNSAFE = r"unsafe|undefined|has no attribute"

# -- classic SSTI: blocked by Jinja2's sandbox --------------------------------


def test_str_class_mro(sandbox):
    refused(sandbox, "{{ ''.__class__.__mro__ }}", UNSAFE)


def test_str_class_mro_index(sandbox):
    refused(sandbox, "{{ ''.__class__.__mro__[1] }}", UNSAFE)


def test_object_subclasses(sandbox):
    refused(sandbox, "{{ ''.__class__.__mro__[1].__subclasses__() }}", UNSAFE)


def test_subclasses_via_attr_filter(sandbox):
    refused(sandbox, "{{ ''|attr('__class__')|attr('__mro__') }}", UNSAFE)


def test_cycler_init_globals(sandbox):
    refused(sandbox, "{{ cycler.__init__.__globals__ }}", UNSAFE)


def test_joiner_init_globals_os(sandbox):
    refused(sandbox, "{{ joiner.__init__.__globals__.os }}", UNSAFE)


def test_lipsum_globals_os_popen(sandbox):
    refused(sandbox, "{{ lipsum.__globals__['os'].popen('id').read() }}", UNSAFE)


def test_template_reference_context(sandbox):
    refused(sandbox, "{{ self._TemplateReference__context }}", UNSAFE)


def test_str_format_attribute_walk(sandbox):
    refused(sandbox, "{{ '{0.__class__.__mro__}'.format('') }}", UNSAFE)


def test_context_mutation_refused(sandbox):
    # ImmutableSandboxedEnvironment: no list.append / dict.update on context data
    refused(sandbox, "{% set _ = host.macs.append(1) %}", UNSAFE, {"host": {"macs": []}})


# -- resource exhaustion: refused by the in-worker guards ----------------------


def test_range_1e9(sandbox):
    refused(sandbox, "{% for a in range(10**9) %}{% endfor %}", "render exceeded range limit")


def test_nested_range_1e5(sandbox):
    refused(sandbox, "{% for a in range(100000) %}{% for b in range(100000) %}"
                     "{% endfor %}{% endfor %}", "render exceeded range limit")


def test_string_repeat_1e9(sandbox):
    refused(sandbox, "{{ 'a' * 10**9 }}", "render exceeded output limit")


def test_string_repeat_chained(sandbox):
    refused(sandbox, "{{ 'a' * 10**6 * 10**6 }}", "render exceeded output limit")


def test_list_repeat_1e9(sandbox):
    refused(sandbox, "{% set x = [1] * 10**9 %}", "render exceeded output limit")


def test_power_tower_is_left_associative_and_harmless(sandbox):
    # Jinja2's ** is left-associative: 9**9**9 is (9**9)**9 == 9**81, 78 digits.
    assert sandbox.render_string("{{ 9**9**9 }}", {}) == str(9**81)


def test_huge_power(sandbox):
    refused(sandbox, "{{ 9**(9**9) }}", "render exceeded integer limit")


def test_recursive_macro(sandbox):
    refused(sandbox, "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
            "render exceeded recursion limit")


def test_printf_operator_of_huge_string(sandbox):
    refused(sandbox, '{{ "%s" % ("a" * 10**8) }}', "render exceeded output limit")


def test_format_filter_star_width(sandbox):
    refused(sandbox, '{{ "%*s"|format(10**9, "") }}', "render exceeded output limit")


def test_printf_operator_literal_width(sandbox):
    refused(sandbox, '{{ "%999999999s" % "" }}', "render exceeded output limit")


def test_output_streamed_past_limit(sandbox):
    refused(sandbox, "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
            "render exceeded output limit")


# -- resource exhaustion: stopped by the memory rlimit or the parent's timer ---


def test_center_filter_1e9(sandbox):
    refused(sandbox, "{{ 'a'|center(10**9) }}", "render exceeded memory limit")


def test_str_format_width_1e9(sandbox):
    refused(sandbox, "{{ '{:>999999999}'.format('') }}", "render exceeded memory limit")


def test_geometric_growth_through_concat(sandbox):
    refused(sandbox, "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
                     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "render exceeded (memory|output) limit")


def test_nested_range_within_cap_hits_time_limit(sandbox):
    message = refused(sandbox, SLOW, "render exceeded 1.0 s")
    assert message == "render exceeded 1.0 s"


def test_other_requests_answered_while_runaway_renders(sandbox):
    errors: list[TemplateError] = []

    def runaway() -> None:
        try:
            sandbox.render_string(SLOW, {})
        except TemplateError as exc:
            errors.append(exc)

    thread = threading.Thread(target=runaway)
    thread.start()
    time.sleep(0.2)  # the runaway render is certainly in progress now
    for _ in range(20):
        _normal_render_is_prompt(sandbox)
    assert thread.is_alive(), "runaway render ended early; the test proves nothing"
    thread.join(DEADLINE)
    assert [str(e) for e in errors] == ["render exceeded 1.0 s"]
    _normal_render_is_prompt(sandbox)
