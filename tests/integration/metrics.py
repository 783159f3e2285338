"""Reading a running controller's Prometheus endpoint in the tests that start one as a process."""

from __future__ import annotations

import urllib.request


def metric(metrics_port: int, series: str) -> float:
    """One series' value, named as the endpoint prints it (``name`` or ``name{labels}``): 0 when it is
    not there yet; -1 while the endpoint does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1.0
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")), 0.0)


def switches_connected(metrics_port: int) -> float:
    """ndt_switches_connected (0 before any switch set it); -1 while the endpoint does not answer."""
    return metric(metrics_port, "ndt_switches_connected")
