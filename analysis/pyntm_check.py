"""Agreement with pyNTM, the operators' open-source what-if tool (PyPI ``pyntm``).

pyNTM routes every demand over all its equal-cost IGP shortest paths and splits it evenly at each
hop; ndt does the same with ECMP on. :func:`compare` builds a pyNTM model from a network state
(one interface per directed link: the link's weight as IGP cost, its capacity; one demand per
flow), fails each link in pyNTM (``fail_interface``, both directions) and in ndt
(:func:`analysis.scenario.apply_failure`), and measures the per-link utilization difference in
the intact network and under every single-link failure.

The difference of a link is relative to pyNTM's utilization of it, but never to less than 1 % of
the busiest link's utilization in the intact network: a link carrying almost nothing would turn
a rounding error into a large ratio, and 1 % of the busiest link is the resolution an operator
reads a utilization map at. Utilizations are load / capacity (both bit/s), read from pyNTM's
unrounded interface traffic (its ``utilization`` property rounds to 0.01 %).

pyNTM is imported only inside the functions that run it; without it they raise NdtError.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import replace

import numpy as np

from analysis.scenario import apply_failure
from analysis.whatif import single_failures
from twin.state.errors import NdtError, shown
from twin.state.model import NetworkState

PYNTM_VERSION = "5.0.0"  # the release this comparison was written against
TOLERANCE = 0.01  # the agreement asked for: relative difference per link
FLOOR_FRACTION = 0.01  # of the busiest intact link's utilization; see the module docstring
INSTALL = f"pip install --no-deps pyntm=={PYNTM_VERSION}"  # --no-deps: pyntm pins networkx==3.1, ndt needs newer


def interfaces(state: NetworkState) -> list[dict]:
    """pyNTM's interface specs for ``state``, one per directed link (name, node, remote_node, cost,
    capacity in bit/s, circuit_id shared by the two directions). Raises NdtError for what pyNTM
    cannot model: explicit paths, a weight that is not a whole number, a link without its reverse
    or with a different capacity back (a pyNTM circuit has one capacity)."""
    if state.routing_kind != "ospf":
        raise NdtError("pyNTM routes by IGP costs; this state routes by explicit paths")
    index, circuits, out = state.link_index, {}, []
    for link in state.links:
        tag = f"link {link.src}->{link.dst}"
        if link.weight != int(link.weight):
            raise NdtError(f"{tag}: pyNTM takes whole IGP costs, the weight is {shown(link.weight)}")
        back = index.get((link.dst, link.src))
        if back is None:
            raise NdtError(f"{tag}: no link back {link.dst}->{link.src}; pyNTM models two-way circuits")
        if state.links[back].capacity != link.capacity:
            raise NdtError(f"{tag}: capacity {link.capacity:g} bit/s, {state.links[back].capacity:g} back; "
                           "a pyNTM circuit has one capacity")
        circuit = circuits.setdefault(frozenset((link.src, link.dst)), len(circuits))
        out.append({"name": _interface_name(link.src, link.dst), "node": link.src, "remote_node": link.dst,
                    "cost": int(link.weight), "capacity": link.capacity, "circuit_id": circuit})
    return out


def relative_differences(ndt: np.ndarray, pyntm: np.ndarray, floor: float) -> np.ndarray:
    """Per link |ndt − pyntm| / max(pyntm, floor); utilizations as fractions, ``floor`` > 0."""
    if not floor > 0:
        raise ValueError(f"the floor of the relative difference must be positive, got {floor!r}")
    ndt, pyntm = np.asarray(ndt, dtype=float), np.asarray(pyntm, dtype=float)
    return np.abs(ndt - pyntm) / np.maximum(pyntm, floor)


class PyntmNetwork:
    """A pyNTM model of a network state, asked for per-link utilization with at most one link failed."""

    def __init__(self, state: NetworkState):
        model_class, demand_class = _import_pyntm()
        specs = interfaces(state)
        self.model = model_class(set(), set(), set(), set())  # fresh sets: pyNTM's defaults are shared
        with contextlib.redirect_stdout(io.StringIO()):  # pyNTM prints its progress
            self.model.add_network_interfaces_from_list(specs)
            nodes = {node.name: node for node in self.model.node_objects}
            self.model.demand_objects.update(demand_class(nodes[f.src], nodes[f.dst], f.rate, f"{f.src}->{f.dst}")
                                             for f in state.flows)
            self.model.validate_model()

    def utilization(self, failed: tuple[str, str] | None = None) -> tuple[dict, int]:
        """({(src, dst): load / capacity} for the links in service, demands left unrouted), with the link
        ``failed`` (both directions) down."""
        with contextlib.redirect_stdout(io.StringIO()):
            if failed:
                self.model.fail_interface(_interface_name(*failed), failed[0])
            try:
                self.model.update_simulation()
                loads = {(i.node_object.name, i.remote_node_object.name): i.traffic / i.capacity
                         for i in self.model.interface_objects if not i.failed}
                unrouted = len(self.model.get_unrouted_demand_objects())
            finally:
                if failed:
                    self.model.unfail_interface(_interface_name(*failed), failed[0])
        return loads, unrouted


def compare(state: NetworkState) -> dict:
    """ndt (ECMP on) against pyNTM on ``state``, intact and under every single-link failure.

    Returns the topology's size, ``floor`` (the utilization below which differences are taken
    relative to it), ``cases`` ("intact", then "fail A-B" for each link; each with its largest relative difference, the link
    it is on and both utilizations there, and the demands each tool could not route),
    ``max_relative_difference`` and ``worst_case`` over all cases, and ``elapsed_s``."""
    started = time.perf_counter()
    if not any(f.rate > 0 for f in state.flows):
        raise NdtError(f"{state.name or 'the state'}: no traffic to compare")
    state = replace(state, ecmp=True)
    network = PyntmNetwork(state)
    theirs, unrouted = network.utilization()
    floor = FLOOR_FRACTION * max(theirs.values())
    cases = [_case("intact", state, [], theirs, unrouted, floor)]
    for scenario in single_failures(state, nodes=False):
        failed = scenario.failed_links[0]
        after, _, cut = apply_failure(state, scenario)
        theirs, unrouted = network.utilization(failed)
        cases.append(_case(f"fail {failed[0]}-{failed[1]}", after, cut, theirs, unrouted, floor))
    worst = max(cases, key=lambda c: c["max_relative_difference"])
    return {"topology": state.name, "nodes": len(state.nodes), "links": len(state.links),
            "demands": len(state.flows), "failures": len(cases) - 1, "floor": floor,
            "intact_max_relative_difference": cases[0]["max_relative_difference"],
            "max_relative_difference": worst["max_relative_difference"], "worst_case": worst["case"],
            "cases": cases, "elapsed_s": round(time.perf_counter() - started, 3)}


def bench_pyntm(topologies: list[str]) -> dict:
    """:func:`compare` on each topology (file or topohub key), with pyNTM's version and the limits."""
    from twin.state.topologies import load_topology

    _import_pyntm()
    states = [load_topology(key) for key in topologies]  # a bad key fails before any comparison runs
    results = [compare(s) for s in states]
    return {"pyntm_version": _installed_version(), "tolerance": TOLERANCE, "floor_fraction": FLOOR_FRACTION,
            "within_tolerance": all(r["max_relative_difference"] <= TOLERANCE for r in results),
            "topologies": results}


def _case(case: str, after: NetworkState, cut: list, theirs: dict, unrouted: int, floor: float) -> dict:
    keys = [(lk.src, lk.dst) for lk in after.links]
    down = [k for k in keys if k not in theirs]
    if down:
        raise NdtError(f"{case}: pyNTM has {down[0][0]}->{down[0][1]} down, ndt has it in service")
    ours = after.utilization()
    pyntm = np.array([theirs[k] for k in keys])
    differences = relative_differences(ours, pyntm, floor)
    worst = int(np.argmax(differences))
    return {"case": case, "max_relative_difference": float(differences[worst]),
            "worst_link": f"{keys[worst][0]}->{keys[worst][1]}", "ndt_utilization": float(ours[worst]),
            "pyntm_utilization": float(pyntm[worst]), "ndt_cut_demands": len(cut), "pyntm_unrouted_demands": unrouted}


def _interface_name(src: str, dst: str) -> str:
    return f"{src}->{dst}"


def _import_pyntm():
    """pyNTM's (Model, Demand); pyNTM before 5.0 has no unified Model."""
    try:
        from pyNTM import Demand, Model
    except ImportError:
        raise NdtError(f"the pyNTM comparison needs pyNTM {PYNTM_VERSION}: {INSTALL}") from None
    return Model, Demand


def _installed_version() -> str:
    from importlib.metadata import version

    return version("pyntm")
