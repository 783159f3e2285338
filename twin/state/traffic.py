"""Traffic matrices: random all-pairs demand and scaling to a target link load."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from twin.state.errors import StateError
from twin.state.model import SIZE_DISTS, TIME_DISTS, Flow, NetworkState


def random_flows(nodes, rng: np.random.Generator, mixed: bool = True, packet_size: float = 8000.0) -> list[Flow]:
    """One flow per ordered node pair, relative rates uniform in [0.1, 1] bit/s (scale them afterwards).

    With ``mixed`` each flow draws its time model (Poisson, CBR, ON/OFF with
    exponential periods) and size model (deterministic, exponential, binomial
    with sizes 0.3× and 1.7× the mean); otherwise all are Poisson, deterministic size.
    """
    flows = []
    for src in nodes:
        for dst in nodes:
            if src == dst:
                continue
            rate = float(rng.uniform(0.1, 1.0))
            if not mixed:
                flows.append(Flow(src, dst, rate=rate, packet_size=packet_size))
                continue
            time_dist = TIME_DISTS[rng.integers(len(TIME_DISTS))]
            size_dist = SIZE_DISTS[rng.integers(len(SIZE_DISTS))]
            extra = {}
            if time_dist == "onoff":
                extra = {"on_time": float(rng.uniform(0.5, 2.0)), "off_time": float(rng.uniform(0.5, 2.0))}
            if size_dist == "binomial":
                extra["packet_sizes"] = (0.3 * packet_size, 1.7 * packet_size)
            flows.append(Flow(src, dst, rate=rate, time_dist=time_dist, size_dist=size_dist,
                              packet_size=packet_size, **extra))
    return flows


def scale_to_utilization(state: NetworkState, target: float) -> NetworkState:
    """Scale every rate so the most loaded link carries ``target`` × its capacity."""
    peak = float(state.utilization().max()) if state.flows else 0.0
    if peak <= 0:
        raise StateError("the traffic matrix is empty or all zero: nothing to scale")
    return state.scaled(target / peak)


def set_onoff_cycles(state: NetworkState, packets_per_cycle: float = 20.0) -> NetworkState:
    """Stretch each ON/OFF flow's periods so one ON+OFF cycle lasts ``packets_per_cycle`` mean packet intervals.

    The ON fraction is kept; call this after the rates are final.
    """
    flows = []
    for flow in state.flows:
        if flow.time_dist == "onoff" and flow.rate > 0:
            cycle = packets_per_cycle * flow.packet_size / flow.rate
            on_fraction = flow.on_time / (flow.on_time + flow.off_time)
            flow = replace(flow, on_time=cycle * on_fraction, off_time=cycle * (1 - on_fraction))
        flows.append(flow)
    return state.with_flows(flows)


def shift_traffic(state: NetworkState, destination: str, factor: float) -> NetworkState:
    """The traffic shifted towards ``destination``: every flow to it multiplied by ``factor``."""
    if destination not in state.node_index:
        raise StateError(f"traffic shift: node {destination!r} is not in the topology")
    if not factor > 0:
        raise StateError(f"traffic shift towards {destination}: factor must be positive, got {factor}")
    return state.with_flows(replace(f, rate=f.rate * factor) if f.dst == destination else f for f in state.flows)
