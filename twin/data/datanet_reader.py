"""The BNN-UPC datanet format (GNNetworking Challenges 2020 and 2021): reading its samples
(:mod:`twin.data.datanet_writer` writes our own).

A datanet directory holds ``graphs/`` (GML multigraphs: per-edge ``bandwidth``
and ``port``, per-node ``queueSizes`` and, in the 2020 variant, ``schedulingPolicy``,
``schedulingWeights`` and ``levelsQoS``), ``routings/`` (one path per line,
``src;hop;...;dst``, or the older matrix of output ports, one row per node) and
``results_*.tar.gz`` (2021) or ``gnnet_data_set_*.tar.gz`` (2020) archives with one
folder of line-aligned files: ``input_files.txt``, ``traffic.txt``,
``simulationResults.txt``, ``stability.txt`` and, where present, ``linkUsage.txt``
(one line per sample).

Units: the datanet time unit is taken as one second, so bandwidths are bit/s,
rates bit/s, packet sizes bits, delays s and jitter s².

Mapping to :class:`twin.state.NetworkState`: nodes are named ``"0"``..``"N-1"``;
a link's ``buffer`` is the node's ``queueSizes`` minus one, because the
reference simulator counts the packet in transmission in its queue (see
docs/validation.md); ``prop_delay`` is 0. A node with several queues gives each
of its output links its policy (``sp``, ``wfq``, ``drr``), its weights and
``queue_sizes`` of each size minus one (``buffer``: their sum minus one); a flow's
ToS, the last field of its traffic cell, selects queue ToS (the format's default
``tosToQoSqueue``; SP serves queue 0 first). Every pair with offered traffic
becomes a flow, so the state carries the load the reference simulated; pairs
whose results are unusable (delay <= 0 or no packets generated) stay in the
state and are marked ``valid = False`` with NaN labels.
"""

from __future__ import annotations

import fnmatch
import io
import math
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from twin.state.errors import StateError
from twin.state.files import read_text
from twin.state.model import Flow, Link, NetworkState
from twin.state.topologies import parse_graph

RESULT_FILES = ("input_files.txt", "traffic.txt", "simulationResults.txt", "linkUsage.txt", "stability.txt")
REQUIRED_FILES = ("input_files.txt", "traffic.txt", "simulationResults.txt", "stability.txt")
TIME_CODES = {0: "poisson", 1: "cbr", 4: "onoff"}
TIME_NAMES = {0: "exponential", 1: "deterministic", 2: "uniform", 3: "normal", 4: "on-off", 5: "PPBP"}
TIME_PARAMS = {0: 4, 1: 3, 4: 6}  # fields up to the size distribution, the code included
SIZE_CODES = {0: "deterministic", 2: "binomial"}
SIZE_NAMES = {0: "deterministic", 1: "uniform", 2: "binomial", 3: "generic"}
SIZE_PARAMS = {0: 2, 2: 4}  # fields of a size distribution, the code included; the ToS follows
ARCHIVES = ("results_*.tar.gz", "gnnet_data_set_*.tar.gz")  # the 2021 and 2020 names of the results archives
# "packet delay is limited to 20 time units for all the simulation scenarios" (BNN-UPC/NetworkModelingDatasets,
# datasets_v2/README.md, the GNNet Challenge 2020 data): each packet's delay counts as at most this much; the
# 2020 results confirm it (their largest mean delay and every percentile top out at exactly 20)
GNNET2020_DELAY_LIMIT = 20.0  # time units (s in the state)
RESULT_FIELDS = 11  # AvgBw, PktsGen, PktsDrop, AvgDelay, AvgLnDelay, p10, p20, p50, p80, p90, Jitter
MAX_RESULT_FILE_BYTES = 256 * 2**20  # one sample file of a few hundred nodes is a few MiB
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
    ``None`` when the archive has no linkUsage.txt. delay_limit: the most a
    packet's delay counted for in the reference's statistics (s; GNNET2020_DELAY_LIMIT
    for the 2020 archives, no limit otherwise).
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
    delay_limit: float = math.inf  # s: the reference counted each packet's delay as at most this much


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
    """The results archives of a datanet directory (either naming, see ARCHIVES), checking its layout."""
    if not directory.is_dir():
        raise StateError(f"{directory}: not a directory")
    for sub in ("graphs", "routings"):
        if not (directory / sub).is_dir():
            raise StateError(f"{directory}: no {sub}/ folder (not a datanet directory)")
    archives = sorted(path for pattern in ARCHIVES for path in directory.glob(pattern))
    if not archives:
        raise StateError(f"{directory}: no results_*.tar.gz or gnnet_data_set_*.tar.gz archives")
    return archives


def _read_archive(directory: Path, archive: Path, topologies: dict, routings: dict) -> Iterator[DatanetSample]:
    """Samples of one results archive, parsed line by line from its files held in memory."""
    files = {name: io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
             for name, data in _archive_files(archive).items()}
    limit = GNNET2020_DELAY_LIMIT if fnmatch.fnmatch(archive.name, ARCHIVES[1]) else math.inf
    try:
        for number, lines in enumerate(_aligned_lines(files, archive), start=1):
            sample = _parse_sample(directory, lines, f"{archive.name} line {number}", topologies, routings, limit)
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
                    if member.size > MAX_RESULT_FILE_BYTES:
                        raise StateError(f"{archive}: {name} unpacks to {member.size / 2**20:.0f} MiB, more than a "
                                         f"datanet result file may be ({MAX_RESULT_FILE_BYTES / 2**20:.0f} MiB)")
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


def _parse_sample(directory: Path, lines: dict, where: str, topologies: dict, routings: dict, delay_limit: float):
    """A DatanetSample from one line of each result file, or None when the sample is unstable."""
    status = lines["stability.txt"]
    if ";OK;" not in status:
        return None
    sim_time = _number(status.split(";")[0], f"{where}: stability.txt simulated time")
    fields = lines["input_files.txt"].split(";")
    if len(fields) < 3:
        raise StateError(f"{where}: input_files.txt needs 'id;graph file;routing file', got {lines['input_files.txt']!r}")
    sample_id, graph_file, routing_file = (f.strip() for f in fields[:3])
    where = f"{where} (sample {sample_id[:20]})"
    links_bw_file = fields[3].strip() if len(fields) > 3 else ""
    for name in filter(None, (graph_file, routing_file, links_bw_file)):
        if not name.isprintable() or "/" in name or "\\" in name or name in (".", ".."):
            raise StateError(f"{where}: input_files.txt names {name[:40]!r}, not a plain file name (corrupt archive?)")
    topo = _topology(directory, graph_file, links_bw_file, topologies)
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
                         sim_time=sim_time, source=where, delay_limit=delay_limit)


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
    """Parse a datanet GML graph: links with capacity = bandwidth (bit/s), the queues of their source node.

    Links are ordered by source node, then output port.
    """
    path = Path(path)
    graph = parse_graph(read_text(path, "the graph file", StateError), "gml", path)
    n = graph.number_of_nodes()
    if sorted(graph.nodes) != list(range(n)):
        raise StateError(f"{path}: node ids must be 0..{n - 1}")
    queues = {node: _node_queues(path, node, attrs) for node, attrs in graph.nodes(data=True)}
    links, ports = [], {node: {} for node in range(n)}
    edges = sorted(graph.edges(data=True), key=lambda e: (e[0], e[2].get("port", 0)))
    for src, dst, attrs in edges:
        tag = f"{path}: edge {src}->{dst}"
        if "bandwidth" not in attrs:
            raise StateError(f"{tag} has no bandwidth")
        capacity = _bandwidth(attrs["bandwidth"], tag)
        links.append(Link(src=str(src), dst=str(dst), capacity=capacity, weight=float(attrs.get("weight", 1.0)),
                          **queues[src]))
        if "port" in attrs:
            ports[src][int(attrs["port"])] = dst
    try:
        NetworkState(nodes=tuple(str(i) for i in range(n)), links=tuple(links))
    except StateError as exc:
        raise StateError(f"{path}: {exc}") from None
    return _Topology(n=n, links=tuple(links), ports=ports)


def _node_queues(path: Path, node: int, attrs: dict) -> dict:
    """The Link fields of a node's output ports: ``buffer`` and, with several queues or a policy other than
    FIFO, ``policy``, ``queue_sizes`` and ``queue_weights`` (the reference's queue sizes count the packet in
    transmission; ndt's do not)."""
    raw = attrs.get("queueSizes", attrs.get("bufferSizes"))
    if raw is None:
        raise StateError(f"{path}: node {node} has no queueSizes")
    try:
        sizes = [int(float(size)) for size in str(raw).split(",")]
    except ValueError:
        raise StateError(f"{path}: node {node}: queueSizes {raw!r} is not a list of numbers") from None
    if min(sizes) <= IN_SERVICE:
        raise StateError(f"{path}: node {node}: queueSizes {raw!r} must be at least {IN_SERVICE + 1} packets")
    levels = attrs.get("levelsQoS")
    if levels is not None and str(levels).strip() != str(len(sizes)):
        raise StateError(f"{path}: node {node}: levelsQoS {levels!r} but {len(sizes)} queueSizes ({raw!r})")
    policy = str(attrs.get("schedulingPolicy", "FIFO")).strip().lower()
    if policy not in ("fifo", "sp", "wfq", "drr"):
        raise StateError(f"{path}: node {node}: schedulingPolicy {attrs['schedulingPolicy']!r} is not FIFO, SP, "
                         "WFQ or DRR")
    mapping = attrs.get("tosToQoSqueue")
    if mapping is not None and str(mapping).replace(" ", "") != ";".join(map(str, range(len(sizes)))):
        raise StateError(f"{path}: node {node}: tosToQoSqueue {mapping!r}; ndt maps ToS k to queue k only")
    if policy == "fifo":
        if len(sizes) != 1:
            raise StateError(f"{path}: node {node}: a FIFO node has one queue, queueSizes {raw!r} lists {len(sizes)}")
        return {"buffer": sizes[0] - IN_SERVICE}
    port = {"buffer": sum(sizes) - IN_SERVICE, "policy": policy,
            "queue_sizes": tuple(size - IN_SERVICE for size in sizes)}
    weights = str(attrs.get("schedulingWeights", "-")).strip()
    if policy in ("wfq", "drr") and weights != "-":
        port["queue_weights"] = tuple(_numbers(weights, f"{path}: node {node}: schedulingWeights"))
    return port


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
    text = read_text(path, "the link bandwidth file", StateError)
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
        links[i] = replace(links[i], capacity=capacity)
    return _Topology(n=topo.n, links=tuple(links), ports=topo.ports)


def _read_routing(path: Path, topo: _Topology) -> dict[tuple[str, str], tuple[str, ...]]:
    """Paths keyed by (src, dst) from a routing file in either variant (path lines or port matrix)."""
    text = read_text(path, "the routing file", StateError)
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
    tos_field = offset + SIZE_PARAMS[size_code]
    if len(values) > tos_field:
        kwargs["tos"] = int(values[tos_field])
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
