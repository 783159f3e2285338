"""The BNN-UPC datanet format: reading both routing variants, writing, round trips, errors, real samples."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from twin.data.datanet_reader import read_datanet
from twin.data.datanet_writer import write_datanet
from twin.data.reference import compare_with_reference
from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import Flow, Link, NetworkState

DATASETS = Path(__file__).resolve().parents[3] / "shared/datasets"
GNNET = DATASETS / "gnnet2021"

# A triangle 0-1-2 with both directions; (src, dst, port, bandwidth bit/s).
EDGES = [(0, 1, 0, 10000), (0, 2, 1, 20000), (1, 0, 0, 10000), (1, 2, 1, 10000), (2, 0, 0, 20000), (2, 1, 1, 10000)]
# Output port towards each destination: 0 reaches 1 through 2 (ports 1 then 1), the rest go direct.
PORT_MATRIX = "-1,1,1,\n0,-1,1,\n0,1,-1,\n"
PATH_LINES = "0;2;1\n0;2\n1;0\n1;2\n2;0\n2;1\n"
POISSON = "0,{rate},{pkts},10,2,1000,300,1700,0"
RESULT = "{bw},{gen},{drop},{delay},-2.3,0.01,0.02,{p50},0.2,{p90},{jitter}"


def _graph_gml(queue: str = "32", edges=EDGES) -> str:
    out = ["graph [", "  directed 1", "  multigraph 1"]
    for i in range(3):
        out += ["  node [", f"    id {i}", f'    label "{i}"', f'    queueSizes "{queue}"', "  ]"]
    for src, dst, port, bw in edges:
        out += ["  edge [", f"    source {src}", f"    target {dst}", "    key 0", f"    port {port}",
                f"    bandwidth {bw}.0", "  ]"]
    return "\n".join(out + ["]"]) + "\n"


def _sample_lines(sample_id: int, stable: bool = True, zero_gen_pair=None) -> dict[str, str]:
    """One line per result file for the triangle: every pair sends 1000 bit/s."""
    traffic, results, usage = [], [], []
    for k in range(9):
        src, dst = divmod(k, 3)
        if src == dst:
            traffic.append("-1,0,-1,0,0")
            results.append("0,0,0,-1,-1,-1,-1,-1,-1,-1,-1")
            continue
        traffic.append(POISSON.format(rate=1000 + k, pkts=(1000 + k) / 1000))
        gen = 0 if (src, dst) == zero_gen_pair else 1.0 + k / 100
        results.append(RESULT.format(bw=1.0, gen=gen, drop=0.01 * k, delay=0.1 + k / 100, p50=0.09, p90=0.3,
                                     jitter=0.004))
    for k in range(9):
        src, dst = divmod(k, 3)
        usage.append("-1" if src == dst else f"{0.1 * (k + 1):.6f},0,1000,{0.1 * (k + 1):.6f},0,1.5,7,1000")
    return {
        "input_files.txt": f"{sample_id};graph-3.txt;Routing-3.txt",
        "traffic.txt": "2000|" + ";".join(traffic),
        "simulationResults.txt": "10,0.1,0.2|" + ";".join(results) + ";",
        "linkUsage.txt": ";".join(usage) + ";",
        "stability.txt": f"5000;0.00095;{'OK' if stable else 'UNSTABLE'};Mem(KB):1;Time(s):1",
    }


def _make_datanet(root: Path, routing: str, samples: list[dict], graph: str | None = None,
                  drop_lines: dict | None = None, skip_file: str | None = None) -> Path:
    """A datanet directory written by hand from the format description (not by write_datanet)."""
    (root / "graphs").mkdir(parents=True)
    (root / "routings").mkdir()
    (root / "graphs/graph-3.txt").write_text(graph or _graph_gml())
    (root / "routings/Routing-3.txt").write_text(routing)
    folder = "results_3_1000-2000_0_9"
    with tarfile.open(root / f"{folder}.tar.gz", "w:gz") as tar:
        for name in samples[0]:
            if name == skip_file:
                continue
            lines = [s[name] for s in samples]
            lines = lines[: len(lines) - (drop_lines or {}).get(name, 0)]
            data = "".join(line + "\n" for line in lines).encode()
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return root


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("routing", [PATH_LINES, PORT_MATRIX], ids=["path-lines", "port-matrix"])
def test_reads_both_routing_variants(tmp_path, routing):
    root = _make_datanet(tmp_path / "dn", routing, [_sample_lines(0), _sample_lines(1)])
    samples = list(read_datanet(root))
    assert len(samples) == 2
    state = samples[0].state
    assert state.nodes == ("0", "1", "2")
    assert [(lk.src, lk.dst, lk.capacity) for lk in state.links] == [(str(s), str(d), float(b)) for s, d, _, b in EDGES]
    assert all(lk.buffer == 31 and lk.prop_delay == 0 for lk in state.links)
    assert [(f.src, f.dst) for f in state.flows] == [("0", "1"), ("0", "2"), ("1", "0"), ("1", "2"), ("2", "0"), ("2", "1")]
    assert state.flow_path(0) == ["0", "2", "1"]
    assert state.flow_path(5) == ["2", "1"]
    flow = state.flows[0]
    assert (flow.rate, flow.time_dist, flow.size_dist, flow.packet_size, flow.packet_sizes) == (
        1001.0, "poisson", "binomial", 1000.0, (300.0, 1700.0))
    sample = samples[0]
    np.testing.assert_allclose(sample.delay, [0.11, 0.12, 0.13, 0.15, 0.16, 0.17])
    np.testing.assert_allclose(sample.loss, np.array([1, 2, 3, 5, 6, 7]) * 0.01 / (1 + np.array([1, 2, 3, 5, 6, 7]) / 100))
    np.testing.assert_allclose(sample.packets, (1 + np.array([1, 2, 3, 5, 6, 7]) / 100) * 5000)
    assert sample.sim_time == 5000
    np.testing.assert_allclose(sample.link_utilization, [0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    assert sample.valid.all()


def test_skips_unstable_samples_and_marks_unusable_pairs(tmp_path):
    lines = [_sample_lines(0, stable=False), _sample_lines(1, zero_gen_pair=(1, 2))]
    samples = list(read_datanet(_make_datanet(tmp_path / "dn", PATH_LINES, lines)))
    assert len(samples) == 1
    sample = samples[0]
    assert sample.source.endswith("(sample 1)")
    pair = [(f.src, f.dst) for f in sample.state.flows].index(("1", "2"))
    assert len(sample.state.flows) == 6, "an unusable pair keeps its traffic in the state"
    assert not sample.valid[pair] and sample.valid.sum() == 5
    assert np.isnan(sample.delay[pair]) and np.isnan(sample.loss[pair])


def test_samples_stream_archive_by_archive(tmp_path):
    root = _make_datanet(tmp_path / "dn", PATH_LINES, [_sample_lines(i) for i in range(3)])
    (root / "results_zz_1-2_0_0.tar.gz").write_bytes(b"not a gzip file")
    stream = read_datanet(root)
    assert [next(stream).source.endswith(f"(sample {i})") for i in range(3)] == [True] * 3
    with pytest.raises(StateError, match=r"results_zz_1-2_0_0\.tar\.gz: truncated or corrupt archive"):
        next(stream)


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(drop_lines={"traffic.txt": 1}), r"traffic\.txt ends at line 1 .*truncated"),
        (dict(skip_file="stability.txt"), r"no stability\.txt"),
        (dict(graph="graph [ node [ id 0 "), r"graph-3\.txt: not a readable GML file"),
        (dict(graph=_graph_gml(queue="32,16")), r"node 0: a FIFO node has one queue, queueSizes .32,16. lists 2"),
        (dict(routing="-1,1,1,\n1,-1,1,\n1,1,-1,\n"), r"route 1->0: routing loop at node 1"),
        (dict(routing="-1,1,5,\n0,-1,1,\n0,1,-1,\n"), r"route 0->2: node 0 has no output port 5"),
        (dict(routing="0;2;1\n0;x\n"), r"Routing-3\.txt line 2: a path is node ids"),
        (dict(routing="0;1\n0;2\n"), r"path 1->0: the routing has no path"),
    ],
    ids=["truncated-file", "missing-file", "bad-gml", "qos-queues", "port-loop", "bad-port", "bad-path", "missing-path"],
)
def test_malformed_input_names_the_file(tmp_path, change, message):
    change = dict(change)
    routing = change.pop("routing", PATH_LINES)
    root = _make_datanet(tmp_path / "dn", routing, [_sample_lines(0), _sample_lines(1)], **change)
    with pytest.raises(StateError, match=message):
        list(read_datanet(root))


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("traffic.txt", "2000|" + ";".join(["-1,0,-1,0,0"] * 8), r"line 2 \(sample 1\): traffic\.txt: expected 9 cells"),
        ("traffic.txt", "2000|-1,0,-1,0,0;" + ";".join(["2,1000,1,2,0,1000,0"] * 8),
         r"pair 0->1: time distribution 2 \(uniform\) is not supported"),
        ("simulationResults.txt", "1,2,3|" + ";".join(["0,1,0,abc,0,0,0,0,0,0,0"] * 9),
         r"simulationResults\.txt: pair 0->1: 'abc' is not a number"),
        ("linkUsage.txt", ";".join(["0.5,0,1000,0.5,0,1,2,1000"] * 9), r"linkUsage\.txt: statistics for 0->0"),
        ("stability.txt", "soon;0;OK;", r"stability\.txt simulated time: 'soon' is not a number"),
    ],
    ids=["cell-count", "unsupported-time", "not-a-number", "phantom-link", "bad-sim-time"],
)
def test_malformed_line_names_file_line_and_sample(tmp_path, name, bad, message):
    broken = _sample_lines(1)
    broken[name] = bad
    root = _make_datanet(tmp_path / "dn", PATH_LINES, [_sample_lines(0), broken])
    with pytest.raises(StateError, match=message):
        list(read_datanet(root))


def test_corrupt_archive(tmp_path):
    root = _make_datanet(tmp_path / "dn", PATH_LINES, [_sample_lines(i) for i in range(40)])
    archive = next(root.glob("results_*.tar.gz"))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(StateError, match=r"results_3_1000-2000_0_9\.tar\.gz: .*truncated"):
        list(read_datanet(root))


def test_not_a_datanet_directory(tmp_path):
    with pytest.raises(StateError, match=r"no graphs/ folder"):
        list(read_datanet(tmp_path))


# ----------------------------------------------------------------------------- writing


def _ring_state() -> NetworkState:
    """Five nodes in a bidirectional ring with a chord, mixed traffic, OSPF routing."""
    pairs = [(i, (i + 1) % 5) for i in range(5)] + [(0, 2)]
    links = []
    for a, b in pairs:
        for s, d in ((a, b), (b, a)):
            links.append(Link(src=str(s), dst=str(d), capacity=20000.0 + 1000 * s, buffer=8 + s, weight=1.0 + (s == 0)))
    flows = []
    for s in range(5):
        for d in range(5):
            if s == d:
                continue
            kind = (s + d) % 3
            if kind == 0:
                flows.append(Flow(str(s), str(d), rate=900.0 + 10 * s, packet_size=1000.0, size_dist="binomial",
                                  packet_sizes=(300.0, 1700.0)))
            elif kind == 1:
                flows.append(Flow(str(s), str(d), rate=700.0 + d, time_dist="cbr", packet_size=800.0))
            else:
                flows.append(Flow(str(s), str(d), rate=600.0, time_dist="onoff", on_time=2.0, off_time=3.0,
                                  packet_size=1200.0))
    return NetworkState(nodes=tuple(str(i) for i in range(5)), links=tuple(links), flows=tuple(flows), name="ring")


def test_write_then_read_round_trip(tmp_path):
    state = _ring_state()
    heavy = state.scaled(1.1 / state.utilization().max())  # the busiest link overloaded: drops
    results = [simulate(state, duration=300.0, seed=1), simulate(heavy, duration=300.0, seed=2)]
    assert results[1].dropped.sum() > 0
    write_datanet(tmp_path / "out", [(state, results[0]), (heavy, results[1])])
    back = list(read_datanet(tmp_path / "out"))
    assert len(back) == 2
    graphs = list((tmp_path / "out/graphs").iterdir())
    assert len(graphs) == 1, "the shared topology is written once"
    # BNN-UPC's reader keys nodes by integer label
    assert sorted(nx.read_gml(graphs[0], destringizer=int).nodes) == list(range(5))
    for original, result, sample in zip((state, heavy), results, back):
        got = sample.state
        assert got.nodes == original.nodes
        assert sorted(got.links, key=str) == sorted(original.links, key=str)
        order = [got.link_index[(lk.src, lk.dst)] for lk in original.links]
        assert len(got.flows) == len(original.flows)
        for a, b in zip(got.flows, original.flows):
            assert (a.src, a.dst, a.time_dist, a.size_dist, a.packet_sizes) == (b.src, b.dst, b.time_dist, b.size_dist,
                                                                               b.packet_sizes)
            assert (a.on_time is None) == (b.on_time is None) and (a.off_time is None) == (b.off_time is None)
            for name in ("rate", "packet_size", "on_time", "off_time"):
                if getattr(b, name) is not None:
                    assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-8)
        assert [got.flow_path(i) for i in range(len(got.flows))] == [
            original.flow_path(i) for i in range(len(original.flows))]
        assert sample.valid.all()
        np.testing.assert_allclose(sample.delay, result.delay, rtol=1e-8)
        np.testing.assert_allclose(sample.jitter, result.jitter, rtol=1e-8)
        np.testing.assert_allclose(sample.loss, result.loss, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(sample.packets, result.sent, rtol=1e-7)
        np.testing.assert_allclose(sample.p90, result.p90, rtol=1e-8)
        np.testing.assert_allclose(sample.link_utilization[order], result.utilization, rtol=1e-8)
        np.testing.assert_allclose(sample.link_occupancy[order], result.occupancy + result.utilization, rtol=1e-8)


def test_write_refuses_what_the_format_cannot_say(tmp_path):
    state = _ring_state()
    result = simulate(state, duration=50.0, seed=0)
    delayed = NetworkState(nodes=state.nodes, flows=state.flows, name="delayed",
                           links=tuple(Link(lk.src, lk.dst, lk.capacity, lk.buffer, prop_delay=0.001, weight=lk.weight)
                                       for lk in state.links))
    with pytest.raises(StateError, match=r"link 0->1 has a propagation delay"):
        write_datanet(tmp_path / "a", [(delayed, simulate(delayed, duration=50.0, seed=0))])
    mixed = NetworkState(nodes=state.nodes, flows=state.flows, name="mixed",
                         links=(Link("0", "1", 1e4, buffer=3),) + state.links[1:])
    with pytest.raises(StateError, match=r"node 0 has output links with different buffers or queues"):
        write_datanet(tmp_path / "b", [(mixed, result)])
    with pytest.raises(StateError, match=r"tag 'a_b'"):
        write_datanet(tmp_path / "c", [(state, result)], tag="a_b")


# ----------------------------------------------------------------------------- the real gnnet2021 samples


@pytest.mark.skipif(not GNNET.is_dir(), reason="gnnet2021 sample data not present")
@pytest.mark.parametrize("split", ["train", "validation"])
def test_reads_the_gnnet2021_samples(split):
    samples = list(read_datanet(GNNET / split))
    assert len(samples) == 50
    for sample in samples:
        state = sample.state
        assert len(state.nodes) == 30 and len(state.flows) == 870
        assert all(lk.buffer == 31 for lk in state.links)
        assert 10_000 <= min(lk.capacity for lk in state.links) and max(lk.capacity for lk in state.links) <= 100_000
        for labels in (sample.delay, sample.jitter, sample.loss, sample.packets, sample.valid):
            assert labels.shape == (870,)
        assert sample.valid.sum() >= 860
        assert np.all(sample.delay[sample.valid] > 0)
        assert np.all(np.isfinite(sample.link_utilization)) and sample.link_utilization.shape == (len(state.links),)
        hops = np.array([len(p) for p in state.flow_links])
        assert 1.5 < hops.mean() < 3.5
        # the offered load matches the utilization the reference measured
        offered = state.utilization()
        busy = offered > 0.05
        assert np.median(np.abs(offered[busy] / sample.link_utilization[busy] - 1)) < 0.02


@pytest.mark.skipif(not GNNET.is_dir(), reason="gnnet2021 sample data not present")
def test_simulator_agrees_with_omnet_on_two_samples():
    report = compare_with_reference(GNNET / "validation", limit=2, seed=3, packets_per_flow=2000)
    assert report["samples"] == 2 and report["paths"] >= 1720
    assert report["mape_vs_reference"] < 0.05
    assert abs(report["bias"]) < 0.02
    assert report["undelivered"] == 0
