"""The network state: validation names the offending element; JSON round-trips."""

import json
import re

import numpy as np
import pytest

from twin.state.errors import StateError
from twin.state.model import Flow, Link, NetworkState


def line_state(**flow_kw):
    links = (Link("a", "b", 1e6), Link("b", "a", 1e6), Link("b", "c", 2e6), Link("c", "b", 2e6))
    return NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "c", 1e5, **flow_kw),))


def test_json_round_trip(tmp_path):
    state = line_state(time_dist="onoff", on_time=0.1, off_time=0.2, size_dist="binomial",
                       packet_sizes=(300.0, 1700.0), packet_size=1000.0)
    path = tmp_path / "s.json"
    state.save(path)
    again = NetworkState.load(path)
    assert again == state
    assert again.flow_path(0) == ["a", "b", "c"]


def test_explicit_paths_round_trip():
    state = line_state()
    data = state.to_dict()
    data["routing"] = {"kind": "paths", "paths": [["a", "b", "c"]]}
    again = NetworkState.from_dict(data)
    assert again.routing_kind == "paths"
    assert again.to_dict()["routing"]["paths"] == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["traffic"][0].update(dst="z"), "flow a->z: unknown node 'z'"),
        (lambda d: d["links"][0].update(capacity=0), "link a->b: capacity must be positive"),
        (lambda d: d["links"][2].update(buffer=0), "link b->c: buffer"),
        (lambda d: d["links"][1].update(buffer=2.5), "link b->a: buffer"),
        (lambda d: d["traffic"][0].update(rate=float("nan")), "flow a->c: rate"),
        (lambda d: d["traffic"][0].update(rate=-1), "flow a->c: rate"),
        (lambda d: d["links"][0].update(weight=-3), "link a->b: weight"),
        (lambda d: d["traffic"][0].update(time_dist="pareto"), "time_dist 'pareto'"),
        (lambda d: d["links"][0].update(colour="red"), "links[0]: unknown field 'colour'"),
        (lambda d: d.update(routing={"kind": "paths", "paths": [["a", "c"]]}), "hop a->c does not follow a link"),
        (lambda d: d.update(routing={"kind": "paths", "paths": [["a", "b", "a", "b", "c"]]}), "routing loop"),
        (lambda d: d.update(routing={"kind": "paths", "paths": []}), "no path for this traffic pair"),
        (lambda d: d.update(links=[l for l in d["links"] if l["dst"] != "c"]), "flow a->c: unreachable destination"),
        (lambda d: d["links"][0].update(prop_delay=1e300), "link a->b: prop_delay must be >= 0 and at most 10"),
        (lambda d: d["links"][0].update(capacity=1e-300), "link a->b: capacity must be positive, from 1 to 1e+15"),
        (lambda d: d["links"][0].update(buffer=2**63), "link a->b: buffer must be a whole number of packets from 1"),
        (lambda d: d["traffic"][0].update(rate=1e300), "flow a->c: rate must be >= 0 and at most 1e+15"),
        (lambda d: d["traffic"][0].update(rate=10**5000), "flow a->c: rate must be >= 0 and at most 1e+15, got an integer of 5001 digits"),
        (lambda d: d["traffic"][0].update(size_dist="binomial", packet_sizes=[1000, float("inf")]),
         "flow a->c: packet_sizes must be positive"),
        (lambda d: d["traffic"][0].update(size_dist="binomial", packet_sizes=5), "packet_sizes must be a list"),
        (lambda d: d.update(nodes=[None, "b", "c"]), "nodes[0]: a node name must be a non-empty string, got None"),
        (lambda d: d.update(links=[]), "the state has no links"),
        (lambda d: d["links"][0].pop("capacity"), "links[0]: missing field 'capacity'"),
        (lambda d: d["traffic"][0].pop("rate"), "traffic[0]: missing field 'rate'"),
        (lambda d: d.update(routing={"kind": "paths", "paths": [["a", "b", "c"], ["a", "c"]]}),
         "routing.paths[1]: a second path for a->c"),
        (lambda d: d.update(routing={"kind": "paths", "paths": [["a", "b", "c"], ["q", "a"]]}),
         "routing.paths[1]: unknown node 'q'"),
        (lambda d: d.update(routing={"kind": "ospf", "weights": [1]}), "routing: unknown field 'weights'"),
        (lambda d: d.update(routing={"kind": "ospf", "paths": [["a", "b", "c"]]}), "paths are given but kind is 'ospf'"),
    ],
)
def test_validation_names_the_offender(mutate, message):
    data = line_state().to_dict()
    mutate(data)
    with pytest.raises(StateError, match=re.escape(message)):
        NetworkState.from_dict(data)


def test_malformed_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": ["a", }')
    with pytest.raises(StateError, match=r"bad.json: not valid JSON \(line 1"):
        NetworkState.load(bad)
    with pytest.raises(StateError, match="cannot read"):
        NetworkState.load(tmp_path / "missing.json")


def test_transformations():
    state = line_state()
    assert state.scaled(2.0).flows[0].rate == 2e5
    np.testing.assert_allclose(state.utilization(), [0.1, 0, 0.05, 0])
    with pytest.raises(StateError, match="weights: expected 4 values"):
        state.with_weights([1, 2])
    with pytest.raises(StateError, match="unreachable"):
        state.without_links([("b", "c")])


def test_state_file_is_plain_json(tmp_path):
    line_state().save(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert set(data) == {"name", "nodes", "links", "traffic", "routing"}
