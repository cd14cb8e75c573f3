"""Fixtures shared by the e2e modules."""

from __future__ import annotations

import pytest

from .appliance_proc import PlowshareProcess
from .lab import NetLab


@pytest.fixture
def lab_server(tmp_path):
    """A started lab and a (not yet started) ``plowshare serve`` in it."""
    lab = NetLab().start()
    server = PlowshareProcess(lab, tmp_path / "state", tmp_path / "plowshare.log")
    try:
        yield lab, server, tmp_path
    finally:
        server.stop()
        lab.stop()

