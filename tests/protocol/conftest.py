"""Fixtures shared by the protocol tests."""

from __future__ import annotations

import pytest

from appliance.servers.tftp_session import Pump
from tests.e2e.conftest import lab_server  # noqa: F401 - the lab + server fixture, shared


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


@pytest.fixture
def served(lab_server, request):  # noqa: F811 - the fixture imported above
    """``lab_server`` with the test module's ``_config(lab)`` written to
    ``plowshare.toml``: (lab, server, config path, tmp_path); start the server
    with ``server.start(config)``."""
    lab, server, tmp_path = lab_server
    config = tmp_path / "plowshare.toml"
    config.write_text(request.module._config(lab))
    return lab, server, config, tmp_path
