"""appliance.validate: the bundled templates render and validate clean; the
validators point at the right line for each kind of mistake."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.validate import Problem, kind_of, validate

KICKSTARTS = Path(__file__).resolve().parents[2] / "kickstarts"
MAC = "52:54:00:12:34:56"
TOKEN = "tok3n"
BASE = "http://10.0.0.1:8080"

BASE_CONTEXT = {
    "host": {"mac": MAC, "name": "web1", "ip": "10.0.0.50"},
    "ks_url": f"{BASE}/ks/{TOKEN}",
    "done_url": f"{BASE}/done/{TOKEN}",
    "appliance": {"address": "10.0.0.1", "base_url": BASE},
    "profile": "p",
    "distro": "d",
}
HASH = "$6$pl0wsh4re$" + "A" * 86  # shape of a sha512-crypt hash, not a real one
KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlowshareTestKey alice@example.org",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCplowshare bob's laptop"]
ALL_VARS = {
    "timezone": "Europe/Paris", "locale": "fr_FR.UTF-8", "keyboard": "fr",
    "root_password_hash": HASH, "ssh_keys": KEYS, "disk": "/dev/sda",
    "packages": ["vim", "git"], "proxy": "http://proxy.example.org:3128",
    "ntp_servers": ["0.pool.ntp.org", "ntp.example.org"], "admin_user": "ops",
}
MIRRORS = {  # one distro-appropriate mirror per template
    "default.ks.j2": "http://mirror.example.org/rocky/9/BaseOS/x86_64/os",
    "debian.preseed.j2": "https://mirror.example.org/debian",
    "ubuntu-autoinstall.yaml.j2": "http://mirror.example.org/ubuntu",
}
TOP_LEVEL = sorted(MIRRORS)


def render(name: str, **variables) -> str:
    # The appliance renders in an *immutable* sandbox (a SandboxedEnvironment
    # that also forbids list.append & co); use the stricter one here too.
    env = ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(str(KICKSTARTS)),
                                        undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True)
    return env.get_template(name).render({**BASE_CONTEXT, **variables})


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


# -- bundled templates ---------------------------------------------------------

def test_bundled_templates_are_all_covered():
    top = sorted(p.name for p in KICKSTARTS.glob("*.j2"))
    assert top == TOP_LEVEL
    assert {kind_of(n) for n in top} == {"kickstart", "preseed", "autoinstall"}


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_bundled_renders_clean_with_defaults(name):
    text = render(name)
    assert validate(kind_of(name), text) == []
    assert f"{BASE}/done/{TOKEN}" in text
    assert f"{BASE}/report/{TOKEN}?stage=post" in text
    assert f"({MAC})" in text.splitlines()[0] + text.splitlines()[1]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_bundled_renders_clean_with_every_variable(name):
    text = render(name, mirror=MIRRORS[name], **ALL_VARS)
    assert validate(kind_of(name), text) == []
    for key in KEYS:
        assert key.split()[1] in text
    for value in ("Europe/Paris", "fr_FR.UTF-8", HASH, "vim", "git", "0.pool.ntp.org",
                  "proxy.example.org:3128", "sda", "mirror.example.org"):
        assert value in text, value


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_bundled_renders_without_a_token(name):
    # a host without an install token: no callback, still a valid document
    text = render(name, done_url="", ks_url="")
    assert "/done/" not in text and "/report/" not in text
    assert validate(kind_of(name), text) == []


def test_default_kickstart_keeps_what_e2e_asserts():
    text = render("default.ks.j2")
    assert text.splitlines()[0] == f"# Plowshare kickstart for web1 ({MAC})"
    assert f"--device={MAC}" in text and "--hostname=web1" in text
    assert "rootpw --lock" in text and "autopart" in text
    post = text[text.index("%post --erroronfail --log"):]
    assert f'-X POST "{BASE}/done/{TOKEN}"' in post
    assert f'wget -q -O /dev/null "{BASE}/done/{TOKEN}"' in post


def test_default_kickstart_variables_land_in_the_right_commands():
    text = render("default.ks.j2", mirror=MIRRORS["default.ks.j2"], **ALL_VARS)
    lines = text.splitlines()
    assert f"rootpw --iscrypted {HASH}" in lines
    assert "ignoredisk --only-use=sda" in lines
    assert "timesource --ntp-server=ntp.example.org" in lines
    assert "repo --name=AppStream --baseurl=http://mirror.example.org/rocky/9/AppStream/" \
           "x86_64/os --proxy=http://proxy.example.org:3128" in lines
    assert KEYS[1] in lines  # inside the authorized_keys here-document


def test_preseed_accounts():
    locked = render("debian.preseed.j2")
    assert "d-i passwd/root-login boolean false" in locked
    assert "d-i passwd/username string plowshare" in locked
    assert "d-i partman/early_command string debconf-set partman-auto/disk" in locked
    with_hash = render("debian.preseed.j2", root_password_hash=HASH, ssh_keys=KEYS)
    assert f"d-i passwd/root-password-crypted password {HASH}" in with_hash
    assert "/target/root/.ssh/authorized_keys" in with_hash
    assert "'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCplowshare bob'\\''s laptop'" in with_hash


def test_autoinstall_is_yaml_with_keys_and_callback():
    import yaml
    doc = yaml.safe_load(render("ubuntu-autoinstall.yaml.j2", ssh_keys=KEYS))
    ai = doc["autoinstall"]
    assert ai["ssh"]["authorized-keys"] == KEYS
    assert ai["user-data"]["users"][0]["ssh_authorized_keys"] == KEYS
    assert ai["network"]["ethernets"]["plowshare0"]["match"]["macaddress"] == MAC
    assert any(f"{BASE}/done/{TOKEN}" in c for c in ai["late-commands"])


def test_ksvalidator_cli_accepts_rendered_default(tmp_path):
    """The acceptance text: "ksvalidator (pykickstart) accepts it"."""
    exe = Path(sys.executable).with_name("ksvalidator")
    exe = str(exe) if exe.exists() else shutil.which("ksvalidator")
    assert exe, "ksvalidator (pykickstart) is not installed"
    for i, variables in enumerate(({}, {"mirror": MIRRORS["default.ks.j2"], **ALL_VARS})):
        ks = tmp_path / f"ks{i}.cfg"
        ks.write_text(render("default.ks.j2", **variables))
        res = subprocess.run([exe, "-v", "RHEL9", str(ks)], capture_output=True, text=True,
                             check=False, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr


# -- kind_of -------------------------------------------------------------------

@pytest.mark.parametrize("name,kind", [
    ("default.ks.j2", "kickstart"), ("ks.cfg", "kickstart"), ("anaconda-ks.cfg", "kickstart"),
    ("rocky9.ks", "kickstart"), ("debian.preseed.j2", "preseed"), ("preseed.cfg", "preseed"),
    ("bookworm.cfg", "preseed"), ("ubuntu-autoinstall.yaml.j2", "autoinstall"),
    ("user-data", "autoinstall"), ("snippets/completion.j2", "snippet"),
    ("snippets/users.ks.j2", "snippet"), ("motd.txt", "text"), ("books.txt", "text"),
])
def test_kind_of(name, kind):
    assert kind_of(name) == kind


def test_snippets_and_text_are_not_validated():
    assert validate("snippet", "bogus --flag\n%post\n") == []
    assert validate("text", "anything: [") == []
    with pytest.raises(ValueError):
        validate("cobbler", "")


# -- kickstart negatives -------------------------------------------------------

KS_OK = "text\nlang en_US.UTF-8\nrootpw --lock\n"


def test_kickstart_unknown_command_has_its_line():
    problems = validate("kickstart", KS_OK + "bogus --flag\nreboot\n")
    assert [(p.line, p.severity) for p in problems] == [(4, "error")]
    assert "bogus" in problems[0].message


def test_kickstart_errors_are_collected_not_just_the_first():
    problems = validate("kickstart", "text\nbogus\nlang en_US.UTF-8\nautopart --nonsense\n")
    assert [p.line for p in errors(problems)] == [2, 4]


def test_kickstart_missing_end():
    problems = validate("kickstart", KS_OK + "%packages\n@core\n")
    assert errors(problems) and "%end" in problems[0].message
    problems = validate("kickstart", KS_OK + "%post\necho hi\n")
    assert errors(problems) and "%end" in problems[0].message


def test_kickstart_unknown_section_and_unclosed_quote():
    problems = validate("kickstart", KS_OK + "%bogus\nx\n%end\n")
    assert [p.line for p in errors(problems)] == [4]
    problems = validate("kickstart", KS_OK + 'network --hostname="web1\n')
    assert [p.line for p in errors(problems)] == [4]


def test_kickstart_deprecation_is_a_warning_with_its_line():
    problems = validate("kickstart", KS_OK + "autostep\n")
    assert [(p.line, p.severity) for p in problems] == [(4, "warning")]
    assert "deprecated" in problems[0].message


def test_kickstart_version_is_configurable():
    # `install` was removed in F29/RHEL8: accepted by RHEL7 syntax only
    assert errors(validate("kickstart", KS_OK + "install\n", version="RHEL9"))
    assert not errors(validate("kickstart", KS_OK + "install\n", version="RHEL7"))
    with pytest.raises(ValueError):
        validate("kickstart", KS_OK, version="RHEL99")


def test_kickstart_includes_are_not_followed(tmp_path):
    secret = tmp_path / "secret.ks"
    secret.write_text("bogus-from-include\n")
    text = f"%ksappend http://192.0.2.1/never\n%include {secret}\n" + KS_OK
    assert validate("kickstart", text) == []


# -- autoinstall negatives -----------------------------------------------------

AI_OK = ("#cloud-config\nautoinstall:\n  version: 1\n"
         "  identity: {hostname: h, username: u, password: '!'}\n")


def test_autoinstall_minimal_ok():
    assert validate("autoinstall", AI_OK) == []


def test_autoinstall_typo_key_named_with_its_line():
    text = AI_OK + "  late-command:\n    - echo hi\n"
    problems = validate("autoinstall", text)
    assert len(problems) == 1
    p = problems[0]
    assert (p.line, p.column) == (5, 3)
    assert "late-command" in p.message and "late-commands" in p.message


def test_autoinstall_nested_typo_and_bad_types():
    text = AI_OK + ("  ssh:\n    install-server: yes-please\n    authorized_keys: []\n"
                    "  shutdown: halt\n")
    problems = {p.line: p for p in validate("autoinstall", text)}
    assert set(problems) == {6, 7, 8}
    assert "not of type 'boolean'" in problems[6].message
    assert "authorized_keys" in problems[7].message
    assert "halt" in problems[8].message


def test_autoinstall_yaml_syntax_error_has_line_and_column():
    text = AI_OK + "  packages: [curl, vim\n  late-commands: []\n"
    (p,) = validate("autoinstall", text)
    assert p.line == 6 and p.column is not None
    assert p.message.startswith("YAML:")


def test_autoinstall_header_version_and_misplaced_keys():
    problems = validate("autoinstall", "autoinstall:\n  version: 2\nlate-commands: []\n")
    lines = sorted((p.line, p.message.split()[0]) for p in problems)
    assert lines[0][0] == 1 and "#cloud-config" in problems[0].message
    assert {p.line for p in problems} == {1, 2, 3}
    assert validate("autoinstall", "#cloud-config\npackages: [vim]\n")[0].message \
        == "no 'autoinstall:' mapping"
    assert "version" in validate("autoinstall", "#cloud-config\nautoinstall: {}\n")[0].message


# -- preseed negatives ---------------------------------------------------------

def test_preseed_problems_have_line_numbers():
    text = ("#_preseed_V1\n"
            "d-i debian-installer/locale string en_US.UTF-8\n"
            "d-i netcfg/get_hostname strnig web1\n"      # 3: bad type
            "d-i netcfg/get_domain\n"                    # 4: 2 fields
            "d-i clock-setup/utc boolean yes\n"          # 5: bad boolean
            "\n"
            "d-i passwd/make-user boolean false\n")
    problems = validate("preseed", text)
    assert [(p.line, p.severity) for p in problems] == [(3, "error"), (4, "error"),
                                                         (5, "error")]
    assert "strnig" in problems[0].message
    assert "3 fields" in problems[1].message
    assert "'yes'" in problems[2].message


def test_preseed_continuation_lines():
    text = ("# comment\n"
            "d-i preseed/late_command string \\\n"
            "    in-target true; \\\n"
            "    in-target false\n"
            "d-i partman/confirm boolean \\\n"
            "    true\n"
            "d-i x/y bogus \\\n"
            "    value\n")
    problems = validate("preseed", text)
    assert [(p.line, p.severity) for p in problems] == [(7, "error")]


def test_preseed_empty_values_seen_flag_and_duplicates():
    text = ("d-i netcfg/get_domain string\n"
            "d-i finish-install/reboot_in_progress note\n"
            "d-i debian-installer/locale seen true\n"
            "d-i netcfg/get_domain string example.org\n"
            "D-I bad/owner string x\n")
    problems = validate("preseed", text)
    assert [(p.line, p.severity) for p in problems] == [(4, "warning"), (5, "error")]
