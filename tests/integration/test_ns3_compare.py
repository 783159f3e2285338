"""ndt's simulator against ns-3 on the same network (runs only when the optional ns3 extra is installed)."""

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.ns3_compare import compare_with_ns3, ns3_scenario, run_ns3
from twin.state.errors import NdtError


def test_scenario_has_loaded_bottlenecks():
    util = ns3_scenario().utilization()
    assert 0.8 <= util.max() <= 0.85
    assert np.sum(util >= 0.7) >= 4


def test_unsupported_traffic_is_named_before_ns3_is_needed():
    state = ns3_scenario()
    flows = list(state.flows)
    flows[2] = replace(flows[2], time_dist="cbr")
    with pytest.raises(NdtError, match="flow b->d"):
        run_ns3(state.with_flows(flows), duration=1.0)


@pytest.mark.skipif(importlib.util.find_spec("ns3") is not None, reason="ns3 is installed")
def test_missing_ns3_says_how_to_install():
    with pytest.raises(NdtError, match="pip install"):
        run_ns3(ns3_scenario(), duration=1.0)


@pytest.mark.ns3
def test_delays_and_losses_agree_with_ns3():
    result = compare_with_ns3(duration=60.0, seed=1)
    assert result["delay_mape_vs_ns3"] < 0.04
    for flow in result["flows"]:
        assert abs(flow["rel_error"]) < 0.08, flow
        assert abs(flow["loss"] - flow["loss_ns3"]) < 0.003, flow
        assert abs(flow["sent"] / flow["sent_ns3"] - 1) < 0.05, flow
    assert abs(result["packet_hops"] / result["ns3_packet_hops"] - 1) < 0.03
    assert result["speedup_vs_ns3"] > 10
