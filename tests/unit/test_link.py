"""The runner's link to the server: bounded waits and dead-connection probes
(runner/link.py, protocol/bodies.py ``poll_timeout``, api/runners.py)."""

from __future__ import annotations

import socket
import sys

import pytest

from corral.api.runners import lease_confirm, poll_wait
from corral.config import Settings
from corral.protocol.bodies import POLL_SLACK, poll_timeout
from corral.runner.link import DEAD_AFTER, keepalive_options


@pytest.mark.parametrize("ttl", [2.0, 3.0, 12.0, 30.0, 300.0, 600.0, 3600.0])
def test_a_long_poll_is_given_up_before_the_lease_runs_out(ttl: float) -> None:
    settings = Settings(lease_ttl=ttl)
    wait = poll_wait(settings)
    assert 0 < wait <= 120
    # The runner takes an unanswered poll for a dead connection before a job
    # leased into it would expire, with a slack no larger than POLL_SLACK.
    assert wait < poll_timeout(wait) < ttl
    assert poll_timeout(wait) - wait <= POLL_SLACK
    # A job answered into a cut waits for its confirmation less than a lease.
    assert 0 < lease_confirm(settings) <= ttl
    if ttl >= 6:
        assert lease_confirm(settings) < ttl


@pytest.mark.skipif(sys.platform != "linux", reason="the TCP_* names checked are Linux's")
def test_keepalive_sees_a_dead_peer_within_seconds() -> None:
    with socket.socket() as s:
        for level, option, value in keepalive_options():
            s.setsockopt(level, option, value)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        idle = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        probes = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + interval * probes == DEAD_AFTER <= 10
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == DEAD_AFTER * 1000
