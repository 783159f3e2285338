"""Simulator benchmarks: speed on a realistic state and accuracy on a single M/M/1 link."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from twin.sim.simulator import simulate
from twin.state.model import Flow, Link, NetworkState


def mm1_state(rho: float, capacity: float = 10e6, packet_size: float = 8000.0) -> NetworkState:
    """One link, one Poisson flow with exponential packet sizes: an M/M/1 queue at load ``rho``.

    The buffer is large enough that loss is negligible.
    """
    return NetworkState(
        nodes=("a", "b"),
        links=(Link("a", "b", capacity=capacity, buffer=10**6),),
        flows=(Flow("a", "b", rate=rho * capacity, size_dist="exponential", packet_size=packet_size),),
        name=f"mm1-rho{rho}",
    )


def mm1_relative_error(rho: float = 0.8, packets: int = 2_000_000, seed: int = 1) -> float:
    """Relative error of the simulated mean delay against 1/(μ−λ) for an M/M/1 queue."""
    state = mm1_state(rho)
    flow, link = state.flows[0], state.links[0]
    mu = link.capacity / flow.packet_size
    result = simulate(state, duration=packets / (rho * mu), warmup=0.0, seed=seed)
    return float(result.delay[0] * (mu - rho * mu) - 1.0)


def with_policy(state: NetworkState, policy: str) -> NetworkState:
    """``state`` with every port scheduled by ``policy`` over three queues of its buffer (weights 60/30/10
    for wfq and drr) and the flows' ToS 0, 1, 2 in turn; unchanged for ``fifo``."""
    if policy == "fifo":
        return state
    weights = (60.0, 30.0, 10.0) if policy in ("wfq", "drr") else None
    links = tuple(replace(lk, policy=policy, queue_sizes=(lk.buffer,) * 3, queue_weights=weights) for lk in state.links)
    flows = tuple(replace(flow, tos=i % 3) for i, flow in enumerate(state.flows))
    return replace(state, links=links, flows=flows)


def bench_sim(seed: int = 0, policy: str = "fifo") -> dict:
    """Packet-hops per second on a 50-node, all-pairs state at moderate load (compilation excluded), its
    ports FIFO or scheduled by ``policy`` (see :func:`with_policy`)."""
    from twin.data.dataset import DatasetConfig, make_state

    config = DatasetConfig(min_nodes=50, max_nodes=50, min_load=0.7, max_load=0.7, real_fraction=0.0,
                           failure_fraction=0.0, traffic="poisson", seed=seed)
    state, meta = make_state(config, 0)
    state = with_policy(state, policy)
    simulate(with_policy(mm1_state(0.5), policy), duration=1.0)  # compile outside the timed run
    result = simulate(state, seed=meta["sim_seed"], packets_per_flow=2000)
    report = {
        "scenario": f"{len(state.nodes)} nodes, {len(state.links)} links, {len(state.flows)} Poisson flows, "
                    f"busiest link at 70 %",
        "policy": policy,
        "packet_hops": result.packet_hops,
        "wall_s": round(result.wall_s, 3),
        "packet_hops_per_s": round(result.packet_hops / result.wall_s),
        "mm1_rel_error": round(mm1_relative_error(), 5),
        "delivered_ratio": float(np.sum(result.delivered) / np.sum(result.sent)),
    }
    return report
