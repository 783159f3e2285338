"""What a packet's forwarding costs in Open vSwitch's userspace datapath: its thread's walk over the ports.

ovs-vswitchd serves every veth port of every bridge from its one main thread: it reads the ports
one after another in a fixed order (the datapath's port hash table, so the order changes with
every bring-up and whenever ports come and go), then runs the rest of its main loop, and round
again. A packet leaves a switch while the thread serves the port it came in on, and waits at the
next switch until the walk reaches that switch's input port. So each hop costs

* when the packet went straight through the link (it did not queue): the ports the thread walks
  from the input port it left to the next one, plus one main-loop round if that port comes
  earlier in the walk (a *wrap*);
* when it queued on the link (HTB releases it at any moment) or comes from a host: a random phase,
  on average a constant plus the input port's position in the walk.

A packet queues on a link with probability ≈ the link's utilization ρ. Per flow this gives three
features, linear in the coefficients :class:`~twin.calibration.correction.Correction` fits: random
hops, ports walked, wraps (expected values). Without a measured walk the expectation over a random
order of ``ports`` ports stands in. The walk itself is read from the running switch by
:mod:`mininet_topos.forwarding`. Measured: docs/emulation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.state.model import NetworkState


@dataclass(frozen=True)
class Walk:
    """Where a network's input ports sit in the thread's walk (0 = first served): ``host[node]``: the
    port of node's switch facing its host; ``link[(a, b)]``: the port of b's switch where link a→b
    arrives; ``ports``: ports walked per round, every bridge's included."""

    host: dict
    link: dict
    ports: int

    def to_dict(self) -> dict:
        return {"host": self.host, "link": {f"{a}->{b}": p for (a, b), p in self.link.items()}, "ports": self.ports}

    @classmethod
    def from_dict(cls, data: dict) -> Walk:
        link = {tuple(key.split("->", 1)): int(p) for key, p in data["link"].items()}
        return cls(host={k: int(v) for k, v in data["host"].items()}, link=link, ports=int(data["ports"]))


def walk_features(state: NetworkState, walk: Walk | None, ports: int) -> np.ndarray:
    """Per flow: expected random-phase hops, ports walked, wraps (module docstring), the walk known
    (``walk``) or, if None, averaged over random orders of ``ports`` ports (0: all zero)."""
    rho = np.clip(state.utilization(), 0.0, 1.0)
    out = np.zeros((len(state.flows), 3))
    for k, (flow, links) in enumerate(zip(state.flows, state.flow_links)):
        queued = rho[links]
        if walk is None:
            if ports:  # a random port sits at (ports - 1) / 2 on average; the next one, ports / 2 ahead
                random_hops, straight = 1 + queued.sum(), (1 - queued).sum()
                out[k] = random_hops, (ports - 1) / 2 * random_hops + ports / 2 * straight, straight / 2
            continue
        arrival = [walk.host[flow.src]] + [walk.link[(state.links[i].src, state.links[i].dst)] for i in links]
        walked, wraps = float(arrival[0]), 0.0
        for q, here, there in zip(queued, arrival, arrival[1:]):
            wrap = there <= here
            walked += q * there + (1 - q) * (there - here + wrap * walk.ports)
            wraps += (1 - q) * wrap
        out[k] = 1 + queued.sum(), walked, wraps
    return out
