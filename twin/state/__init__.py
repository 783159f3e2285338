"""The network state, the ground floor every other part of ndt builds on: the validated model
(topology, traffic, routing), OSPF routing, topologies, traffic generators, JSON I/O and the
project's error type."""

from twin.state.errors import NdtError, StateError
from twin.state.model import Flow, Link, NetworkState

__all__ = ["NdtError", "StateError", "Flow", "Link", "NetworkState"]
