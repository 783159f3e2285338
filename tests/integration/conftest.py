"""Shared fixtures for the tests that need the real network stack."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def open_vswitch_running():
    """Open vSwitch started (as root) with no Mininet-wide cleanup, so other people's networks survive."""
    if os.geteuid() != 0:
        pytest.skip("needs root: Mininet creates network namespaces and Open vSwitch bridges")
    from mininet_topos.network import EmulationError, ensure_open_vswitch

    try:
        ensure_open_vswitch()
    except EmulationError as exc:
        pytest.fail(str(exc))
