"""Our simulations written in the BNN-UPC datanet format (:mod:`twin.data.datanet_reader` has the
format's layout and units), so other tools read them as they read the reference data."""

from __future__ import annotations

import io
import math
import tarfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from twin.data.datanet_reader import IN_SERVICE, NO_RESULT, NO_TRAFFIC, NOT_MEASURED, RESULT_FILES
from twin.state.errors import StateError
from twin.state.metrics import finite_or_none
from twin.state.model import Flow, NetworkState


def write_datanet(directory, samples: Iterable, tag: str = "ndt") -> Path:
    """Write simulated samples as a datanet directory readable by BNN-UPC tools; returns the archive path.

    samples: ``(state, result)`` pairs with ``result`` a :class:`twin.sim.SimResult`
    of ``state``. Graphs and routings shared by several samples are written once
    (``graphs/graph-<N>-<k>.txt``, ``routings/Routing-<N>-<k>.txt``, paths as
    ``src;hop;...;dst`` over node indices in ``state.nodes`` order, the names kept in
    a GML ``name`` attribute; read back, nodes are named by index); the results go
    to one ``results_<tag>_<lo>-<hi>_0_<n-1>.tar.gz``. A node's ports become its
    ``queueSizes``, ``schedulingPolicy``, ``schedulingWeights`` and ``levelsQoS`` (the
    2020 variant), a flow's ToS the last field of its traffic cell. The datanet format
    has no propagation delay, one queue set-up per node and no exponential packet
    sizes: states using them raise :class:`StateError`. Fields ndt does not measure
    (AvgLnDelay, p10, p20, p80, maximum queue occupancy) are written as -1, the
    format's "no value"; so are the delays of flows that delivered nothing.
    """
    if "_" in tag or not tag:
        raise StateError(f"tag {tag!r}: must be non-empty without '_' (it is part of the archive name)")
    directory = Path(directory)
    for sub in ("graphs", "routings"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    graphs: dict[str, str] = {}
    routings: dict[str, str] = {}
    lines = {name: [] for name in RESULT_FILES}
    intensity = []
    for number, (state, result) in enumerate(samples):
        where = f"sample {number} ({state.name or 'unnamed'})"
        _check_writable(state, result, where)
        graph_file = _register(graphs, _graph_text(state), f"graph-{len(state.nodes)}-{{}}.txt")
        routing_file = _register(routings, _routing_text(state), f"Routing-{len(state.nodes)}-{{}}.txt")
        lines["input_files.txt"].append(f"{number};{graph_file};{routing_file}")
        lines["traffic.txt"].append(_traffic_line(state))
        lines["simulationResults.txt"].append(_results_line(result))
        lines["linkUsage.txt"].append(_link_usage_line(result))
        lines["stability.txt"].append(f"{_fmt(_window(result))};0;OK;ndt;Time(s):{result.wall_s:.3f}")
        intensity.append(max((f.rate for f in state.flows), default=0.0))
    if not intensity:
        raise StateError("write_datanet: no samples to write")
    for text, name in list(graphs.items()) + list(routings.items()):
        folder = "graphs" if name.startswith("graph-") else "routings"
        (directory / folder / name).write_text(text)
    folder = f"results_{tag}_{math.floor(min(intensity))}-{math.ceil(max(intensity))}_0_{len(intensity) - 1}"
    archive = directory / f"{folder}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in RESULT_FILES:
            data = "".join(line + "\n" for line in lines[name]).encode()
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return archive


def _check_writable(state: NetworkState, result, where: str) -> None:
    """Refuse what the datanet format cannot say."""
    if len(result.delay) != len(state.flows):
        raise StateError(f"{where}: the result has {len(result.delay)} paths but the state has {len(state.flows)} flows")
    ports: dict[str, tuple] = {}
    for lk in state.links:
        if lk.prop_delay != 0:
            raise StateError(f"{where}: link {lk.src}->{lk.dst} has a propagation delay; the datanet format has none")
        port = (lk.policy, lk.queues, lk.queue_weights)
        if ports.setdefault(lk.src, port) != port:
            raise StateError(f"{where}: node {lk.src} has output links with different buffers or queues; the "
                             "datanet format has one queue set-up per node")
    for flow in state.flows:
        if flow.size_dist == "exponential":
            raise StateError(f"{where}: flow {flow.src}->{flow.dst} has exponential packet sizes; the datanet "
                             "format has deterministic and binomial sizes only")


def _register(texts: dict, text: str, pattern: str) -> str:
    """The file name for ``text``, allocating the next numbered name the first time it is seen."""
    if text not in texts:
        texts[text] = pattern.format(len(texts))
    return texts[text]


def _graph_text(state: NetworkState) -> str:
    """A datanet GML graph: node ids and labels are indices in ``state.nodes`` (as BNN-UPC's reader
    expects); the node names are kept in a ``name`` attribute."""
    idx = state.node_index
    ports = {lk.src: lk for lk in state.links}
    out = ["graph [", "  directed 1", "  multigraph 1"]
    for i, node in enumerate(state.nodes):
        port = ports.get(node)
        queues = port.queues if port else (32 - IN_SERVICE,)
        sizes = ",".join(str(size + IN_SERVICE) for size in queues)
        policy = port.policy.upper() if port else "FIFO"
        out += ["  node [", f"    id {i}", f'    label "{i}"', f'    name "{node}"', f'    queueSizes "{sizes}"',
                f'    schedulingPolicy "{policy}"', f"    levelsQoS {len(queues)}"]
        if port and port.queue_weights:
            out.append(f'    schedulingWeights "{",".join(_fmt(w) for w in port.queue_weights)}"')
        out.append("  ]")
    ports: dict[str, int] = {}
    for lk in state.links:
        port = ports.get(lk.src, 0)
        ports[lk.src] = port + 1
        out += ["  edge [", f"    source {idx[lk.src]}", f"    target {idx[lk.dst]}", "    key 0", f"    port {port}",
                f"    weight {_fmt(lk.weight)}", f"    bandwidth {_fmt(float(lk.capacity))}", "  ]"]
    out.append("]")
    return "\n".join(out) + "\n"


def _routing_text(state: NetworkState) -> str:
    """One ``src;hop;...;dst`` line (node indices) per flow."""
    idx = state.node_index
    return "".join(";".join(str(idx[v]) for v in state.flow_path(i)) + "\n" for i in range(len(state.flows)))


def _flow_cells(state: NetworkState, fill: str, cell) -> list[str]:
    """N×N cells row-major: ``cell(i, flow)`` for each flow's pair, ``fill`` elsewhere."""
    n = len(state.nodes)
    idx = state.node_index
    cells = [fill] * (n * n)
    for i, flow in enumerate(state.flows):
        cells[idx[flow.src] * n + idx[flow.dst]] = cell(i, flow)
    return cells


def _traffic_line(state: NetworkState) -> str:
    """``maxAvgLambda|cells``: per pair the time and size distribution (rates bit/s, sizes bits)."""
    cells = _flow_cells(state, NO_TRAFFIC, lambda i, flow: _traffic_cell(flow))
    top = max((f.rate for f in state.flows), default=0.0)
    return f"{_fmt(top)}|" + ";".join(cells)


def _traffic_cell(flow: Flow) -> str:
    """One traffic cell, the flow's ToS last; exp_max_factor 0 marks untruncated exponential times (ndt does
    not truncate)."""
    pkts = flow.rate / flow.packet_size
    if flow.time_dist == "poisson":
        time_part = [0, flow.rate, pkts, 0]
    elif flow.time_dist == "cbr":
        time_part = [1, flow.rate, pkts]
    else:
        on_rate = pkts * (flow.on_time + flow.off_time) / flow.on_time
        time_part = [4, flow.rate, on_rate, flow.off_time, flow.on_time, 0]
    if flow.size_dist == "binomial":
        size_part = [2, flow.packet_size, *flow.packet_sizes]
    else:
        size_part = [0, flow.packet_size]
    return ",".join(_fmt(v) for v in [*time_part, *size_part, flow.tos])


def _window(result) -> float:
    """The measured time of a simulation, s: packets sent / offered packet rate over the flows that sent.

    SimResult does not record its duration, so this is an estimate (exact in
    expectation); it makes ``PktsGen × sim_time`` give back the packets sent.
    """
    state = result.state
    pkt_rates = np.array([f.rate / f.packet_size for f in state.flows])
    active = (pkt_rates > 0) & (result.sent > 0)
    if not active.any():
        raise StateError(f"{state.name or 'a state'}: a result with no packets sent cannot be written")
    return float(result.sent[active].sum() / pkt_rates[active].sum())


def _results_line(result) -> str:
    """``globals|cells``: per flow AvgBw (kbit/s), PktsGen and PktsDrop (packets/s), delays (s), jitter (s²)."""
    state = result.state
    window = _window(result)
    sizes = np.array([f.packet_size for f in state.flows])

    def cell(i: int, flow: Flow) -> str:
        delay = result.delay[i] if result.delivered[i] > 0 else None
        values = [result.delivered[i] * sizes[i] / window / 1e3, result.sent[i] / window, result.dropped[i] / window,
                  delay, None, None, None, finite_or_none(result.p50[i]), None, finite_or_none(result.p90[i]),
                  result.jitter[i] if delay is not None else None]
        return ",".join(NOT_MEASURED if v is None else _fmt(v) for v in values)

    delivered = result.delivered.sum()
    mean_delay = np.nansum(result.delay * result.delivered) / delivered if delivered else None
    head = [result.sent.sum() / window, result.dropped.sum() / window, mean_delay]
    head_text = ",".join(NOT_MEASURED if v is None else _fmt(v) for v in head)
    return head_text + "|" + ";".join(_flow_cells(state, NO_RESULT, cell)) + ";"


def _link_usage_line(result) -> str:
    """Per link: utilization, loss ratio, mean packet size (bits), then the one queue's statistics.

    The occupancy written is ndt's time-average number of packets at the port
    (waiting + in transmission); the reference counts differently (docs/validation.md).
    """
    state = result.state
    n = len(state.nodes)
    idx = state.node_index
    bits = state.link_loads()
    packets = np.zeros(len(state.links))
    for flow, links in zip(state.flows, state.flow_links):
        packets[links] += flow.rate / flow.packet_size
    cells = ["-1"] * (n * n)
    for j, lk in enumerate(state.links):
        util = result.utilization[j]
        loss = result.link_drops[j] / result.link_arrivals[j] if result.link_arrivals[j] else 0.0
        size = bits[j] / packets[j] if packets[j] > 0 else 0.0
        values = [util, loss, size, util, loss, result.occupancy[j] + util, None, size]
        cells[idx[lk.src] * n + idx[lk.dst]] = ",".join(NOT_MEASURED if v is None else _fmt(v) for v in values)
    return ";".join(cells) + ";"


def _fmt(x: float) -> str:
    """A number with 9 significant digits (round trips within float formatting)."""
    return format(float(x), ".9g")


