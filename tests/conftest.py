"""What each marker needs, checked once: ``root`` (Mininet namespaces, Open vSwitch bridges),
``prometheus`` (the Prometheus server binary, which scripts/install-system-deps.sh installs as
root), ``ns3`` (the optional ns3 extra). A test whose need is missing is skipped with the reason."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _missing(marker: str) -> str | None:
    if marker == "root" and os.geteuid() != 0:
        return "needs root: Mininet creates network namespaces and Open vSwitch bridges"
    if marker == "prometheus" and shutil.which("prometheus") is None:
        return "the prometheus server is not installed (scripts/install-system-deps.sh installs it as root)"
    if marker == "ns3" and importlib.util.find_spec("ns3") is None:
        return "the optional ns3 extra is not installed: pip install 'ndt[ns3]'"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in ("root", "prometheus", "ns3"):
            reason = item.get_closest_marker(marker) and _missing(marker)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
