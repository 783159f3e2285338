"""The BNN-UPC datanet format (GNNetworking Challenge 2021): read samples, write our own.

A datanet directory holds ``graphs/`` (GML multigraphs: per-edge ``bandwidth``
and ``port``, per-node ``queueSizes``), ``routings/`` (one path per line,
``src;hop;...;dst``, or the older matrix of output ports, one row per node) and
``results_*.tar.gz`` archives with one folder of five line-aligned files:
``input_files.txt``, ``traffic.txt``, ``simulationResults.txt``,
``linkUsage.txt`` and ``stability.txt`` (one line per sample).

Units: the datanet time unit is taken as one second, so bandwidths are bit/s,
rates bit/s, packet sizes bits, delays s and jitter s².

Mapping to :class:`twin.state.NetworkState`: nodes are named ``"0"``..``"N-1"``;
a link's ``buffer`` is the node's ``queueSizes`` minus one, because the
reference simulator counts the packet in transmission in its queue (see
docs/validation.md); ``prop_delay`` is 0. Every pair with offered traffic
becomes a flow, so the state carries the load the reference simulated; pairs
whose results are unusable (delay <= 0 or no packets generated) stay in the
state and are marked ``valid = False`` with NaN labels.
"""

from __future__ import annotations

import io
import itertools
import math
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import networkx as nx
import numpy as np

from twin.state import Flow, Link, NetworkState, StateError

RESULT_FILES = ("input_files.txt", "traffic.txt", "simulationResults.txt", "linkUsage.txt", "stability.txt")
REQUIRED_FILES = ("input_files.txt", "traffic.txt", "simulationResults.txt", "stability.txt")
TIME_CODES = {0: "poisson", 1: "cbr", 4: "onoff"}
TIME_NAMES = {0: "exponential", 1: "deterministic", 2: "uniform", 3: "normal", 4: "on-off", 5: "PPBP"}
TIME_PARAMS = {0: 4, 1: 3, 4: 6}  # fields up to the size distribution, the code included
SIZE_CODES = {0: "deterministic", 2: "binomial"}
SIZE_NAMES = {0: "deterministic", 1: "uniform", 2: "binomial", 3: "generic"}
RESULT_FIELDS = 11  # AvgBw, PktsGen, PktsDrop, AvgDelay, AvgLnDelay, p10, p20, p50, p80, p90, Jitter
IN_SERVICE = 1  # packets the reference queue counts beyond ndt's waiting room (the one in transmission)
NO_TRAFFIC = "-1,0,-1,0,0"
NO_RESULT = "0,0,0,-1,-1,-1,-1,-1,-1,-1,-1"
NOT_MEASURED = "-1"  # the format's "no value", as on the diagonal
PACKETS_PER_FLOW = 5000.0  # default comparison length: ~1 % MAPE noise, a few s per 30-node sample


@dataclass
class DatanetSample:
    """One simulated scenario and its recorded results, labels aligned with ``state.flows``.

    delay: mean per-packet delay, s; jitter: delay variance, s²; loss: dropped /
    generated; packets: packets generated during the measured ``sim_time`` (s);
    p50/p90: delay percentiles, s; valid: the labels are usable (delay > 0 and
    packets > 0; NaN labels otherwise). link_utilization (0–1) and
    link_occupancy (mean packets in the port queue) follow ``state.links``,
    ``None`` when the archive has no linkUsage.txt.
    """

    state: NetworkState
    delay: np.ndarray
    jitter: np.ndarray
    loss: np.ndarray
    packets: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    valid: np.ndarray
    link_utilization: np.ndarray | None
    link_occupancy: np.ndarray | None
    sim_time: float
    source: str


@dataclass(frozen=True)
class _Topology:
    """A parsed graph file: node count, links in file order and each node's port → neighbour map."""

    n: int
    links: tuple[Link, ...]
    ports: dict[int, dict[int, int]]


# ----------------------------------------------------------------------------- reading


def read_datanet(directory) -> Iterator[DatanetSample]:
    """Stream the usable samples of a datanet directory, archive by archive (sorted by name).

    Samples whose stability.txt line lacks ``;OK;`` are skipped. Raises
    :class:`StateError` naming the file and line for missing or malformed input
    (a directory without graphs/, routings/ or archives at once, the rest while
    iterating).
    """
    directory = Path(directory)
    return _samples(directory, _archives(directory))


def _samples(directory: Path, archives: list[Path]) -> Iterator[DatanetSample]:
    """The samples of the archives in order; graphs and routings are parsed once and shared."""
    topologies: dict[str, _Topology] = {}
    routings: dict[tuple[str, str], dict] = {}
    for archive in archives:
        yield from _read_archive(directory, archive, topologies, routings)


def _archives(directory: Path) -> list[Path]:
    """The results_*.tar.gz files of a datanet directory, checking its layout."""
    if not directory.is_dir():
        raise StateError(f"{directory}: not a directory")
    for sub in ("graphs", "routings"):
        if not (directory / sub).is_dir():
            raise StateError(f"{directory}: no {sub}/ folder (not a datanet directory)")
    archives = sorted(directory.glob("results_*.tar.gz"))
    if not archives:
        raise StateError(f"{directory}: no results_*.tar.gz archives")
    return archives


def _read_archive(directory: Path, archive: Path, topologies: dict, routings: dict) -> Iterator[DatanetSample]:
    """Samples of one results archive, parsed line by line from its files held in memory."""
    files = {name: io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
             for name, data in _archive_files(archive).items()}
    try:
        for number, lines in enumerate(_aligned_lines(files, archive), start=1):
            sample = _parse_sample(directory, lines, f"{archive.name} line {number}", topologies, routings)
            if sample is not None:
                yield sample
    except UnicodeDecodeError as exc:
        raise StateError(f"{archive}: a result file is not UTF-8 text ({exc.reason})") from None


def _archive_files(archive: Path) -> dict[str, bytes]:
    """The result files of an archive keyed by base name, read in one forward pass over the gzip stream.

    One archive's files are held in memory (the interleaved line-by-line reads
    would otherwise re-decompress the stream for every backward seek); samples
    are still streamed archive by archive.
    """
    contents = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in RESULT_FILES:
                    contents[name] = tar.extractfile(member).read()
                    if len(contents[name]) != member.size:
                        raise EOFError(f"{name} holds {len(contents[name])} of its {member.size} bytes")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise StateError(f"{archive}: truncated or corrupt archive ({exc})") from None
    missing = [name for name in REQUIRED_FILES if name not in contents]
    if missing:
        raise StateError(f"{archive}: the archive has no {missing[0]} (incomplete or truncated archive)")
    return contents


def _aligned_lines(files: dict, archive: Path) -> Iterator[dict[str, str]]:
    """One dict of stripped lines per sample; every file must have the same number of lines."""
    number = 0
    while True:
        lines = {name: f.readline() for name, f in files.items()}
        ended = sorted(name for name, line in lines.items() if not line)
        if len(ended) == len(lines):
            return
        number += 1
        if ended:
            longer = next(name for name in RESULT_FILES if name in lines and name not in ended)
            raise StateError(f"{archive.name}: {ended[0]} ends at line {number - 1} but {longer} has line {number} "
                             "(truncated file)")
        yield {name: line.rstrip("\r\n") for name, line in lines.items()}


def _parse_sample(directory: Path, lines: dict, where: str, topologies: dict, routings: dict):
    """A DatanetSample from one line of each result file, or None when the sample is unstable."""
    status = lines["stability.txt"]
    if ";OK;" not in status:
        return None
    sim_time = _number(status.split(";")[0], f"{where}: stability.txt simulated time")
    fields = lines["input_files.txt"].split(";")
    if len(fields) < 3:
        raise StateError(f"{where}: input_files.txt needs 'id;graph file;routing file', got {lines['input_files.txt']!r}")
    sample_id, graph_file, routing_file = (f.strip() for f in fields[:3])
    where = f"{where} (sample {sample_id})"
    topo = _topology(directory, graph_file, fields[3].strip() if len(fields) > 3 else "", topologies)
    key = (graph_file, routing_file)
    if key not in routings:
        routings[key] = _read_routing(directory / "routings" / routing_file, topo)
    flows, cells = _parse_traffic(lines["traffic.txt"], topo.n, f"{where}: traffic.txt")
    try:
        state = NetworkState(
            nodes=tuple(str(i) for i in range(topo.n)), links=topo.links, flows=tuple(flows),
            routing_kind="paths", paths=routings[key], name=f"{where.split(' line ')[0]}:{sample_id}",
        )
    except StateError as exc:
        raise StateError(f"{where}: {graph_file} with {routing_file}: {exc}") from None
    labels = _parse_results(lines["simulationResults.txt"], topo.n, cells, sim_time, f"{where}: simulationResults.txt")
    usage = lines.get("linkUsage.txt")
    util = occupancy = None
    if usage is not None:
        util, occupancy = _parse_link_usage(usage, state, f"{where}: linkUsage.txt")
    return DatanetSample(state=state, **labels, link_utilization=util, link_occupancy=occupancy,
                         sim_time=sim_time, source=where)


def _number(text: str, what: str) -> float:
    """A float parsed from ``text``, or StateError naming ``what``."""
    try:
        return float(text)
    except ValueError:
        raise StateError(f"{what}: {text.strip()!r} is not a number") from None


def _numbers(text: str, what: str) -> list[float]:
    """Comma-separated floats."""
    return [_number(part, what) for part in text.split(",")]


def _cells(line: str, n: int, what: str) -> list[str]:
    """The N×N ';'-separated cells of a line (trailing ';' allowed), row-major."""
    cells = line.strip().rstrip(";").split(";")
    if len(cells) != n * n:
        raise StateError(f"{what}: expected {n * n} cells ({n}×{n} nodes), got {len(cells)}")
    return cells


# ----------------------------------------------------------------------------- graphs and routings


def _topology(directory: Path, graph_file: str, links_bw_file: str, cache: dict) -> _Topology:
    """The parsed graph of a sample, with the optional links_bw/ bandwidth overrides applied."""
    key = f"{graph_file};{links_bw_file}"
    if key not in cache:
        topo = _read_graph(directory / "graphs" / graph_file)
        if links_bw_file:
            topo = _apply_links_bw(topo, directory / "links_bw" / links_bw_file)
        cache[key] = topo
    return cache[key]


def _read_graph(path) -> _Topology:
    """Parse a datanet GML graph: links with capacity = bandwidth (bit/s), buffer from queueSizes (packets).

    Links are ordered by source node, then output port.
    """
    path = Path(path)
    try:
        graph = nx.read_gml(path, label="id")
    except OSError as exc:
        raise StateError(f"{path}: cannot read the graph file ({exc.strerror or exc})") from None
    except (nx.NetworkXError, ValueError, KeyError) as exc:
        raise StateError(f"{path}: not a valid GML graph ({exc})") from None
    n = graph.number_of_nodes()
    if sorted(graph.nodes) != list(range(n)):
        raise StateError(f"{path}: node ids must be 0..{n - 1}")
    buffers = {node: _queue_size(path, node, attrs) for node, attrs in graph.nodes(data=True)}
    links, ports = [], {node: {} for node in range(n)}
    edges = sorted(graph.edges(data=True), key=lambda e: (e[0], e[2].get("port", 0)))
    for src, dst, attrs in edges:
        tag = f"{path}: edge {src}->{dst}"
        if "bandwidth" not in attrs:
            raise StateError(f"{tag} has no bandwidth")
        capacity = _bandwidth(attrs["bandwidth"], tag)
        links.append(Link(src=str(src), dst=str(dst), capacity=capacity, buffer=buffers[src] - IN_SERVICE,
                          weight=float(attrs.get("weight", 1.0))))
        if "port" in attrs:
            ports[src][int(attrs["port"])] = dst
    try:
        NetworkState(nodes=tuple(str(i) for i in range(n)), links=tuple(links))
    except StateError as exc:
        raise StateError(f"{path}: {exc}") from None
    return _Topology(n=n, links=tuple(links), ports=ports)


def _queue_size(path: Path, node: int, attrs: dict) -> int:
    """A node's queue size in packets (the reference's count, the packet in transmission included)."""
    raw = attrs.get("queueSizes", attrs.get("bufferSizes"))
    if raw is None:
        raise StateError(f"{path}: node {node} has no queueSizes")
    sizes = str(raw).split(",")
    if len(sizes) != 1:
        raise StateError(f"{path}: node {node} has {len(sizes)} QoS queues ({raw!r}); ndt simulates one FIFO per port")
    try:
        size = int(float(sizes[0]))
    except ValueError:
        raise StateError(f"{path}: node {node}: queueSizes {raw!r} is not a number") from None
    if size <= IN_SERVICE:
        raise StateError(f"{path}: node {node}: queueSizes {raw!r} must be at least {IN_SERVICE + 1} packets")
    return size


def _bandwidth(raw, tag: str) -> float:
    """A bandwidth attribute in bit/s: a number, or a string with a ``kbps`` suffix."""
    text = str(raw).strip()
    scale = 1.0
    if text.lower().endswith("kbps"):
        text, scale = text[:-4], 1e3
    value = _number(text, f"{tag}: bandwidth") * scale
    if not value > 0:
        raise StateError(f"{tag}: bandwidth must be positive, got {raw!r}")
    return value


def _apply_links_bw(topo: _Topology, path: Path) -> _Topology:
    """The topology with capacities overridden by a links_bw file (``src;dst;bw`` lines, bit/s)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise StateError(f"{path}: cannot read the link bandwidth file ({exc.strerror or exc})") from None
    index = {(lk.src, lk.dst): i for i, lk in enumerate(topo.links)}
    links = list(topo.links)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(";")
        if len(parts) < 3 or (parts[0].strip(), parts[1].strip()) not in index:
            raise StateError(f"{path} line {number}: expected 'src;dst;bandwidth' of an existing link, got {line!r}")
        i = index[(parts[0].strip(), parts[1].strip())]
        capacity = _bandwidth(parts[2], f"{path} line {number}")
        lk = links[i]
        links[i] = Link(src=lk.src, dst=lk.dst, capacity=capacity, buffer=lk.buffer, weight=lk.weight)
    return _Topology(n=topo.n, links=tuple(links), ports=topo.ports)


def _read_routing(path: Path, topo: _Topology) -> dict[tuple[str, str], tuple[str, ...]]:
    """Paths keyed by (src, dst) from a routing file in either variant (path lines or port matrix)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise StateError(f"{path}: cannot read the routing file ({exc.strerror or exc})") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise StateError(f"{path}: the routing file is empty")
    if any(";" in line for _, line in lines):
        return _path_lines(path, lines, topo.n)
    return _port_matrix(path, lines, topo)


def _path_lines(path: Path, lines: list, n: int) -> dict:
    """Routing given as one ``src;hop;...;dst`` line per node pair."""
    paths = {}
    for number, line in lines:
        try:
            hops = [int(x) for x in line.split(";")]
        except ValueError:
            raise StateError(f"{path} line {number}: a path is node ids separated by ';', got {line!r}") from None
        if len(hops) < 2 or not all(0 <= h < n for h in hops):
            raise StateError(f"{path} line {number}: a path needs at least two node ids in 0..{n - 1}, got {line!r}")
        paths[(str(hops[0]), str(hops[-1]))] = tuple(str(h) for h in hops)
    return paths


def _port_matrix(path: Path, lines: list, topo: _Topology) -> dict:
    """Routing given as an N×N matrix: row = node, column = destination, cell = output port (-1 on the diagonal)."""
    n = topo.n
    if len(lines) != n:
        raise StateError(f"{path}: a port-matrix routing needs {n} lines (one per node), got {len(lines)}")
    table = np.empty((n, n), dtype=np.int64)
    for row, (number, line) in enumerate(lines):
        cells = [c for c in line.rstrip(",").split(",")]
        if len(cells) != n:
            raise StateError(f"{path} line {number}: expected {n} output ports, got {len(cells)}")
        try:
            table[row] = [int(float(c)) for c in cells]
        except ValueError:
            raise StateError(f"{path} line {number}: output ports must be integers, got {line!r}") from None
    paths = {}
    for src in range(n):
        for dst in range(n):
            if src != dst:
                paths[(str(src), str(dst))] = _follow_ports(path, table, topo.ports, src, dst)
    return paths


def _follow_ports(path: Path, table: np.ndarray, ports: dict, src: int, dst: int) -> tuple[str, ...]:
    """The node sequence from src to dst following each node's output port towards dst."""
    hops = [src]
    node = src
    while node != dst:
        port = int(table[node, dst])
        if port not in ports[node]:
            raise StateError(f"{path}: route {src}->{dst}: node {node} has no output port {port} towards {dst}")
        node = ports[node][port]
        if node in hops:
            raise StateError(f"{path}: route {src}->{dst}: routing loop at node {node}")
        hops.append(node)
    return tuple(str(h) for h in hops)


# ----------------------------------------------------------------------------- traffic and results


def _parse_traffic(line: str, n: int, what: str) -> tuple[list[Flow], list[int]]:
    """Flows (pairs with positive offered rate, row-major) and the cell index of each."""
    if "|" not in line:
        raise StateError(f"{what}: expected 'maxAvgLambda|cells'")
    cells = _cells(line.split("|", 1)[1], n, what)
    flows, index = [], []
    for k, cell in enumerate(cells):
        src, dst = divmod(k, n)
        if src == dst:
            continue
        flow = _parse_flow(cell, str(src), str(dst), f"{what}: pair {src}->{dst}")
        if flow is not None:
            flows.append(flow)
            index.append(k)
    return flows, index


def _parse_flow(cell: str, src: str, dst: str, what: str) -> Flow | None:
    """One traffic cell as a Flow (rate = eq_lambda, bit/s), or None when the pair offers no traffic."""
    if ":" in cell:
        raise StateError(f"{what}: several flows per pair are not supported (one flow per node pair)")
    values = _numbers(cell, what)
    code = int(values[0])
    if code == -1 or (len(values) > 1 and values[1] == 0):
        return None
    if code not in TIME_CODES:
        raise StateError(f"{what}: time distribution {code} ({TIME_NAMES.get(code, 'unknown')}) is not supported; "
                         f"ndt simulates {', '.join(f'{c} ({TIME_NAMES[c]})' for c in TIME_CODES)}")
    offset = TIME_PARAMS[code]
    if len(values) < offset + 2:
        raise StateError(f"{what}: too few fields ({len(values)}) for time distribution {code}")
    kwargs = {"time_dist": TIME_CODES[code]}
    if code == 4:
        kwargs.update(off_time=values[3], on_time=values[4])
    size_code = int(values[offset])
    if size_code not in SIZE_CODES:
        raise StateError(f"{what}: size distribution {size_code} ({SIZE_NAMES.get(size_code, 'unknown')}) is not "
                         f"supported; ndt simulates 0 (deterministic) and 2 (binomial)")
    mean = values[offset + 1]
    kwargs.update(packet_size=mean, size_dist="deterministic")
    if size_code == 2:
        if len(values) < offset + 4:
            raise StateError(f"{what}: a binomial size needs avg_size, size1, size2")
        small, large = sorted(values[offset + 2:offset + 4])
        if small < mean < large:
            kwargs.update(size_dist="binomial", packet_sizes=(small, large))
    try:
        return Flow(src=src, dst=dst, rate=values[1], **kwargs)
    except TypeError as exc:
        raise StateError(f"{what}: {exc}") from None


def _parse_results(line: str, n: int, cells: list[int], sim_time: float, what: str) -> dict:
    """Per-flow labels from a simulationResults.txt line (cells: the flows' cell indices)."""
    if "|" not in line:
        raise StateError(f"{what}: expected 'global stats|cells'")
    all_cells = _cells(line.split("|", 1)[1], n, what)
    rows = np.empty((len(cells), RESULT_FIELDS))
    for i, k in enumerate(cells):
        values = _numbers(all_cells[k], f"{what}: pair {k // n}->{k % n}")
        if len(values) < RESULT_FIELDS:
            raise StateError(f"{what}: pair {k // n}->{k % n} has {len(values)} fields, expected {RESULT_FIELDS}")
        rows[i] = values[:RESULT_FIELDS]
    generated, drops, delay = rows[:, 1], rows[:, 2], rows[:, 3]
    valid = (generated > 0) & (delay > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(generated > 0, drops / generated, np.nan)

    def usable(column: np.ndarray) -> np.ndarray:
        return np.where(valid, column, np.nan)

    return {
        "delay": usable(delay), "jitter": usable(rows[:, 10]), "loss": usable(loss),
        "packets": generated * sim_time, "p50": usable(rows[:, 7]), "p90": usable(rows[:, 9]), "valid": valid,
    }


def _parse_link_usage(line: str, state: NetworkState, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-link utilization (0–1) and mean port occupancy (packets), in ``state.links`` order."""
    n = len(state.nodes)
    cells = _cells(line, n, what)
    util = np.full(len(state.links), np.nan)
    occupancy = np.full(len(state.links), np.nan)
    for k, cell in enumerate(cells):
        src, dst = divmod(k, n)
        j = state.link_index.get((str(src), str(dst)))
        if cell.strip() == "-1":
            if j is not None:
                raise StateError(f"{what}: no statistics for the link {src}->{dst} of the graph")
            continue
        if j is None:
            raise StateError(f"{what}: statistics for {src}->{dst}, which is not a link of the graph")
        values = _numbers(cell, f"{what}: link {src}->{dst}")
        if len(values) < 6:
            raise StateError(f"{what}: link {src}->{dst} has {len(values)} fields, expected at least 8")
        util[j], occupancy[j] = values[0], values[5]
    return util, occupancy


# ----------------------------------------------------------------------------- writing


def write_datanet(directory, samples: Iterable, tag: str = "ndt") -> Path:
    """Write simulated samples as a datanet directory readable by BNN-UPC tools; returns the archive path.

    samples: ``(state, result)`` pairs with ``result`` a :class:`twin.sim.SimResult`
    of ``state``. Graphs and routings shared by several samples are written once
    (``graphs/graph-<N>-<k>.txt``, ``routings/Routing-<N>-<k>.txt``, paths as
    ``src;hop;...;dst`` over node indices in ``state.nodes`` order, the names kept in
    a GML ``name`` attribute; read back, nodes are named by index); the results go
    to one ``results_<tag>_<lo>-<hi>_0_<n-1>.tar.gz``. The datanet format has no
    propagation delay, one queue size per node and no exponential packet sizes:
    states using them raise :class:`StateError`. Fields ndt does not measure
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
    buffers: dict[str, int] = {}
    for lk in state.links:
        if lk.prop_delay != 0:
            raise StateError(f"{where}: link {lk.src}->{lk.dst} has a propagation delay; the datanet format has none")
        if buffers.setdefault(lk.src, lk.buffer) != lk.buffer:
            raise StateError(f"{where}: node {lk.src} has output links with different buffers; the datanet format "
                             "has one queue size per node")
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
    buffers = {lk.src: lk.buffer for lk in state.links}
    out = ["graph [", "  directed 1", "  multigraph 1"]
    for i, node in enumerate(state.nodes):
        size = buffers.get(node, 32 - IN_SERVICE) + IN_SERVICE
        out += ["  node [", f"    id {i}", f'    label "{i}"', f'    name "{node}"', f'    queueSizes "{size}"',
                '    schedulingPolicy "FIFO"', "    levelsQoS 1", "  ]"]
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
    """One traffic cell; exp_max_factor 0 marks untruncated exponential times (ndt does not truncate)."""
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
    return ",".join(_fmt(v) for v in [*time_part, *size_part, 0])


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
                  delay, None, None, None, _finite(result.p50[i]), None, _finite(result.p90[i]),
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


def _finite(x: float) -> float | None:
    """``x`` or None when it is NaN or infinite."""
    return float(x) if math.isfinite(x) else None


def _fmt(x: float) -> str:
    """A number with 9 significant digits (round trips within float formatting)."""
    return format(float(x), ".9g")


# ----------------------------------------------------------------------------- validation against the reference


def compare_with_reference(directory, limit: int | None = None, seed: int = 0, duration: float | None = None,
                           warmup: float | None = None, packets_per_flow: float = PACKETS_PER_FLOW,
                           progress: bool = False) -> dict:
    """Simulate every usable sample of a datanet directory and compare per-path mean delay with its results.

    Returns ``samples``, ``paths`` (labelled paths compared), ``mape_vs_reference``
    (mean over those paths of |ours − reference| / reference, a fraction),
    ``p15``/``p85``/``median`` of the per-sample MAPE, ``bias`` (mean signed
    relative error), ``loss_abs_error`` (mean |loss difference|), ``undelivered``
    (labelled paths our run delivered nothing on, left out of the MAPE),
    ``wall_s``, ``s_per_sample`` (reading included), ``sim_s_per_sample`` (the
    event loop alone) and ``packet_hops_per_s``. Sample k runs with seed ``seed + k``;
    ``duration``/``warmup`` (s) default to ``packets_per_flow`` packets per flow.
    """
    from tqdm import tqdm

    from twin.sim import simulate

    if limit is not None and limit < 1:
        raise StateError(f"limit must be at least 1, got {limit}")
    started = time.perf_counter()
    signed, loss_err, per_sample = [], [], []
    undelivered = hops = 0
    sim_wall = 0.0
    samples = itertools.islice(read_datanet(directory), limit)
    with tqdm(total=limit, unit="sample", file=sys.stderr, disable=not progress, desc="simulating") as bar:
        for k, sample in enumerate(samples):
            result = simulate(sample.state, duration=duration, warmup=warmup, seed=seed + k,
                              packets_per_flow=packets_per_flow)
            hops += result.packet_hops
            sim_wall += result.wall_s
            rel, loss_diff, missed = _path_errors(sample, result)
            signed.append(rel)
            loss_err.append(loss_diff)
            undelivered += missed
            per_sample.append(float(np.mean(np.abs(rel))) if len(rel) else math.nan)
            bar.update(1)
            bar.set_postfix(mape=f"{np.mean(np.abs(np.concatenate(signed))):.4f}")
    if not per_sample:
        raise StateError(f"{directory}: no usable samples (every stability.txt line lacks ';OK;')")
    wall = time.perf_counter() - started
    all_errors = np.abs(np.concatenate(signed))
    return {
        "samples": len(per_sample),
        "paths": int(len(all_errors)),
        "mape_vs_reference": float(np.mean(all_errors)),
        "p15": float(np.nanpercentile(per_sample, 15)),
        "median": float(np.nanpercentile(per_sample, 50)),
        "p85": float(np.nanpercentile(per_sample, 85)),
        "bias": float(np.mean(np.concatenate(signed))),
        "loss_abs_error": float(np.mean(np.concatenate(loss_err))),
        "undelivered": undelivered,
        "packets_per_flow": packets_per_flow if duration is None else None,
        "duration": duration,
        "seed": seed,
        "wall_s": round(wall, 3),
        "s_per_sample": round(wall / len(per_sample), 3),
        "sim_s_per_sample": round(sim_wall / len(per_sample), 3),
        "packet_hops_per_s": round(hops / max(sim_wall, 1e-9)),
    }


def _path_errors(sample: DatanetSample, result) -> tuple[np.ndarray, np.ndarray, int]:
    """On the labelled paths our run delivered packets on: signed relative delay error and
    absolute loss difference; plus the number of labelled paths it delivered nothing on."""
    delivered = np.isfinite(result.delay)
    use = sample.valid & delivered
    rel = (result.delay[use] - sample.delay[use]) / sample.delay[use]
    return rel, np.abs(result.loss[use] - sample.loss[use]), int(np.sum(sample.valid & ~delivered))
