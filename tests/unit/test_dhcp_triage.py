"""Overload triage: REQUESTs before DISCOVERs, the oldest DISCOVERs shed, only when behind."""

from __future__ import annotations

import logging

import pytest

from appliance.servers import dhcp_codec as c
from appliance.servers.dhcp_triage import triage


def req(kind: int, n: int) -> c.DhcpRequest:
    return c.DhcpRequest(kind, n, f"52:54:00:00:{n // 256:02x}:{n % 256:02x}")


def mixed(kinds: str) -> list[c.DhcpRequest]:
    """``"DRDI"`` -> DISCOVER, REQUEST, DISCOVER, INFORM, xid = arrival position."""
    codes = {"D": c.DISCOVER, "R": c.REQUEST, "L": c.RELEASE, "X": c.DECLINE, "I": c.INFORM}
    return [req(codes[k], i) for i, k in enumerate(kinds)]


def xids(reqs) -> list[int]:
    return [r.xid for r in reqs]


def test_not_behind_answers_everything_in_arrival_order():
    batch = mixed("DDRDRRDD" * 40)  # far over budget, but the socket was emptied
    plan = triage(batch, behind=False, budget=8, floor=2)
    assert xids(plan.handle) == list(range(len(batch))) and plan.shed == []


def test_behind_finishing_messages_first_then_newest_discovers_within_budget():
    batch = mixed("DDRDLDXDDIDR")  # D at 0 1 3 5 7 8 10; others at 2 4 6 9 11
    plan = triage(batch, behind=True, budget=8, floor=1)
    assert xids(plan.handle) == [2, 4, 6, 9, 11, 7, 8, 10]  # 5 finishing + 3 newest D
    assert xids(plan.shed) == [0, 1, 3, 5]  # the oldest DISCOVERs
    assert plan.first == 5


def test_behind_never_drops_a_request_and_keeps_the_floor_of_discovers():
    batch = mixed("R" * 50 + "D" * 10 + "R" * 50)
    plan = triage(batch, behind=True, budget=64, floor=4)
    kept = [r for r in plan.handle if r.msg_type == c.REQUEST]
    assert len(kept) == 100 and xids(kept) == sorted(xids(kept))
    assert xids(plan.handle[100:]) == [56, 57, 58, 59]  # floor: the 4 newest D
    assert len(plan.shed) == 6


@pytest.mark.parametrize("kinds", ["D" * 300, "DR" * 150, "R" * 300, "", "D" * 10])
def test_behind_partitions_the_batch(kinds):
    batch = mixed(kinds)
    plan = triage(batch, behind=True, budget=64, floor=16)
    assert sorted(xids(plan.handle) + xids(plan.shed)) == list(range(len(batch)))
    assert all(r.msg_type == c.DISCOVER for r in plan.shed)
    discovers = sum(r.msg_type == c.DISCOVER for r in plan.handle)
    assert discovers == min(kinds.count("D"), max(64 - kinds.count("R"), 16))


def test_server_batch_behind_acks_requests_and_sheds_oldest_discovers(tmp_path, caplog):
    """DhcpServer.handle_batch with the loop's signal: one log line, the counter."""
    from appliance.servers.dhcp import BUDGET, SHED_FLOOR

    from .test_dhcp import LINUX, SERVER, packet, recording_server

    server, sent, store = recording_server(tmp_path, "10.99.0.10-10.99.0.250")
    try:
        early = [f"52:54:00:00:08:{i:02x}" for i in range(40)]
        server.handle_batch([packet(LINUX, mac=m) for m in early])  # not behind: 40 OFFERs
        offers = {r.request.mac: r.yiaddr for r in sent}
        assert len(offers) == 40 and server.shed == 0
        sent.clear()
        fresh = [f"52:54:00:00:09:{i:02x}" for i in range(100)]
        batch = [packet(LINUX, mac=m) for m in fresh]  # oldest first
        batch += [packet(LINUX, c.REQUEST, mac=m, requested=offers[m], server_id=SERVER)
                  for m in early]
        with caplog.at_level(logging.INFO, logger="plowshare.dhcp"):
            server.handle_batch(batch, behind=True)
        server.writer.flush()
    finally:
        server.writer.stop()
        store.close()
    acks = [r for r in sent if r.msg_type == c.ACK]
    assert {r.request.mac: r.yiaddr for r in acks} == offers  # every REQUEST ACKed
    answered = [r.request.mac for r in sent if r.msg_type == c.OFFER]
    keep = max(BUDGET - 40, SHED_FLOOR)
    assert answered == fresh[-keep:] and server.shed == 100 - keep
    lines = [r for r in caplog.records if "shed" in r.getMessage()]
    assert len(lines) == 1 and f"{100 - keep} oldest DISCOVERs shed" in lines[0].getMessage()
