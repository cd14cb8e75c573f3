"""The option registry: text/TOML parsing, errors, and wire bytes against scapy.

For every option scapy knows, our encoding of a canonical value must be the
bytes scapy builds from the same value under scapy's own name and type; the
two scapy does not know (119, 249) are checked against their RFC layouts.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import DHCP

from appliance import dhcp_options as o

ips = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
nets = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda p: str(ipaddress.IPv4Network((p[0], p[1]), strict=False)))


def scapy_bytes(name, *values) -> bytes:
    """One option as scapy encodes it (without the END byte)."""
    return bytes(DHCP(options=[(name, *values), "end"]))[:-1]


def ours(name, value) -> bytes:
    code, payload = o.encode(name, o.parse(name, value))
    return bytes((code, len(payload))) + payload


# ISC name -> scapy name, for the options scapy types
SCAPY_IP_ARRAYS = {"routers": "router", "domain-name-servers": "name_server",
                   "log-servers": "log_server", "ntp-servers": "NTP_server",
                   "nis-servers": "NIS_server", "netbios-name-servers": "NetBIOS_server",
                   "smtp-server": "SMTP_server", "time-servers": "time_server",
                   "lpr-servers": "lpr_server"}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SCAPY_IP_ARRAYS)), st.lists(ips, min_size=1, max_size=8))
def test_ip_arrays_match_scapy(name, addresses):
    assert ours(name, addresses) == scapy_bytes(SCAPY_IP_ARRAYS[name], *addresses)
    assert ours(name, ", ".join(addresses)) == ours(name, addresses)  # text form


@settings(max_examples=200, deadline=None)
@given(ips, ips)
def test_single_addresses_match_scapy(mask, broadcast):
    assert ours("subnet-mask", mask) == scapy_bytes("subnet_mask", mask)
    assert ours("broadcast-address", broadcast) == scapy_bytes("broadcast_address", broadcast)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(nets, ips), min_size=1, max_size=12))
def test_classless_static_routes_match_scapy(routes):
    text = [f"{net} {router}" for net, router in routes]
    scapy = scapy_bytes("classless_static_routes", *(f"{n}:{r}" for n, r in routes))
    assert ours("classless-static-routes", text) == scapy
    assert ours("rfc3442-classless-static-routes", text) == scapy  # the ISC alias
    ms = ours("ms-classless-static-routes", text)
    assert ms[0] == 249 and ms[1:] == scapy[1:]  # 249 is the same layout


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(ips, ips), min_size=1, max_size=8))
def test_static_routes_match_scapy(pairs):
    flat = [a for pair in pairs for a in pair]
    assert ours("static-routes", [f"{d} {r}" for d, r in pairs]) == \
        scapy_bytes("static-routes", *flat)


@pytest.mark.parametrize(("name", "scapy_name", "value", "scapy_value"), [
    ("interface-mtu", "interface-mtu", 1400, 1400),
    ("interface-mtu", "interface-mtu", 65535, 65535),
    ("time-offset", "time_zone", 3600, 3600),
    ("time-offset", "time_zone", -3600, 2**32 - 3600),  # scapy types it unsigned
    ("default-ip-ttl", "default_ttl", 64, 64),
    ("ip-forwarding", "ip-forwarding", 1, 1),
    ("dhcp-lease-time", "lease_time", 7200, 7200),
])
def test_integers_match_scapy(name, scapy_name, value, scapy_value):
    assert ours(name, value) == scapy_bytes(scapy_name, scapy_value)
    assert ours(name, str(value)) == ours(name, value)


@pytest.mark.parametrize(("name", "scapy_name"), [
    ("domain-name", "domain"), ("host-name", "hostname"), ("nis-domain", "NIS_domain"),
    ("tftp-server-name", "tftp_server_name"), ("bootfile-name", "boot-file-name"),
])
def test_text_matches_scapy(name, scapy_name):
    assert ours(name, "lab.example") == scapy_bytes(scapy_name, b"lab.example")
    assert ours(name, '"lab.example"') == ours(name, "lab.example")  # dhcpd.conf quoting


def test_domain_search_is_rfc1035_names():
    assert ours("domain-search", ["eng.apple.com", "marketing.apple.com."]) == (
        b"\x77\x24" + b"\x03eng\x05apple\x03com\x00" + b"\x09marketing\x05apple\x03com\x00")
    assert o.parse("domain-search", '"a.example", "b.example"') == ["a.example", "b.example"]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("no-such-option", "1", "unknown DHCP option 'no-such-option'"),
    ("routers", "10.0.0.300", "option routers"),
    ("routers", [], "at least one address"),
    ("interface-mtu", 40, "minimum of 68"),
    ("interface-mtu", 70000, "outside 0..65535"),
    ("interface-mtu", True, "expected an integer"),
    ("classless-static-routes", ["10.0.0.1/8 10.0.0.1"], "host bits set"),
    ("classless-static-routes", ["10.0.0.0/8"], "DESTINATION ROUTER"),
    ("domain-name", "", "empty text"),
    ("domain-search", ["a..b"], "not a domain name"),
    ("ip-forwarding", "maybe", "true/false"),
    ("ntp-servers", ["10.0.0.1"] * 257, "more than 1024"),
])
def test_bad_values_name_the_option(name, value, message):
    with pytest.raises(o.OptionError, match=message):
        o.parse(name, value)


def test_assignment_and_table_use_isc_names():
    assert o.parse_assignment("interface-mtu=1400") == ("interface-mtu", 1400)
    assert o.parse_assignment("rfc3442-classless-static-routes=10.5.0.0/16 10.0.0.1") == \
        ("classless-static-routes", ["10.5.0.0/16 10.0.0.1"])
    with pytest.raises(o.OptionError, match="NAME=VALUE"):
        o.parse_assignment("interface-mtu")
    with pytest.raises(o.OptionError, match="subnet x: unknown DHCP option 'mtu'"):
        o.parse_table({"mtu": 1400}, "subnet x")
