"""Grammar cases of the dhcpd.conf parser, error positions, dangerous nodes."""

from __future__ import annotations

import pytest

from appliance.dhcpd_conf import DhcpdConfError, ast, iter_hosts, parse
from appliance.dhcpd_conf.cursor import MAX_DEPTH
from appliance.dhcpd_conf.expr import BinOp, Const, Exists, Not, OptionRef
from appliance.dhcpd_conf.lexer import tokenize


def only(text: str):
    [node] = parse(text).body
    return node


def test_lexer_positions_comments_and_escapes():
    text = 'a # comment "x" {\n  "t\\tq\\"\\101\\x42" 00:07 ~= ~~ != #end'
    kinds = [(k, v) for k, v, _ in tokenize(text)]
    assert kinds == [("ATOM", "a"), ("STR", 't\tq"AB'), ("ATOM", "00:07"),
                     ("OP", "~="), ("OP", "~~"), ("OP", "!=")]


def test_subnet_range_and_options_keep_typed_values():
    node = only("subnet 10.0.0.0 netmask 255.255.255.0 {\n"
                " range dynamic-bootp 10.0.0.10 10.0.0.20;\n range 10.0.0.30;\n"
                " option domain-name-servers 10.0.0.1, ns.example.org;\n"
                ' option domain-name "example.org";\n}')
    assert isinstance(node, ast.Subnet) and (node.network, node.netmask) == ("10.0.0.0",
                                                                            "255.255.255.0")
    r1, r2, dns, dn = node.body
    assert (r1.low, r1.high, r1.dynamic_bootp, r1.pos.line) == ("10.0.0.10", "10.0.0.20", True, 2)
    assert (r2.low, r2.high, r2.dynamic_bootp) == ("10.0.0.30", None, False)
    assert [[(v.kind, v.text) for v in g] for g in dns.items] == [
        [("ip", "10.0.0.1")], [("name", "ns.example.org")]]
    assert dn.items[0][0].kind == "string" and dn.items[0][0].pos.col == 21


def test_host_with_hardware_fixed_address_names_and_client_identifier():
    node = only("host web01 {\n hardware ethernet 52:54:00:AB:00:01;\n"
                " fixed-address 10.0.0.5, web01.example.org;\n"
                " option dhcp-client-identifier = 01:52:54:00:ab:00:01;\n"
                ' option host-name "web01";\n filename "pxelinux.0";\n next-server 10.0.0.1;\n'
                ' server-name "boot";\n use-host-decl-names on;\n}')
    assert node.name == "web01"
    hw, fixed, cid, hn, fn, ns, sn, uhdn = node.body
    assert (hw.hw_type, hw.address, hw.octets) == ("ethernet", "52:54:00:ab:00:01",
                                                  bytes.fromhex("525400ab0001"))
    assert [(v.kind, v.text) for v in fixed.addresses] == [("ip", "10.0.0.5"),
                                                          ("name", "web01.example.org")]
    assert cid.expr == Const(bytes.fromhex("01525400ab0001"), cid.expr.pos)
    assert hn.items[0][0].text == "web01"
    assert (fn.name, fn.text, ns.text, sn.text, uhdn.text) == (
        "filename", "pxelinux.0", "10.0.0.1", "boot", "on")


def test_keywords_are_case_insensitive():
    node = only("HOST a { HARDWARE Ethernet 00:11:22:33:44:55; Default-Lease-Time 60; }")
    assert node.body[0].hw_type == "ethernet" and node.body[1].name == "default-lease-time"


def test_class_match_spawn_subclass_and_pool_permits():
    config = parse('class "c" { match if substring(option vendor-class-identifier, 0, 9) '
                   '= "PXEClient"; spawn with option agent.circuit-id; lease limit 4; }\n'
                   'class "m" { match hardware; }\nsubclass "m" 1:52:54:00:00:00:01;\n'
                   'subclass "m" "x" { filename "a"; }\n'
                   'subnet 10.0.0.0 netmask 255.0.0.0 { pool { allow members of "c"; '
                   "deny dynamic bootp clients; range 10.0.0.5 10.0.0.6; } }")
    cls, m, sub1, sub2, subnet = config.body
    match, spawn, limit = cls.body
    assert match.conditional and isinstance(match.expr, BinOp)
    assert isinstance(spawn.expr, OptionRef) and spawn.expr.name == "agent.circuit-id"
    assert (limit.name, limit.values[0].text) == ("lease", "limit")
    assert not m.body[0].conditional
    assert (sub1.class_name, sub1.key.kind, sub1.body) == ("m", "hex", None)
    assert sub2.key.kind == "string" and sub2.body[0].text == "a"
    allow, deny, _ = subnet.body[0].body
    assert (allow.verb, allow.what, allow.class_name) == ("allow", "members of", "c")
    assert (deny.verb, deny.what) == ("deny", "dynamic bootp clients")


def test_if_elsif_else_if_else_chain_is_flat():
    node = only('if known { filename "a"; } elsif exists user-class { filename "b"; }\n'
                'else if not (option user-class = "x") { filename "c"; } else { filename "d"; }')
    assert len(node.branches) == 3 and node.orelse[0].text == "d"
    assert isinstance(node.branches[1].cond, Exists)
    assert isinstance(node.branches[2].cond, Not) and node.branches[2].pos.line == 2


def test_option_code_declarations():
    config = parse("option a code 200 = array of unsigned integer 8;\n"
                   "option b code 201 = { ip-address, signed integer 16, text };\n"
                   "option c code 202 = encapsulate vendor;\n"
                   "option d code 203 = domain-list compressed;\n"
                   "option space.e code 1 = integer 32;")
    a, b, c, d, e = config.body
    assert isinstance(a.type, ast.ArrayType) and a.type.of.bits == 8 and not a.type.of.signed
    assert [f.name for f in b.type.fields] == ["ip-address", "integer", "text"]
    assert b.type.fields[1].signed and b.code == 201
    assert c.type.space == "vendor" and d.type.compressed
    assert (e.name, e.type.bits, e.type.signed) == ("space.e", 32, True)


def test_generic_parameters_blocks_and_not_authoritative():
    config = parse('not authoritative;\nddns-hostname = concat("a", "b");\n'
                   'failover peer "f" { primary; address 10.0.0.1; mclt 3600; }\n'
                   "option space pxelinux;")
    auth, ddns, failover, space = config.body
    assert auth.name == "authoritative" and auth.negated
    assert ddns.expr is not None and ddns.expr.name == "concat"
    assert isinstance(failover, ast.Block) and [w.text for w in failover.words] == ["peer", "f"]
    assert space.name == "option space"


@pytest.mark.parametrize("text, kind, line", [
    ('\n\ninclude "/etc/dhcp/other.conf";', "include", 3),
    ('\non commit { set x = "y"; }', "on", 2),
    ('\n\n\non expiry or release { }', "on", 4),
    ('if known {\n  execute("/bin/sh", "-c", "reboot");\n}', "execute", 2),
    ("omapi-port 7911;", "omapi-port", 1),
    ("\nomapi-key k;", "omapi-key", 2),
    ("key k {\n algorithm hmac-md5;\n secret c2VjcmV0+/==;\n};", "key", 1),
    ("\nzone example.org. { primary 127.0.0.1; }", "zone", 2),
])
def test_every_dangerous_statement_is_a_node_with_its_line(text, kind, line):
    found = [(d.kind, d.pos.line) for d in parse(text).dangerous()]
    assert (kind, line) in found


def test_dangerous_nested_anywhere_is_found():
    config = parse("group {\n host a {\n  hardware ethernet 00:11:22:33:44:55;\n"
                   '  on commit { execute("/x"); }\n }\n}')
    assert sorted((d.kind, d.pos.line) for d in config.dangerous()) == [
        ("execute", 4), ("on", 4)]


def test_include_callback_splices_and_may_refuse():
    calls = []

    def include(path, pos):
        calls.append((path, pos.line))
        if path.startswith("/etc/"):
            raise DhcpdConfError("include outside the allowed directory", pos.file,
                                 pos.line, pos.col)
        return "host h { hardware ethernet 00:11:22:33:44:55; }\n", path

    config = parse('group {\n include "hosts.conf";\n}', "main.conf", include=include)
    [host] = config.body[0].body
    assert host.name == "h" and host.pos.file == "hosts.conf" and calls == [("hosts.conf", 2)]
    with pytest.raises(DhcpdConfError, match=r"main.conf:2:2: include outside"):
        parse('authoritative;\n include "/etc/passwd";', "main.conf", include=include)


def test_self_including_file_hits_the_depth_limit():
    def include(path, pos):
        return f'include "{path}";', path

    with pytest.raises(DhcpdConfError, match="nesting deeper"):
        parse('include "loop.conf";', include=include)


@pytest.mark.parametrize("text, line, col, fragment", [
    ("host a {\n  hardware ethernet 00:11:22:33:44:55\n}", 3, 1, "expected ';'"),
    ("subnet 10.0.0.0 255.0.0.0 { }", 1, 17, "expected 'netmask'"),
    ("group {\n  filename \"a\";\n", 3, 1, "expected '}'"),
    ('option domain-name "x', 1, 20, "unterminated string"),
    ("default-lease-time ten;", 1, 20, "expects a number"),
    ("filename pxelinux.0;", 1, 10, "expects a string"),
    ("range 10.0.0.1 10.0.0.2 10.0.0.3;", 1, 25, "expected ';'"),
    ('class "c" { match if substring(option x, 0) = "y"; }', 1, 31, "substring() takes 3"),
    ('if option user-class { filename "a"; }', 1, 4, "boolean expression expected"),
    ("}", 1, 1, "expected a statement"),
    ("host a { subnet 10.0.0.0 netmask 255.0.0.0 { } }", 1, 10, "not allowed inside host"),
    ("option x code 300000 = text;", 1, 15, "option code"),
    ("option x code 3 = float;", 1, 19, "unknown option type"),
])
def test_errors_carry_file_line_and_column(text, line, col, fragment):
    with pytest.raises(DhcpdConfError) as err:
        parse(text, "site.conf")
    e = err.value
    assert (e.filename, e.line, e.col) == ("site.conf", line, col), str(e)
    assert fragment in e.message
    assert str(e).startswith(f"site.conf:{line}:{col}: ")


DEEP = 10_000


@pytest.mark.parametrize("text", [
    "group {" * DEEP + "}" * DEEP,
    "if known {" * DEEP + "}" * DEEP,
    'class "c" { match if ' + "(" * DEEP + "known" + ")" * DEEP + "; }",
    "if " + "not " * DEEP + "known { }",
    "if " + " and ".join(["known"] * DEEP) + " { }",
    "option x code 1 = " + "array of " * DEEP + "text;",
    "set x = " + "concat(" * DEEP + '"a"' + ', "b")' * DEEP + ";",
], ids=["groups", "ifs", "parens", "nots", "and-chain", "array-of", "calls"])
def test_deep_nesting_is_a_parse_error(text):
    with pytest.raises(DhcpdConfError, match=f"nesting deeper than {MAX_DEPTH}"):
        parse(text)


def test_nesting_up_to_the_limit_parses():
    depth = MAX_DEPTH - 1
    config = parse("group { " * depth + "}" * depth)
    assert sum(1 for n in config.walk() if isinstance(n, ast.Group)) == depth


def test_non_str_input_is_refused():
    with pytest.raises(DhcpdConfError):
        parse(b"group { }")  # type: ignore[arg-type]


def test_iter_hosts_inherits_innermost_settings_first():
    config = parse('option domain-name "top";\nfilename "top.0";\n'
                   "shared-network n {\n subnet 10.0.0.0 netmask 255.0.0.0 {\n"
                   '  option routers 10.0.0.1;\n  group {\n   option domain-name "grp";\n'
                   '   host a { hardware ethernet 00:11:22:33:44:55; fixed-address 10.0.0.5;\n'
                   '     if exists user-class { filename "x"; } }\n  }\n }\n}\n'
                   'host b { hardware ethernet 00:11:22:33:44:66; filename "b.0"; }')
    a, b = list(iter_hosts(config))
    assert [type(s).__name__ for s in a.scopes] == ["Config", "SharedNetwork", "Subnet", "Group"]
    assert a.option("domain-name").items[0][0].text == "grp"
    assert a.option("routers").items[0][0].text == "10.0.0.1"
    assert a.parameter("filename").text == "top.0"
    assert [v.text for v in a.fixed_addresses] == ["10.0.0.5"]
    assert a.hardware.address == "00:11:22:33:44:55" and len(a.conditionals()) == 1
    assert b.parameter("filename").text == "b.0" and b.option("routers") is None
