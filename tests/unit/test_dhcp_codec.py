"""The struct codec against scapy, the reference: whatever one builds, the
other parses identically.

* requests: scapy builds them (property-based corpus + golden captures),
  :func:`decode` and :func:`decode_scapy` must agree field for field;
  arbitrary mutations of those bytes must give the same answer too (or, for
  option codes scapy types but the fast path leaves opaque, never raise);
* replies: :func:`encode` and :func:`encode_scapy` must produce the same
  bytes, and scapy must parse the fast encoder's output back to the options
  it was given.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP, DHCPOptions

from appliance.dhcp_options import OPTIONS
from appliance.servers import dhcp_codec as c
from appliance.servers import dhcp_codec_scapy as ref

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "dhcp"
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

ips = st.builds(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")),
                st.integers(0, 2**32 - 1))
blob = st.binary(min_size=0, max_size=40)
# options a client may send, as scapy names them, with well-formed values
request_option = st.one_of(
    st.tuples(st.just("requested_addr"), ips),
    st.tuples(st.just("server_id"), ips),
    st.tuples(st.just("hostname"), st.binary(min_size=1, max_size=30)),
    st.tuples(st.just("vendor_class_id"), blob),
    st.tuples(st.just("user_class"), blob),
    st.tuples(st.just("pxe_client_architecture"), st.binary(min_size=0, max_size=6)),
    st.tuples(st.just("pxe_client_machine_identifier"), st.binary(min_size=0, max_size=17)),
    st.tuples(st.just(c.OPT_IPXE_ENCAP), blob),
    st.tuples(st.just("max_dhcp_size"), st.integers(0, 65535)),
    st.tuples(st.just("lease_time"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("relay_agent_information"), blob),  # option 82, kept raw
    # opaque codes scapy does not type either
    st.tuples(st.sampled_from([224, 225, 250, 251]), blob),
)


@st.composite
def requests(draw):
    opts = [("message-type", draw(st.integers(1, 8)))]
    opts += draw(st.lists(request_option, max_size=8))
    opts.append("end")
    chaddr = draw(st.binary(min_size=6, max_size=6)) + draw(st.binary(min_size=10,
                                                                      max_size=10))
    pkt = BOOTP(op=1, xid=draw(st.integers(0, 2**32 - 1)), flags=draw(st.sampled_from(
        [0, 0x8000])), hops=draw(st.integers(0, 255)), ciaddr=draw(ips), giaddr=draw(ips),
        chaddr=chaddr) / DHCP(options=opts)
    return bytes(pkt) + draw(st.binary(max_size=8).map(lambda b: b"\x00" * len(b)))


@SETTINGS
@given(requests())
def test_decode_matches_scapy_on_what_scapy_builds(payload):
    assert c.decode(payload) == ref.decode_scapy(payload)


# option codes scapy decodes as fixed-size fields but the fast path does not
# name: a malformed one stops scapy's parse and not ours (documented divergence)
SCAPY_TYPED = {code for code, spec in DHCPOptions.items()
               if not isinstance(spec, str) and code not in c.REQUEST_OPTIONS}


@SETTINGS
@given(requests(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                            min_size=1, max_size=6))
def test_decode_matches_scapy_on_mutated_bytes(payload, flips):
    raw = bytearray(payload)
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    raw = bytes(raw)
    fast, want = c.decode(raw), ref.decode_scapy(raw)
    opt_codes = set(raw[c.OPTIONS_OFFSET:])
    if fast != want:
        assert opt_codes & SCAPY_TYPED, (fast, want)


@SETTINGS
@given(st.binary(max_size=600))
def test_decode_never_raises(raw):
    c.decode(raw)


def test_golden_captures_decode_identically():
    files = sorted(GOLDEN.glob("*.hex"))
    assert files
    for path in files:
        raw = bytes.fromhex(path.read_text().strip())
        assert c.decode(raw) == ref.decode_scapy(raw) is not None, path.name


reply_option = st.one_of(
    st.tuples(st.sampled_from(["subnet_mask", "broadcast_address"]), ips),
    st.tuples(st.just("router"), ips),
    st.builds(lambda a: ("name_server", *a), st.lists(ips, min_size=1, max_size=3)),
    st.tuples(st.sampled_from(["lease_time", "renewal_time", "rebinding_time"]),
              st.integers(0, 2**32 - 1)),
    st.tuples(st.sampled_from(["domain", "hostname", "error_message", "vendor_class_id",
                               "vendor_specific", "tftp_server_name", "boot-file-name",
                               "pxe_client_machine_identifier", "relay_agent_information",
                               c.OPT_IPXE_ENCAP]),
              st.binary(min_size=1, max_size=60)),
)
# what appliance.dhcp_options hands the codec: (code, payload) for any registry code
registry_option = st.tuples(st.sampled_from(sorted({s.code for s in OPTIONS.values()})),
                            st.binary(min_size=1, max_size=60))


@st.composite
def replies(draw):
    raw = draw(requests())
    req = ref.decode_scapy(raw)
    kind = draw(st.sampled_from([c.OFFER, c.ACK, c.NAK]))
    return c.DhcpReply(kind, req, yiaddr=draw(ips), siaddr=draw(ips),
                       filename=draw(st.text("abcdef/._-0123456789", max_size=140)),
                       options=draw(st.lists(reply_option, max_size=10)))


@SETTINGS
@given(replies(), ips)
def test_encode_is_byte_identical_to_scapy(reply, server):
    if reply is None or reply.request is None:
        return
    assert c.encode(reply, server) == ref.encode_scapy(reply, server)


@SETTINGS
@given(replies(), st.lists(registry_option, max_size=6), ips)
def test_registry_options_encode_byte_identically(reply, extra, server):
    reply.options += extra
    assert c.encode(reply, server) == ref.encode_scapy(reply, server)


@SETTINGS
@given(requests())
def test_option_82_is_echoed_byte_for_byte(payload):
    req = c.decode(payload)
    if req is None or req.relay_info is None:
        return
    reply = c.DhcpReply(c.ACK, req, options=[("relay_agent_information", req.relay_info)])
    assert c.encode(reply, "10.0.0.1") == ref.encode_scapy(reply, "10.0.0.1")
    echoed = ref.decode_scapy(c.encode(reply, "10.0.0.1").replace(b"\x02", b"\x01", 1))
    assert echoed is not None and echoed.relay_info == req.relay_info


def test_relay_suboptions():
    raw = b"\x01\x03abc\x02\x02\xde\xad\x09\x05xx"  # last one truncated
    assert c.relay_suboptions(raw) == {1: b"abc", 2: b"\xde\xad"}
    assert c.relay_suboptions(None) == {} and c.relay_suboptions(b"\x01") == {}


@SETTINGS
@given(replies(), ips)
def test_scapy_parses_the_fast_encoding_back(reply, server):
    pkt = BOOTP(c.encode(reply, server))
    opts = [o for o in pkt[DHCP].options if isinstance(o, tuple)]
    assert opts[0] == ("message-type", reply.msg_type)
    assert opts[1] == ("server_id", server)
    for given_opt, parsed in zip(reply.options, opts[2:], strict=True):
        name = given_opt[0]
        assert parsed[0] == (name if name != c.OPT_IPXE_ENCAP else c.OPT_IPXE_ENCAP)
        assert tuple(parsed[1:]) == tuple(given_opt[1:])
    assert pkt.yiaddr == reply.yiaddr and pkt.xid == reply.request.xid
