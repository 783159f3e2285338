"""A stand-in for the running controller, as the gRPC API sees it (no switches): a square of four
switches with a diagonal, two flows, one link out of service. Shared by the API tests, the fuzz suite
and experiments/api_abuse.py."""

from __future__ import annotations

from controller.app import NetworkView
from controller.reported_delays import ReportedDelays
from controller.routing_rules import Host
from twin.state.model import Flow, Link, NetworkState

SQUARE = [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1"), ("s1", "s3")]  # a square and a diagonal


def square_state() -> NetworkState:
    links = [Link(a, b, 1e7) for x, y in SQUARE for a, b in ((x, y), (y, x))]
    return NetworkState(nodes=("s1", "s2", "s3", "s4"), links=tuple(links),
                        flows=(Flow("s1", "s3", 2e6), Flow("s2", "s4", 1e6)))


class StandIn:
    """The part of NdtController the API uses."""

    def __init__(self):
        self.state = square_state()
        self.route_version = 7
        self.applied = []
        self.reported_delays = ReportedDelays()

    def snapshot(self) -> NetworkView:
        host = Host("10.0.0.1", "00:00:00:00:00:01", "s1", 1)
        return NetworkView(state=self.state, ports={("s1", "s2"): 2}, hosts=(host,), macs=(host,),
                           down=frozenset({("s3", "s4"), ("s4", "s3")}), route_version=self.route_version,
                           switches_connected=4, last_switch_over_s=0.01)

    def apply_weights(self, weights, who):
        self.applied.append((weights, who))
        self.route_version += 1
        return 42

    def wait_for_routes(self, after_version, timeout):
        return self.route_version
