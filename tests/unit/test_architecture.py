"""The layout's rules, read from the source: imports point down the floors only (CLI → controller
and its loop → emulation / optimizer / telemetry → the twin's calibration → models → data →
simulator → network state, with the operators' analyses between the controller and the
optimizer), peers on a floor do not import each other, nothing imports the CLI,
and the module import graph has no cycle (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ndt", "controller", "analysis", "mininet_topos", "optimizer", "telemetry", "twin")
FLOORS = {  # package → floor; higher floors may import lower ones
    "ndt": 8,
    "controller": 7,
    "analysis": 6,
    "mininet_topos": 5, "optimizer": 5, "telemetry": 5,
    "twin.calibration": 4,
    "twin.models": 3,
    "twin.data": 2,
    "twin.sim": 1,
    "twin.state": 0,
}


def owner(module: str) -> str:
    """The floor-bearing package ``module`` belongs to (the longest prefix in FLOORS)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no floor: add its package to FLOORS")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> nx.DiGraph:
    mods = modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(mods)
    for name, path in mods.items():
        for target in imports(path, set(mods)):
            if target != name and not name.startswith(target + "."):  # a package's own __init__ is no edge
                graph.add_edge(name, target)
    return graph


def upward_imports(graph: nx.DiGraph) -> list[str]:
    """Edges from a package to another on the same floor or above."""
    return [f"{s} (floor {FLOORS[owner(s)]}) imports {t} (floor {FLOORS[owner(t)]})" for s, t in graph.edges
            if owner(s) != owner(t) and FLOORS[owner(t)] >= FLOORS[owner(s)]]


def test_imports_point_down_the_floors_only():
    wrong = upward_imports(import_graph())
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_cli_and_there_is_no_cycle():
    graph = import_graph()
    into_cli = [f"{s} -> {t}" for s, t in graph.edges if owner(t) == "ndt" and owner(s) != "ndt"]
    assert not into_cli, into_cli
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_the_rules_catch_an_upward_import_a_peer_import_and_a_cycle():
    graph = nx.DiGraph([("twin.state.model", "controller.app"), ("optimizer.search", "telemetry.store"),
                        ("controller.app", "twin.state.model"), ("twin.models.qt", "twin.models.features")])
    assert upward_imports(graph) == ["twin.state.model (floor 0) imports controller.app (floor 7)",
                                     "optimizer.search (floor 5) imports telemetry.store (floor 5)"]
    assert [sorted(cycle) for cycle in nx.simple_cycles(graph)] == [["controller.app", "twin.state.model"]]


SHORT = {"calibration": "twin.calibration", "models": "twin.models", "data": "twin.data", "sim": "twin.sim",
         "state": "twin.state"}


def test_the_picture_in_docs_architecture_matches_the_imports():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = {tuple(SHORT.get(x.strip(), x.strip()) for x in line.split("-->")) for line in map(str.strip, block.splitlines())
             if "-->" in line}
    actual = {(owner(s), owner(t)) for s, t in import_graph().edges if owner(s) != owner(t)}
    assert drawn == actual, f"missing from the picture: {sorted(actual - drawn)}; not in the code: {sorted(drawn - actual)}"
