"""The dhcp-eval evaluator over Cobbler's PXE logic (corpus files) and the
functions it claims to evaluate; what it refuses raises Unsupported."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.dhcpd_conf import Facts, Unsupported, ast, evaluate, iter_hosts, parse, truth
from appliance.dhcpd_conf.expr import OPTION_CODES

DATA = Path(__file__).resolve().parents[1] / "data" / "dhcpd"


def declared(config: ast.Config) -> dict[str, int]:
    return {n.name: n.code for n in config.walk() if isinstance(n, ast.OptionDecl)}


def run_filename(body: ast.Body, facts: Facts, found: str | None = None) -> str | None:
    """The filename a body leaves set: statements run in order, the last wins."""
    for node in body:
        if isinstance(node, ast.Parameter) and node.name == "filename":
            found = node.text
        elif isinstance(node, ast.If):
            chosen = next((b.body for b in node.branches if truth(b.cond, facts)), node.orelse)
            found = run_filename(chosen or (), facts, found)
    return found


def pxe_class(config: ast.Config) -> ast.Class:
    return next(n for n in config.walk() if isinstance(n, ast.Class) and n.name == "pxeclients")


def request(config, *, vendor=b"PXEClient:Arch:00000:UNDI:002001", arch=None, user_class=None,
            name_for_93="pxe-system-type"):
    options = {"vendor-class-identifier": vendor}
    if arch is not None:
        options[name_for_93] = arch.to_bytes(2, "big")
    if user_class is not None:
        options["user-class"] = user_class
    return Facts.from_names(options, declared=declared(config),
                            hw_address=bytes.fromhex("525400123401"))


COBBLER = parse((DATA / "cobbler-bios-uefi-ipxe.conf").read_text())


@pytest.mark.parametrize("arch, expected", [
    (0, "grub/grub.0"), (7, "grub/grubx64.efi"), (9, "grub/grub2-x86_64.efi"),
    (11, "grub/grub.efi"), (0x0E, "grub/grub.ppc64le"), (0x30, "grub/grub.0"),
])
@pytest.mark.parametrize("name_for_93", ["pxe-system-type", "system-arch"])
def test_cobbler_pxe_class_picks_the_loader_for_each_arch(arch, expected, name_for_93):
    cls = pxe_class(COBBLER)
    facts = request(COBBLER, arch=arch, name_for_93=name_for_93)
    match = next(n for n in cls.body if isinstance(n, ast.Match))
    assert truth(match.expr, facts)
    assert run_filename(cls.body, facts) == expected


def test_cobbler_pxe_class_does_not_match_other_vendors():
    match = next(n for n in pxe_class(COBBLER).body if isinstance(n, ast.Match))
    assert not truth(match.expr, request(COBBLER, vendor=b"HTTPClient:Arch:00016"))
    assert not truth(match.expr, Facts())  # no option 60 at all: null != "PXEClient"


@pytest.mark.parametrize("user_class, expected", [
    (b"iPXE", "http://192.168.1.2/cblr/svc/op/gpxe/system/bios01"),
    (b"gPXE", "http://192.168.1.2/cblr/svc/op/gpxe/system/bios01"),
    (None, "undionly.kpxe"),
    (b"other", "undionly.kpxe"),
])
def test_cobbler_host_chains_ipxe_by_user_class(user_class, expected):
    host = next(h for h in iter_hosts(COBBLER) if h.host.name == "bios01-eth0")
    facts = request(COBBLER, arch=0, user_class=user_class)
    assert run_filename(host.host.body, facts) == expected


def test_system_arch_and_pxe_system_type_read_the_same_bytes():
    config = parse("option system-arch code 93 = unsigned integer 16;\n"
                   "if option system-arch = option pxe-system-type "
                   "and option arch = 00:0b { }\n"
                   "option arch code 93 = unsigned integer 16;")
    cond = config.body[1].branches[0].cond
    facts = Facts({93: b"\x00\x0b"}, declared=declared(config))
    assert evaluate(cond.left.left, facts) == evaluate(cond.left.right, facts) == b"\x00\x0b"
    assert truth(cond, facts)
    assert OPTION_CODES["pxe-system-type"] == 93


def ev(text: str, facts: Facts | None = None):
    config = parse(f"set v = {text};")
    return evaluate(config.body[0].expr, facts or FACTS)


FACTS = Facts.from_names(
    {"vendor-class-identifier": b"PXEClient:Arch:00007", "host-name": b"Lab-07",
     "dhcp-client-identifier": b"\x01\x52\x54\x00\x12\x34\x56"},
    hw_address=bytes.fromhex("525400123456"), known=True, host_decl_name="web01",
    classes=frozenset({"rpi"}), agent={1: b"port7"}, packet=bytes(range(40)))


@pytest.mark.parametrize("text, value", [
    ('substring(option vendor-class-identifier, 0, 9)', b"PXEClient"),
    ('substring(option vendor-class-identifier, 50, 9)', b""),
    ('suffix(option vendor-class-identifier, 5)', b"00007"),
    ('suffix(option host-name, 99)', b"Lab-07"),
    ("lcase(option host-name)", b"lab-07"),
    ("ucase(option host-name)", b"LAB-07"),
    ('concat("a", "b", "c")', b"abc"),
    ('concat("a", option user-class)', None),
    ("hardware", bytes.fromhex("01525400123456")),
    ('binary-to-ascii(16, 8, ":", substring(hardware, 1, 6))', b"52:54:0:12:34:56"),
    ('binary-to-ascii(10, 8, ".", 0a:00:00:01)', b"10.0.0.1"),
    ("encode-int(7, 16)", b"\x00\x07"),
    ("extract-int(substring(hardware, 1, 2), 16)", 0x5254),
    ("extract-int(01:02, 32)", None),
    ("9 - 2 / 2", 8),
    ("reverse(1, 01:02:03)", b"\x03\x02\x01"),
    ("pick-first-value(option user-class, option host-name)", b"Lab-07"),
    ("host-decl-name", b"web01"),
    ("packet(2, 3)", b"\x02\x03\x04"),
    ("option agent.circuit-id", b"port7"),
    ("1 + 2 * 3", 7),
    ("7 / 0", None),
    ('option host-name = "Lab-07"', True),
    ('option user-class != "iPXE"', True),
    ('option user-class = "iPXE"', False),
    ("known and not static", True),
    ('exists user-class or check "rpi"', True),
    ("not (exists host-name)", False),
    ('extract-int(option dhcp-client-identifier, 8) = 1', True),
])
def test_evaluated_functions(text, value):
    assert ev(text) == value


@pytest.mark.parametrize("text, why", [
    ('option host-name ~= "^lab"', "regular expressions"),
    ('option host-name ~~ "^lab"', "regular expressions"),
    ("leased-address", "leased-address"),
    ("lease-time", "lease-time"),
    ("config-option domain-name", "config-option"),
    ("myvar", "variable myvar"),
    ('gethostbyname("x")', "gethostbyname"),
    ("option not-a-known-option", "no known code"),
])
def test_unsupported_raises_with_the_node(text, why):
    with pytest.raises(Unsupported, match=why) as err:
        ev(text)
    assert err.value.node.pos.line == 1


def test_packet_needs_the_packet():
    with pytest.raises(Unsupported, match="raw packet"):
        ev("packet(0, 1)", Facts())
