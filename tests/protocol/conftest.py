"""Fixtures shared by the protocol tests."""

from __future__ import annotations

import pytest

from appliance.servers.tftp_session import Pump


@pytest.fixture(scope="module", params=["c-pump", "pure-python"])
def tftp_loop(request) -> dict:
    """``TftpServer`` keyword arguments for each of its two loops: with the C
    pump (``_tftp_pump.c``, built by ``scripts/setup``) and without it, so
    every TFTP protocol test covers both.  A missing build fails the C half
    rather than quietly testing the Python loop twice."""
    if request.param == "c-pump" and Pump is None:
        pytest.fail("appliance/servers/_tftp_pump.c is not built: run scripts/setup "
                    "(needs gcc and python3-dev)")
    return {"accelerate": request.param == "c-pump"}
