"""A runaway kickstart template, served over HTTP, neither stalls nor escapes.

A template can be harmless for the sample host the editor checks it with
and explode for one real host (a loop bound taken from a host variable).
This test saves such a template through the editor, then requests it over
the real HTTP server while other machines fetch their scripts and
kickstarts: the runaway request fails (500) within the sandbox's time limit,
and every other request is answered promptly meanwhile.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from appliance.app import Appliance
from appliance.config import load_config
from appliance.model import Distro, Host, Profile
from appliance.templates import SAMPLE_HOST, TemplateEditor
from appliance.validate import kind_of, validate

LIMIT = 2.0
RUNAWAY = ("# kickstart for {{ host.name }}\n"
           "{% for a in range(n | default(1)) %}{% for b in range(n | default(1)) %}"
           "{% for c in range(n | default(1)) %}{% endfor %}{% endfor %}{% endfor %}\n")
GOOD, EVIL = "52:54:00:5e:00:01", "52:54:00:5e:00:02"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def appliance(tmp_path):
    cfg = load_config(None, address="127.0.0.1", state_dir=str(tmp_path), http_port=free_port(),
                      tftp_port=free_port())
    cfg = dataclasses.replace(cfg, http_bind="127.0.0.1", tftp_bind="127.0.0.1",
                              router_advertisements=False, render_seconds=LIMIT,
                              dhcp=dataclasses.replace(cfg.dhcp, enabled=False))
    app = Appliance(cfg)
    app.start()
    (tmp_path / "k").write_bytes(b"k")
    app.store.add_distro(Distro("d", str(tmp_path / "k"), str(tmp_path / "k")))
    editor = TemplateEditor(app.library, app.renderer, validate, kind_of)
    sample = app.policy.install_context(SAMPLE_HOST)
    editor.save("loop.j2", RUNAWAY, sample)           # fine for the sample host
    app.store.add_profile(Profile("evil", "d", "loop.j2", "ks={{ ks_url }}"))
    app.store.add_profile(Profile("good", "d", "default.ks.j2", "ks={{ ks_url }}"))
    app.store.add_host(Host(EVIL, "evil", name="evil", variables={"n": 10_000}), 3600)
    app.store.add_host(Host(GOOD, "good", name="good"), 3600)
    yield app
    app.stop()


def fetch(url: str) -> tuple[int, float]:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    return code, time.monotonic() - start


def test_runaway_kickstart_fails_within_limit_while_others_are_served(appliance):
    base = appliance.config.base_url
    evil_url = f"{base}/ks/{appliance.store.host(EVIL).token}"
    good_ks = f"{base}/ks/{appliance.store.host(GOOD).token}"
    result = {}
    def attack():
        result["evil"] = fetch(evil_url)
        result["evil_done"] = time.monotonic()

    runaway = threading.Thread(target=attack)
    runaway.start()
    time.sleep(0.3)  # the runaway render is now holding a worker
    others = [fetch(f"{base}/boot/{GOOD}.ipxe"), fetch(good_ks), fetch(f"{base}/healthz")]
    others_done = time.monotonic()
    runaway.join(timeout=LIMIT + 10)
    code, took = result["evil"]
    assert code == 500 and took < LIMIT + 3, (code, took)
    assert all(c == 200 for c, _ in others), others
    # answered while the runaway render was still holding its worker
    assert others_done < result["evil_done"], (others, took)
    # and the appliance still renders afterwards
    assert fetch(good_ks)[0] == 200
