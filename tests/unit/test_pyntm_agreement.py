"""Agreement with pyNTM: ndt's per-link utilization (ECMP on) against pyNTM's, intact and under every
single-link failure (analysis/pyntm_check.py). The comparisons need pyNTM and are skipped without it;
the pure parts are tested either way."""

import sys
from dataclasses import replace

import numpy as np
import pytest

from analysis.pyntm_check import (FLOOR_FRACTION, TOLERANCE, PyntmNetwork, compare, interfaces,
                                  relative_differences)
from twin.state.errors import NdtError
from twin.state.model import Flow, Link, NetworkState
from twin.state.topologies import load_topology


def square(changes: dict | None = None) -> NetworkState:
    """a-b-c-d-a, both directions, 1 Mb/s; a→c has two equal-cost paths. ``changes`` maps (src, dst) to the
    link replacing it, or None to drop it."""
    pairs = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]
    links = {(s, d): Link(s, d, 1e6) for p in pairs for s, d in (p, p[::-1])}
    for (src, dst), link in (changes or {}).items():
        if link is None:
            del links[(src, dst)]
        else:
            links[(src, dst)] = link
    return NetworkState(nodes=tuple("abcd"), links=tuple(links.values()), flows=(Flow("a", "c", 4e5),))


def needs_pyntm():
    pytest.importorskip("pyNTM", reason="pyNTM is not installed: pip install --no-deps pyntm==5.0.0")


def test_relative_difference_is_taken_against_the_floor_on_quiet_links():
    ndt = np.array([0.50, 0.0002, 0.30])
    pyntm = np.array([0.40, 0.0001, 0.30])
    assert np.allclose(relative_differences(ndt, pyntm, floor=0.01), [0.25, 0.01, 0.0])
    with pytest.raises(ValueError, match="positive"):
        relative_differences(ndt, pyntm, floor=0.0)


def test_interfaces_pair_the_two_directions_into_one_circuit():
    specs = interfaces(square())
    assert len(specs) == 8
    circuit = {(s["node"], s["remote_node"]): s["circuit_id"] for s in specs}
    assert circuit[("a", "b")] == circuit[("b", "a")] != circuit[("b", "c")]
    assert {s["cost"] for s in specs} == {1} and {s["capacity"] for s in specs} == {1e6}


@pytest.mark.parametrize("changes, message", [
    ({("a", "b"): Link("a", "b", 1e6, weight=1.5)}, "a->b: pyNTM takes whole IGP costs"),
    ({("b", "a"): None}, "a->b: no link back b->a"),
    ({("c", "d"): Link("c", "d", 2e6)}, "c->d: capacity 2e\\+06 bit/s, 1e\\+06 back"),
])
def test_what_pyntm_cannot_model_is_refused_naming_the_link(changes, message):
    with pytest.raises(NdtError, match=message):
        interfaces(square(changes))


def test_explicit_paths_are_refused():
    state = square()
    routed = replace(state, routing_kind="paths", paths={("a", "c"): ("a", "b", "c")})
    with pytest.raises(NdtError, match="explicit paths"):
        interfaces(routed)


def test_without_pyntm_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyNTM", None)  # makes the import fail
    with pytest.raises(NdtError, match=r"pip install --no-deps pyntm==5\.0\.0"):
        PyntmNetwork(square())


def test_abilene_agrees_with_pyntm_intact_and_under_every_single_link_failure():
    needs_pyntm()
    report = compare(load_topology("sndlib/abilene"))
    cases = report["cases"]
    assert report["failures"] == 15 and len(cases) == 16 and cases[0]["case"] == "intact"
    worst = max(cases, key=lambda c: c["max_relative_difference"])
    assert worst["max_relative_difference"] <= TOLERANCE, worst
    assert all(c["ndt_cut_demands"] == c["pyntm_unrouted_demands"] for c in cases)
    assert any(c["ndt_cut_demands"] > 0 for c in cases)  # a leaf's link: the cut traffic is dropped on both sides


def test_agreement_holds_with_unequal_weights_per_direction():
    needs_pyntm()
    state = load_topology("sndlib/abilene")
    weights = np.random.default_rng(7).integers(1, 4, len(state.links)).astype(float)
    report = compare(state.with_weights(weights))
    worst = max(report["cases"], key=lambda c: c["max_relative_difference"])
    assert worst["max_relative_difference"] <= TOLERANCE, worst


def test_the_measure_tells_single_path_routing_from_ecmp():
    """ndt without ECMP sends each flow down one of its equal-cost paths: pyNTM's even split is far from it."""
    needs_pyntm()
    state = load_topology("sndlib/abilene")
    theirs, _ = PyntmNetwork(state).utilization()
    pyntm = np.array([theirs[(lk.src, lk.dst)] for lk in state.links])
    single_path = replace(state, ecmp=False).utilization()
    assert relative_differences(single_path, pyntm, FLOOR_FRACTION * pyntm.max()).max() > TOLERANCE
