"""Router Advertisement encoding and the advertiser's loop (no sockets)."""

from __future__ import annotations

import logging
import struct
import threading
import time

import pytest
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr

from appliance.servers import ra as ra_mod
from appliance.servers.ra import RouterAdvertiser, build_ra, is_valid_rs

MAC = bytes.fromhex("525400123456")


def test_build_ra_fields() -> None:
    raw = build_ra(MAC)
    assert len(raw) == 16 + 8
    pkt = ICMPv6ND_RA(raw)
    assert pkt.type == 134
    assert pkt.code == 0
    assert pkt.chlim == 64
    assert pkt.M == 0 and pkt.O == 0 and pkt.H == 0
    assert pkt.prf == 0
    assert pkt.routerlifetime == 0
    assert pkt.reachabletime == 0
    assert pkt.retranstimer == 0
    opt = pkt[ICMPv6NDOptSrcLLAddr]
    assert opt.type == 1
    assert opt.len == 1
    assert opt.lladdr == "52:54:00:12:34:56"
    assert not opt.payload  # nothing after the option


def test_build_ra_checksum_left_to_kernel() -> None:
    assert build_ra(MAC)[2:4] == b"\x00\x00"


def test_build_ra_without_link_layer_address() -> None:
    raw = build_ra(b"")
    assert len(raw) == 16
    pkt = ICMPv6ND_RA(raw)
    assert pkt.routerlifetime == 0
    assert ICMPv6NDOptSrcLLAddr not in pkt


def test_build_ra_long_link_layer_address_is_padded() -> None:
    raw = build_ra(bytes(range(20)))  # e.g. InfiniBand: 2 + 20 octets -> 3 units
    assert len(raw) == 16 + 24
    assert raw[16:18] == b"\x01\x03"
    assert raw[18:38] == bytes(range(20))
    assert raw[38:] == b"\x00\x00"


def test_build_ra_rejects_str() -> None:
    with pytest.raises(TypeError):
        build_ra("52:54:00:12:34:56")  # type: ignore[arg-type]


def test_is_valid_rs() -> None:
    rs = bytes(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr="52:54:00:12:34:56"))
    assert is_valid_rs(rs, 255, "fe80::1")
    assert not is_valid_rs(rs, 64, "fe80::1")  # forwarded: RFC 4861 6.1.1
    assert not is_valid_rs(rs, None, "fe80::1")
    assert not is_valid_rs(rs, 255, "::")  # unspecified source must not carry SLLAO
    assert is_valid_rs(bytes(ICMPv6ND_RS()), 255, "::")
    assert not is_valid_rs(rs[:6], 255, "fe80::1")
    assert not is_valid_rs(rs[:8] + b"\x01\x00" + bytes(6), 255, "fe80::1")  # zero length
    assert not is_valid_rs(rs[:8] + b"\x01\x02" + bytes(6), 255, "fe80::1")  # overruns
    assert not is_valid_rs(build_ra(MAC), 255, "fe80::1")
    wrong_code = bytearray(rs)
    wrong_code[1] = 1
    assert not is_valid_rs(bytes(wrong_code), 255, "fe80::1")


def test_constructor_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("I/O in the constructor")

    monkeypatch.setattr(ra_mod.socket, "socket", boom)
    monkeypatch.setattr(ra_mod, "interface_mac", boom)
    adv = RouterAdvertiser("does-not-exist0", interval=1.0)
    assert not adv.running


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        RouterAdvertiser("", 1.0)
    with pytest.raises(ValueError):
        RouterAdvertiser("lo", 0)


def test_sends_at_once_then_periodically_and_stops_promptly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ra_mod, "interface_mac", lambda _ifname: MAC)
    sent: list[tuple[float, bytes]] = []
    first = threading.Event()

    def sender(packet: bytes) -> None:
        sent.append((time.monotonic(), packet))
        first.set()

    adv = RouterAdvertiser("prov0", interval=0.1, sender=sender)
    t0 = time.monotonic()
    adv.start()
    try:
        assert first.wait(1.0)
        assert sent[0][0] - t0 < 0.5  # right away
        time.sleep(0.45)
    finally:
        adv.stop()
    assert not adv.running
    assert 3 <= len(sent) <= 8
    assert all(packet == build_ra(MAC) for _, packet in sent)
    assert adv.ra_sent == len(sent)


def test_stop_does_not_wait_for_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ra_mod, "interface_mac", lambda _ifname: MAC)
    sent = threading.Event()
    adv = RouterAdvertiser("prov0", interval=60.0, sender=lambda _p: sent.set())
    adv.start()
    assert sent.wait(1.0)
    t0 = time.monotonic()
    adv.stop()
    assert time.monotonic() - t0 < 2.0  # the interval is 60 s: stop did not wait for it
    assert not adv.running


def test_start_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ra_mod, "interface_mac", lambda _ifname: MAC)
    adv = RouterAdvertiser("prov0", interval=60.0, sender=lambda _p: None)
    adv.start()
    try:
        with pytest.raises(RuntimeError):
            adv.start()
    finally:
        adv.stop()
    adv.stop()  # idempotent


def test_sender_errors_never_kill_the_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ra_mod, "interface_mac", lambda _ifname: MAC)
    monkeypatch.setattr(ra_mod, "RETRY_DELAY", 0.05)
    calls: list[bytes] = []
    recovered = threading.Event()

    def flaky(packet: bytes) -> None:
        calls.append(packet)
        if len(calls) <= 3:
            raise OSError(101, "Network is unreachable")
        recovered.set()

    caplog.set_level(logging.DEBUG, logger="plowshare.ra")
    adv = RouterAdvertiser("prov0", interval=0.05, sender=flaky)
    adv.start()
    try:
        assert recovered.wait(2.0)
        assert adv.running
    finally:
        adv.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the same error is logged once, not every round
    assert "Network is unreachable" in warnings[0].getMessage()
    assert any("resumed" in r.getMessage() for r in caplog.records)
    starts = [r for r in caplog.records if r.levelno == logging.INFO and "sending" in r.getMessage()]
    assert len(starts) == 1


def test_link_local_address_parsing(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(
        "fe800000000000000000000000000001 05 40 20 c0 prov0\n"  # tentative
        "fd000000000000000000000000000002 05 40 00 80 prov0\n"  # global
        "fe80000000000000505400fffe123456 06 40 20 80 prov1\n"
    )
    real_path = ra_mod.Path

    def fake_path(*parts: str):
        if parts == ("/proc/net/if_inet6",):
            return table
        return real_path(*parts)

    monkeypatch.setattr(ra_mod, "Path", fake_path)
    assert ra_mod.link_local_address("prov0") is None
    assert ra_mod.link_local_address("prov1") == "fe80::5054:ff:fe12:3456"
    assert ra_mod.link_local_address("nope") is None


def test_icmp6_filter_passes_only_rs() -> None:
    words = struct.unpack("=8I", ra_mod._icmp6_filter_pass_only(133))
    for icmp_type in range(256):
        blocked = bool(words[icmp_type >> 5] & (1 << (icmp_type & 31)))
        assert blocked == (icmp_type != 133)
