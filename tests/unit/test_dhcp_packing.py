"""Option selection (option 55), message size (option 57, overload, drops) and
RFC 3396 long options, on the pure functions and through make_reply.

Replies are read back both with scapy (which must parse what we send) and
with :func:`dhcp_packing.read_options`, which does what a client does with
option 52 and repeated codes.
"""

from __future__ import annotations

import logging
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from appliance import dhcp_options as opts
from appliance.config import ConfigError, load_config
from appliance.dhcpd_conf import parse
from appliance.dhcpd_conf.plan import Snapshot, plan
from appliance.servers import dhcp_codec as c
from appliance.servers import dhcp_codec_scapy as ref
from appliance.servers import dhcp_packing as p
from appliance.servers.dhcp import make_reply

from .test_dhcp import MAC, SERVER, dhcp_context


def request(params=None, max_size=None, extra=(), vendor=None, msg=c.DISCOVER) -> bytes:
    opts = [("message-type", msg)]
    if vendor:
        opts += [("vendor_class_id", vendor), ("pxe_client_architecture", b"\x00\x00")]
    if params is not None:
        opts.append(("param_req_list", list(params)))
    if max_size is not None:
        opts.append(("max_dhcp_size", max_size))
    opts += [*extra, "end"]
    chaddr = bytes.fromhex(MAC.replace(":", "")) + b"\0" * 10
    return bytes(BOOTP(op=1, xid=7, chaddr=chaddr) / DHCP(options=opts))


def req(params=None, max_size=None) -> c.DhcpRequest:
    return c.decode(request(params, max_size))


def codes(items) -> list[int]:
    return [c.option_code(i) for i in items]


ITEMS = [("lease_time", 3600), ("renewal_time", 1800), ("rebinding_time", 3150),
         ("subnet_mask", "255.255.255.0"), ("broadcast_address", "10.99.0.255"),
         ("router", "10.99.0.1"), ("name_server", "10.99.0.1"), (15, b"lab.example"),
         (42, b"\x0a\x63\x00\x7b"), (26, b"\x05\x78"), ("vendor_class_id", b"PXEClient"),
         ("tftp_server_name", b"10.99.0.1"), ("boot-file-name", b"undionly.kpxe")]


# -- selection -------------------------------------------------------------------
def test_without_option_55_everything_configured_goes_in_the_given_order():
    assert p.select(ITEMS, None) == ITEMS


def test_requested_options_follow_the_clients_order_after_the_lease_times():
    chosen = p.select(ITEMS, (42, 6, 15, 99, 6))
    # 51/58/59 first (ISC), then 42, 6, 15 as asked (99: we have none), then 1, 3, 60
    assert codes(chosen) == [51, 58, 59, 42, 6, 15, 1, 3, 60]


def test_always_send_adds_unrequested_options_and_66_67_need_asking():
    assert codes(p.select(ITEMS, (6,), always={26})) == [51, 58, 59, 6, 1, 3, 26, 60]
    assert 67 in codes(p.select(ITEMS, (67, 66)))


def test_a_file_name_too_long_for_the_header_keeps_option_67():
    reply = c.DhcpReply(c.OFFER, req(params=(1, 3)), filename="x" * 130,
                        options=[("boot-file-name", b"x" * 130)])
    assert codes(p.select_reply(reply).options) == [67]
    short = c.DhcpReply(c.OFFER, req(params=(1, 3)), filename="undionly.kpxe",
                        options=[("boot-file-name", b"undionly.kpxe")])
    assert p.select_reply(short).options == []


def test_empty_parameter_list_counts_as_none_and_57_is_decoded():
    assert c.decode(request(params=[])).params is None
    got = c.decode(request(params=[1, 3, 6], max_size=1400))
    assert (got.params, got.max_size) == ((1, 3, 6), 1400)
    assert got == ref.decode_scapy(request(params=[1, 3, 6], max_size=1400))


# -- size ---------------------------------------------------------------------------
@pytest.mark.parametrize(("asked", "room"), [(None, 548), (300, 548), (576, 548),
                                             (1000, 972), (9000, 1472)])
def test_limit_is_the_clients_size_within_576_and_1500(asked, room):
    assert p.limit(req(max_size=asked)) == room


def big(code: int, size: int) -> tuple[int, bytes]:
    return code, bytes([code]) * size


def test_a_reply_that_fits_is_byte_identical_to_the_plain_encoder():
    reply = c.DhcpReply(c.ACK, req(), yiaddr="10.99.0.100", options=list(ITEMS))
    assert p.encode(reply, SERVER) == c.encode(reply, SERVER)


def test_overload_moves_options_into_free_file_and_sname():
    options = [("lease_time", 3600), ("subnet_mask", "255.255.255.0"), big(6, 200),
               big(15, 100), big(119, 60), big(42, 40)]
    reply = c.DhcpReply(c.ACK, req(), yiaddr="10.99.0.100", options=options)
    data = p.encode(reply, SERVER)
    assert len(data) <= 548 < len(c.encode(reply, SERVER))
    got = p.read_options(data)
    assert got[p.OPT_OVERLOAD] == bytes([p.OVERLOAD_FILE | p.OVERLOAD_SNAME])
    for code, value in options[2:]:
        assert got[code] == value  # nothing dropped
    pkt = BOOTP(data)  # scapy parses the main area, the overload option included
    names = [o[0] for o in pkt[DHCP].options if isinstance(o, tuple)]
    assert names[:3] == ["message-type", "server_id", "dhcp-option-overload"]


def test_no_overload_over_a_boot_file_then_unrequested_then_requested_from_the_end(caplog):
    options = [("lease_time", 3600), ("subnet_mask", "255.255.255.0"),
               ("router", "10.99.0.1"), big(6, 40), big(119, 150), big(15, 150),
               big(42, 100)]
    reply = c.DhcpReply(c.ACK, req(params=(6, 119, 15)), yiaddr="10.99.0.100",
                        filename="undionly.kpxe", sname="boot", options=options)
    with caplog.at_level(logging.INFO, logger="plowshare.dhcp"):
        data = p.encode(reply, SERVER)
    got = p.read_options(data)
    assert len(data) <= 548 and p.OPT_OVERLOAD not in got
    # 42, then 3, then 15 (last asked) went; without 15 there is room for 3 again
    assert set(got) == {53, 54, 51, 1, 3, 6, 119}
    assert BOOTP(data).file.rstrip(b"\0") == b"undionly.kpxe"
    [line] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert line.startswith(MAC) and "[42, 15]" in line


def test_a_small_option_dropped_on_the_way_comes_back():
    options = [("lease_time", 3600), ("subnet_mask", "255.255.255.0"), big(6, 100),
               big(119, 150), big(121, 120), ("vendor_class_id", b"PXEClient"),
               ("vendor_specific", b"\x06\x01\x08\xff")]
    reply = c.DhcpReply(c.OFFER, req(params=(1, 6, 119, 121)), filename="undionly.kpxe",
                        options=options)
    got = p.read_options(p.encode(reply, SERVER))
    # 43 and 60 go first, then 121 (last asked): without 121, 60 and 43 fit again
    assert 121 not in got and {60, 43, 6, 119} <= set(got)


def test_never_dropped_options_survive_any_squeeze():
    options = [("lease_time", 60), ("subnet_mask", "255.255.255.0"),
               *(big(code, 290) for code in (6, 15, 42, 119))]  # 2 pieces each
    reply = c.DhcpReply(c.OFFER, req(params=(1, 51, 6)), filename="f", sname="s",
                        options=options)
    got = p.read_options(p.encode(reply, SERVER))
    assert set(got) == {53, 54, 51, 1}


items = st.one_of(
    st.tuples(st.sampled_from([6, 15, 42, 119, 121, 26, 224]),
              st.binary(min_size=1, max_size=400)),
    st.tuples(st.just("lease_time"), st.integers(60, 2**31)),
    st.tuples(st.just("subnet_mask"), st.just("255.255.0.0")),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(items, max_size=8, unique_by=lambda i: i[0]),
       st.one_of(st.none(), st.integers(0, 3000)),
       st.one_of(st.none(), st.lists(st.sampled_from([1, 6, 15, 42, 119, 121, 26]),
                                     min_size=1)),
       st.sampled_from(["", "pxelinux.0"]), st.sampled_from(["", "srv"]))
def test_every_reply_fits_and_reads_back(options, size, params, filename, sname):
    request_ = c.decode(request(params, size))
    reply = c.DhcpReply(c.OFFER, request_, filename=filename, sname=sname, options=options)
    data = p.encode(reply, SERVER)
    assert len(data) <= p.limit(request_)
    got = p.read_options(data)
    assert got[53] == bytes([c.OFFER]) and 54 in got
    for item in options:
        code = c.option_code(item)
        if code in got:  # what arrives arrives whole (RFC 3396 join)
            assert c.option_wire(item)[2:2 + 255] == got[code][:255]
        else:
            assert code not in p.NEVER_DROPPED
    BOOTP(data)  # scapy parses it


# -- RFC 3396 long options ----------------------------------------------------------
@pytest.mark.parametrize(("name", "value"), [
    ("domain-search", [f"d{i}.example.org" for i in range(30)]),            # 500 bytes
    ("classless-static-routes", [f"10.{i}.0.0/16 10.99.0.1" for i in range(60)]),  # 420
])
def test_a_long_option_is_split_and_joined_again(name, value):
    code, wire = opts.encode(name, opts.parse(name, value))
    reply = c.DhcpReply(c.ACK, req(max_size=1500), options=[(code, wire)])
    data = p.encode(reply, SERVER)
    assert data == ref.encode_scapy(reply, SERVER) == c.encode(reply, SERVER)
    assert data.count(bytes([code, 255]) + wire[:255]) == 1  # 255 bytes, then the rest
    assert p.read_options(data)[code] == wire
    if code == 119:  # scapy types 121 per instance, so cannot read a split one
        pieces = [o[1] for o in BOOTP(data)[DHCP].options if isinstance(o, tuple)
                  and o[0] == code]
        assert b"".join(pieces) == wire and len(pieces) == 2


def test_decode_concatenates_a_repeated_option_like_scapy():
    raw = request(extra=[("hostname", b"node"), ("hostname", b"-one")])
    assert c.decode(raw).hostname == "node-one" == ref.decode_scapy(raw).hostname


# -- config, importer -----------------------------------------------------------
def test_always_send_names_are_checked(tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text('[dhcp]\nalways_send = ["mtu"]\n')
    with pytest.raises(ConfigError, match="unknown DHCP option 'mtu'"):
        load_config(conf)
    conf.write_text(textwrap.dedent("""\
        [dhcp]
        always_send = ["ntp-servers", "rfc3442-classless-static-routes"]
        [[dhcp.subnet]]
        network = "10.5.0.0/24"
        always_send = ["interface-mtu"]
        """))
    cfg = load_config(conf)
    assert cfg.dhcp.always_send == ("ntp-servers", "classless-static-routes")
    assert cfg.dhcp.subnets[0].always_send == ("interface-mtu",)


def test_dhcpd_parameter_request_list_override_is_a_warning():
    result = plan(parse(textwrap.dedent("""\
        host a { hardware ethernet 52:54:00:00:00:01;
                 option dhcp-parameter-request-list 1, 3, 26; }
        """), "t.conf"), Snapshot())
    assert [h.mac for h in result.added] == ["52:54:00:00:00:01"]
    assert any("always_send" in w.message for w in result.warnings), result.warnings


# -- through make_reply ---------------------------------------------------------
@pytest.fixture
def ctx(tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(textwrap.dedent(f"""\
        [server]
        address = "{SERVER}"
        [dhcp]
        pool = "10.99.0.100-10.99.0.110"
        router = "{SERVER}"
        dns = ["{SERVER}"]
        domain = "lab.example"
        always_send = ["ntp-servers"]
        options = {{ "ntp-servers" = ["{SERVER}"], "interface-mtu" = 1400 }}
        """))
    cfg = load_config(conf, state_dir=str(tmp_path), kickstarts_dir=str(tmp_path))
    ctx, store = dhcp_context(cfg, tmp_path)
    yield ctx
    store.close()


def sent(ctx, payload: bytes) -> tuple[BOOTP, list[int]]:
    reply = make_reply(c.decode(payload), ctx)
    data = p.encode(reply, SERVER)
    return BOOTP(data), list(p.read_options(data))


def test_make_reply_sends_what_option_55_asks_plus_always_send(ctx):
    _pkt, got = sent(ctx, request(params=(15, 6, 12)))
    assert got == [53, 54, 51, 58, 59, 15, 6, 12, 1, 42, 3]  # 26, 28 not asked for
    _pkt, everything = sent(ctx, request())
    assert {26, 28, 42, 15, 6, 12} <= set(everything)


def test_pxe_client_gets_60_43_and_the_header_file_but_66_67_only_if_asked(ctx):
    pkt, got = sent(ctx, request(params=(1, 3), vendor=b"PXEClient:Arch:00000"))
    assert {60, 43} <= set(got) and not {66, 67} & set(got)
    assert pkt.file.rstrip(b"\0") and pkt.siaddr == SERVER
    _pkt, asked = sent(ctx, request(params=(1, 3, 66, 67), vendor=b"PXEClient:Arch:00000"))
    assert {60, 43, 66, 67} <= set(asked)
