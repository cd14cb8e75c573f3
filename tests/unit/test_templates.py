"""Template library and editor: versions, refusals that keep the old version, diff, revert.

Rendering goes through the real :class:`RenderSandbox` (worker processes),
as the appliance does, with the bundled ``kickstarts/`` as version 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.kickstart import Renderer, install_context, layered_variables
from appliance.model import Distro, Host, Profile
from appliance.sandbox import Limits, RenderSandbox
from appliance.store import Store
from appliance.templates import SAMPLE_HOST, TemplateEditor, TemplateLibrary, TemplateRefused
from appliance.validate import kind_of, validate

KICKSTARTS = Path(__file__).resolve().parents[2] / "kickstarts"
KS = "default.ks.j2"


@pytest.fixture(scope="module")
def sandbox():
    box = RenderSandbox(Limits(seconds=3.0)).start()
    yield box
    box.stop()


@pytest.fixture
def editor(tmp_path, sandbox):
    store = Store(tmp_path / "db").open()
    library = TemplateLibrary(store, KICKSTARTS)
    yield TemplateEditor(library, Renderer(sandbox, library), validate, kind_of)
    store.close()


def ctx() -> dict:
    return install_context(SAMPLE_HOST, SAMPLE_HOST.ip, None, None, "http://192.0.2.1",
                           "192.0.2.1", "tok")


def test_bundled_templates_are_version_0_and_render(editor):
    lib = editor.library
    assert {KS, "debian.preseed.j2", "ubuntu-autoinstall.yaml.j2",
            "snippets/completion.j2"} <= set(lib.names())
    assert lib.get(KS).version == 0
    for name in ("default.ks.j2", "debian.preseed.j2", "ubuntu-autoinstall.yaml.j2"):
        assert editor.problems(name, lib.get(name).body, ctx()) == [], name


def test_save_makes_versions_and_the_newest_renders(editor):
    body = editor.library.get(KS).body.replace("text\n", "text\n# edited once\n", 1)
    assert editor.save(KS, body, ctx(), note="first") == 1
    assert editor.save(KS, body + "# twice\n", ctx()) == 2
    assert [v.version for v in editor.library.history(KS)] == [0, 1, 2]
    assert "# twice" in editor.renderer.render(KS, ctx())
    assert "# edited once" in editor.library.get(KS, 1).body
    assert "# twice" not in editor.library.get(KS, 1).body


@pytest.mark.parametrize(("body", "line", "words"), [
    ("text\n{% if %}\n", 2, "expected"),                        # Jinja syntax error
    ("text\n\nnetwork --hostname={{ nosuchvar }}\n", 3, "nosuchvar"),  # undefined variable
    ("text\n{{ ''.__class__.__mro__ }}\n", 2, ""),               # forbidden construct
    ("text\nbogus --flag\n", 2, "bogus"),                        # pykickstart refuses it
])
def test_bad_template_refused_with_line_and_old_version_kept(editor, body, line, words):
    before = editor.renderer.render(KS, ctx())
    with pytest.raises(TemplateRefused) as err:
        editor.save(KS, body, ctx())
    problem = err.value.problems[0]
    assert problem.line == line, err.value
    assert words in str(err.value).lower()
    assert editor.library.store.template(KS) is None          # nothing stored
    assert editor.renderer.render(KS, ctx()) == before         # still served as before


def test_a_snippet_that_breaks_its_includer_is_refused(editor):
    with pytest.raises(TemplateRefused) as err:
        editor.save("snippets/network.ks.j2", "network --nosuchoption\n", ctx())
    assert any("via default.ks.j2" in p.message for p in err.value.problems)


def test_diff_and_revert(editor):
    original = editor.library.get(KS).body
    editor.save(KS, original.replace("text\n", "text\n# v1\n", 1), ctx())
    diff = editor.diff(KS, 0, 1)
    assert "+# v1" in diff and diff.startswith(f"--- {KS}@0")
    assert editor.revert(KS, 0, ctx()) == 2
    assert editor.library.get(KS).body == original
    assert editor.library.history(KS)[-1].note == "revert to version 0"
    with pytest.raises(ValueError):
        editor.diff(KS, 0, 9)


@pytest.mark.parametrize("name", ["../escape.j2", "/abs.j2", "a/../b.j2", "notes.md", ""])
def test_bad_template_names_refused(editor, name):
    with pytest.raises(TemplateRefused):
        editor.save(name, "x\n", ctx())


def test_variables_layer_host_over_profile_over_distro_over_global():
    distro = Distro("d", "/k", "/i", variables={"a": "distro", "b": "distro", "c": "distro"})
    profile = Profile("p", "d", variables={"a": "profile", "b": "profile"})
    host = Host("52:54:00:00:00:01", "p", variables={"a": "host", "host": "not allowed"})
    merged = layered_variables(host, profile, distro, {"a": "g", "d": "global"})
    assert merged == {"a": "host", "b": "profile", "c": "distro", "d": "global"}
    context = install_context(host, "10.0.0.5", profile, distro, "http://x", "x", "t",
                              {"d": "global"})
    assert context["host"]["mac"] == host.mac and context["a"] == "host"
    assert context["ks_url"] == "http://x/ks/t"
