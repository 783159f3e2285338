"""Fuzzing every input ndt parses: state JSON, GML/GraphML, intent YAML, datanet directories and the gRPC
requests (a real server and client). Each input ends in a result or in one clear line naming what is
wrong (exit code 2 on the command line; a gRPC status other than UNKNOWN/INTERNAL with a bounded
message) — never a traceback, an internal error, or a change of state after a refusal.

Runs are derandomized so CI is repeatable; ``NDT_FUZZ_EXAMPLES=N`` explores N examples per target.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api.server import MAX_MESSAGE_CHARS, NdtService, pb, serve, services
from ndt.cli import main
from optimizer.intent import Intent, IntentError, parse_intent_text
from telemetry.exporter import Metrics
from telemetry.store import TelemetryStore
from tests.api_stand_in import StandIn, square_state
from twin.data.datanet_reader import read_datanet
from twin.data.datanet_writer import write_datanet
from twin.models.registry import get_predictor
from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import NetworkState
from twin.state.topologies import load_topology

EXAMPLES = int(os.environ.get("NDT_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1e300, -1e300, 1e-300, 2**63, 2**64 - 1, 65536, 0.5]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)


def one_clear_line(message: str) -> None:
    assert message and "\n" not in message.strip() and "Traceback" not in message, message
    assert len(message) < 1000, message[:200]


@st.composite
def mutated_states(draw) -> dict:
    """A valid state's JSON with one to three fields replaced by arbitrary values (or removed)."""
    data = square_state().to_dict()
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["links", "traffic", "top", "routing"]))
        if section == "top":
            data[draw(st.sampled_from(["nodes", "links", "traffic", "routing", "name", "extra"]))] = draw(json_values)
        elif section == "routing":
            data["routing"] = draw(st.sampled_from([{"kind": "paths", "paths": draw(json_values)},
                                                    {"kind": draw(json_values)}, {"kind": "ospf", "x": 1}]))
        elif isinstance(data.get(section), list) and data[section] and isinstance(data[section][0], dict):
            item = data[section][draw(st.integers(0, len(data[section]) - 1))]
            if isinstance(item, dict):
                item[draw(st.sampled_from(sorted(item) + ["bogus"]))] = draw(json_values)
    return data


@FUZZ
@given(st.one_of(mutated_states(), json_values))
def test_state_json_is_a_state_or_one_state_error(data):
    try:
        state = NetworkState.from_dict(data)
    except StateError as exc:
        one_clear_line(str(exc))
        return
    assert all(math.isfinite(lk.capacity) and lk.capacity > 0 for lk in state.links)
    assert all(math.isfinite(f.rate) and f.rate >= 0 for f in state.flows)


@FUZZ
@given(content=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda d: json.dumps(d).encode(), mutated_states()),
    st.builds(lambda d: json.dumps(d).encode("utf-16"), mutated_states()),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(900, 200_000)),
))
def test_state_check_on_any_file_exits_0_or_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    code = main(["state", "check", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        one_clear_line(err)


GML_WORDS = st.sampled_from(["graph", "[", "]", "node", "edge", "id", "label", "source", "target", "Latitude",
                             "Longitude", "LinkSpeedRaw", '"abc"', "0", "1", "2", "-1", "1e999", '"x"', "directed"])
XML = st.sampled_from(['<?xml version="1.0"?>', "<graphml>", "</graphml>", '<graph edgedefault="undirected">',
                       "</graph>", '<node id="a"/>', '<node id="b"/>', '<edge source="a" target="b"/>',
                       '<edge source="a" target="zz"/>', '<key id="d0" for="edge" attr.name="capacity" attr.type="double"/>',
                       '<data key="d0">abc</data>', "<!DOCTYPE x [<!ENTITY e 'x'>]>", "&e;"])


@FUZZ
@given(st.one_of(st.tuples(st.just(".gml"), st.lists(GML_WORDS, max_size=40).map(" ".join)),
                 st.tuples(st.just(".graphml"), st.lists(XML, max_size=12).map("".join)),
                 st.tuples(st.sampled_from([".gml", ".graphml"]), st.text(max_size=80))))
def test_topology_files_are_a_state_or_one_state_error(tmp_path, source):
    suffix, text = source
    path = tmp_path / f"topo{suffix}"
    path.write_text(text)
    try:
        load_topology(str(path))
    except StateError as exc:
        one_clear_line(str(exc))


INTENT_LINES = st.sampled_from([
    "objective:", "  minimize: mean_delay", "  minimize: happiness", "  percentile: 1e999", "constraints:",
    "  max_utilization: 0.8", "  max_utilization: -1", "  weight_bounds: [1, 20]", "  weight_bounds: [20, 1]",
    "  weight_bounds: &a [1, 2]", "  max_changed_weights: *a", "  delay_bounds:", "    - {src: s1, dst: s3, max_delay: 10ms}",
    "    - {src: s1, dst: s3, max_delay: " + "9" * 3000 + "x}", "    - {pairs: [[s1]], max_delay: 1}", "search:",
    "  max_evaluations: 10", "  max_evaluations: 0", "  time_limit_s: .inf", "  time_limit_s: 5", "!!python/object:os.system",
    "objective: {minimize: mean_delay}", "objective: {minimize: max_utilization}", "[", "- x", "\t", "a: b: c"])


@FUZZ
@given(st.one_of(st.lists(INTENT_LINES, max_size=10).map("\n".join), st.text(max_size=100)))
def test_intents_are_an_intent_or_one_intent_error(text):
    try:
        intent = parse_intent_text(text)
    except IntentError as exc:
        one_clear_line(str(exc))
        return
    assert isinstance(intent, Intent) and 1 <= intent.weight_bounds[0] < intent.weight_bounds[1] <= 65535


@pytest.fixture(scope="module")
def datanet_directory(tmp_path_factory) -> Path:
    state = square_state()
    directory = tmp_path_factory.mktemp("datanet") / "clean"
    write_datanet(directory, [(state, simulate(state, duration=20.0, seed=0))])
    return directory


@FUZZ
@given(target=st.sampled_from(["graph", "routing", "archive-member", "archive-bytes"]),
       offset=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=40))
def test_corrupted_datanet_directories_give_one_state_error(tmp_path, datanet_directory, target, offset, junk):
    directory = tmp_path / "d"
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(datanet_directory, directory)
    archive = next(directory.rglob("results_*.tar.gz"))
    if target in ("graph", "routing"):
        path = next((directory / ("graphs" if target == "graph" else "routings")).iterdir())
        data = path.read_bytes()
        at = offset % (len(data) + 1)
        path.write_bytes(data[:at] + junk + data[at + len(junk):])
    elif target == "archive-bytes":
        data = archive.read_bytes()
        at = offset % (len(data) + 1)
        archive.write_bytes(data[:at] + junk + data[at + len(junk):])
    else:  # a well-formed archive whose traffic file says nonsense
        with tarfile.open(archive, "r:gz") as tar:
            members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
        with tarfile.open(archive, "w:gz") as tar:
            for member, content in members:
                if content is not None and member.name.endswith("traffic.txt"):
                    at = offset % (len(content) + 1)
                    content = content[:at] + junk + content[at:]
                    member.size = len(content)
                tar.addfile(member, None if content is None else io.BytesIO(content))
    try:
        list(read_datanet(directory))
    except StateError as exc:
        one_clear_line(str(exc))


@pytest.fixture(scope="module")
def grpc_api():
    controller = StandIn()
    server, port = serve(NdtService(controller, TelemetryStore(), Metrics(), get_predictor, "qt"), "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield services.NdtStub(channel), controller
    channel.close()
    server.stop(None)


names = st.one_of(st.sampled_from(["s1", "s2", "s3", "s4", "", "s1\n", "x" * 500]), st.text(max_size=6))
doubles = st.one_of(st.floats(), st.sampled_from([0.0, -1.0, 1.0, 2.5, 70000.0, 1e300, 65535.0]))
links = st.builds(pb.LinkRef, src=names, dst=names)
weights = st.builds(pb.WeightChange, src=names, dst=names, weight=doubles)
requests = st.one_of(
    st.builds(lambda s: ("Predict", pb.PredictRequest(state_json=s, model="qt")),
              st.one_of(st.text(max_size=40), json_values.map(json.dumps), mutated_states().map(json.dumps))),
    st.builds(lambda m: ("Predict", pb.PredictRequest(model=m)), st.text(max_size=10)),
    st.builds(lambda w, f, t: ("WhatIf", pb.WhatIfRequest(weights=w, failed_links=f, traffic_scale=t, model="qt")),
              st.lists(weights, max_size=3), st.lists(links, max_size=3), doubles),
    st.builds(lambda w, who: ("Apply", pb.ApplyRequest(weights=w, who=who)), st.lists(weights, max_size=3), names),
    st.builds(lambda p: ("ReportMeasured", pb.MeasuredDelays(paths=p)),
              st.lists(st.builds(pb.PathDelay, src=names, dst=names, delay_s=doubles), max_size=3)),
    st.builds(lambda y, seed: ("Optimize", pb.OptimizeRequest(intent_yaml=y, seed=seed, model="qt")),
              st.lists(INTENT_LINES, max_size=6).map("\n".join), st.integers(0, 2**32 - 1)),
    st.builds(lambda i: ("StreamTelemetry", pb.StreamRequest(interval_s=i)), doubles),
    st.builds(lambda n: ("ListAnomalies", pb.AnomaliesRequest(max_suspects=n)), st.integers(0, 2**32 - 1)),
)


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 10))
@given(requests)
def test_grpc_requests_end_in_a_reply_or_a_named_status(grpc_api, call):
    stub, controller = grpc_api
    rpc, request = call
    applied = len(controller.applied)
    try:
        reply = getattr(stub, rpc)(request, timeout=30)
        if rpc == "StreamTelemetry":
            next(reply)
            reply.cancel()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED:
            return
        assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (rpc, exc.details())
        assert exc.details() and len(exc.details()) <= MAX_MESSAGE_CHARS + 1 and "Traceback" not in exc.details()
        assert len(controller.applied) == applied, "a refused request changed the routing"
    assert stub.GetStatus(pb.Empty(), timeout=5).switches_total == 4
