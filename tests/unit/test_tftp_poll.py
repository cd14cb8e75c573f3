"""The TFTP loop's poller: busy polling after transfer traffic, and its backoff."""

from __future__ import annotations

import socket

import pytest

from appliance.servers import tftp, tftp_poll
from appliance.servers.tftp_poll import SPIN_MISS_LIMIT, _Poller


class CountingPoller(_Poller):
    """The real epoll poller, counting the calls that reach it."""

    def __init__(self, spin_seconds):
        super().__init__(spin_seconds)
        self.calls, real = [], self.poll

        def poll(seconds, maxevents=-1):
            self.calls.append(seconds)
            return real(seconds, maxevents)

        self.poll = poll


@pytest.fixture()
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield a, b
    a.close()
    b.close()


def test_unarmed_wait_is_one_plain_poll(pair):
    p = CountingPoller(0.01)
    p.register(pair[0].fileno())
    assert p.wait(0.0, 8) == []
    assert p.calls == [0.0]


def test_armed_wait_returns_what_is_ready_without_sleeping(pair):
    p = CountingPoller(0.01)
    p.register(pair[0].fileno())
    pair[1].send(b"ack")
    p.spin_armed = True
    ready = p.wait(5.0, 8)  # would block 5 s if it slept
    assert [fd for fd, _ in ready] == [pair[0].fileno()]
    assert p.calls == [0.0]  # found by the first zero-timeout poll
    assert not p.spin_armed  # one spin per arming


def test_armed_wait_spins_then_sleeps(pair):
    p = CountingPoller(0.002)
    p.register(pair[0].fileno())
    p.spin_armed = True
    assert p.wait(0.0, 8) == []
    assert len(p.calls) >= 2 and all(s == 0.0 for s in p.calls)


def test_spinning_pauses_after_repeated_misses(pair, monkeypatch):
    p = CountingPoller(0.0005)
    p.register(pair[0].fileno())
    for _ in range(SPIN_MISS_LIMIT):
        p.spin_armed = True
        p.wait(0.0, 8)
    p.calls.clear()
    p.spin_armed = True
    p.wait(0.0, 8)
    assert p.calls == [0.0]  # backed off: straight to the plain poll
    # after the backoff period it spins again
    real = tftp_poll.monotonic
    monkeypatch.setattr(tftp_poll, "monotonic", lambda: real() + tftp_poll.SPIN_BACKOFF + 1)
    p.calls.clear()
    p.spin_armed = True
    p.wait(0.0, 8)
    assert len(p.calls) >= 2


def test_a_hit_resets_the_miss_count(pair):
    p = CountingPoller(0.0005)
    p.register(pair[0].fileno())
    for _ in range(SPIN_MISS_LIMIT - 1):
        p.spin_armed = True
        p.wait(0.0, 8)
    pair[1].send(b"ack")
    p.spin_armed = True
    assert p.wait(0.0, 8)
    pair[0].recv(16)
    p.spin_armed = True
    p.calls.clear()
    p.wait(0.0, 8)  # one miss, not the limit: still spinning
    assert len(p.calls) >= 2


def test_zero_budget_never_spins(pair):
    p = CountingPoller(0.0)
    p.register(pair[0].fileno())
    p.spin_armed = True
    p.wait(0.0, 8)
    assert p.calls == [0.0]


class _ReadyPoller(_Poller):
    """Reports one fd ready once, then nothing."""

    def __init__(self, fd):
        super().__init__(SPIN_SECONDS_FOR_TEST)
        self.ready = [(fd, 1)]

    def wait(self, seconds, maxevents):
        ready, self.ready = self.ready, []
        return ready


SPIN_SECONDS_FOR_TEST = 20e-6


class _QuietSession:
    def on_readable(self, buf):
        pass


@pytest.mark.parametrize("sessions", [1, tftp.SPIN_MAX_SESSIONS, tftp.SPIN_MAX_SESSIONS + 1, 50])
def test_transfer_traffic_arms_spinning_only_with_few_transfers(tmp_path, sessions):
    server = tftp.TftpServer(str(tmp_path), bind=("127.0.0.1", 0))  # not started: no I/O
    for fd in range(100, 100 + sessions):
        server._by_fd[fd] = _QuietSession()
    server._poller = _ReadyPoller(100)
    server.run_once(0.0)
    assert server._poller.spin_armed is (sessions <= tftp.SPIN_MAX_SESSIONS)


def test_nap_grows_with_transfers_up_to_the_limit():
    assert tftp_poll.nap_for(0) == 0.0
    assert tftp_poll.nap_for(20) == pytest.approx(20 * tftp_poll.NAP_PER_TRANSFER)
    assert tftp_poll.nap_for(10_000) == tftp_poll.NAP_MAX
    assert tftp_poll.nap_for(20, limit=10e-6) == 10e-6
    assert tftp_poll.nap_for(20, limit=0) == 0.0
