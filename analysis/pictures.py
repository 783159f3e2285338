"""Pictures of what-if and N-1 results: the topology on its coordinates, links coloured by utilization
and by what a failure does to delay. Coordinates come from topohub when the state is named by a topohub
key (longitude/latitude for real networks), otherwise from a seeded spring layout."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

from twin.state.model import NetworkState
from twin.state.topologies import topohub_positions

MAX_LABELLED_NODES = 30  # above this, names would cover the map


def node_positions(state: NetworkState) -> dict[str, tuple[float, float]]:
    """Drawing coordinates per node name."""
    known = topohub_positions(state.name) if state.name else None
    if known and set(state.nodes) <= set(known):
        return {n: known[n] for n in state.nodes}
    graph = nx.Graph((lk.src, lk.dst) for lk in state.links)
    graph.add_nodes_from(state.nodes)
    return {n: tuple(p) for n, p in nx.spring_layout(graph, seed=0).items()}


def _undirected(values: dict) -> dict:
    """Per unordered node pair, the larger of the two directions' values."""
    out = {}
    for (a, b), v in values.items():
        key = tuple(sorted((a, b)))
        out[key] = max(out.get(key, -np.inf), v)
    return out


def _draw_links(ax, positions, values: dict, cmap, norm, width=2.5, style="-"):
    import matplotlib.pyplot as plt

    for (a, b), v in values.items():
        (x0, y0), (x1, y1) = positions[a], positions[b]
        ax.plot([x0, x1], [y0, y1], style, color=plt.get_cmap(cmap)(norm(v)), linewidth=width, zorder=1,
                solid_capstyle="round")


def _frame(ax, title: str, positions: dict):
    ax.set_title(title, fontsize=10)
    if len(positions) <= MAX_LABELLED_NODES:
        for name, (x, y) in positions.items():
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#222222")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


def n_minus_1_picture(state: NetworkState, report: dict, path) -> Path:
    """Two maps of an N-1 sweep (``analysis.whatif.n_minus_1``): left, each link's worst utilization over
    every single failure; right, each link and node coloured by the mean delay increase its own failure
    causes, those whose failure cuts demands off drawn in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    positions = node_positions(state)
    worst = {(lk.src, lk.dst): u for lk, u in zip(state.links, state.utilization())}
    for case in report["cases"]:
        for link, u in case.link_utilization.items():
            worst[link] = max(worst[link], u)
    worst = _undirected(worst)
    increase, node_increase, cutting = {}, {}, set()
    for case in report["cases"]:
        value = case.mean_delay_increase * 1e3 if np.isfinite(case.mean_delay_increase) else 0.0
        if case.kind == "link":
            increase[tuple(sorted(case.elements))] = value
            if case.cut:
                cutting.add(tuple(sorted(case.elements)))
        else:
            node_increase[case.elements[0]] = value
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    u_norm = Normalize(0.0, max(1.0, max(worst.values(), default=1.0)))
    _draw_links(left, positions, worst, "RdYlGn_r", u_norm)
    xy = np.array([positions[n] for n in state.nodes])
    left.scatter(xy[:, 0], xy[:, 1], s=18, color="#333333", zorder=2)
    fig.colorbar(plt.cm.ScalarMappable(norm=u_norm, cmap="RdYlGn_r"), ax=left, shrink=0.7,
                 label="worst utilization over all single failures")
    _frame(left, f"{state.name or 'network'}: worst-case link load under N-1", positions)
    values = list(increase.values()) + list(node_increase.values())
    d_norm = Normalize(min(0.0, min(values, default=0.0)), max(1e-9, max(values, default=0.0)))
    _draw_links(right, positions, {k: v for k, v in increase.items() if k not in cutting}, "viridis", d_norm)
    _draw_links(right, positions, {k: 0.0 for k in cutting}, "Greys", Normalize(-1, 0), width=3.0, style="--")
    colours = [node_increase.get(n, 0.0) for n in state.nodes]
    right.scatter(xy[:, 0], xy[:, 1], s=40, c=colours, cmap="viridis", norm=d_norm, edgecolors="#333333", zorder=2)
    fig.colorbar(plt.cm.ScalarMappable(norm=d_norm, cmap="viridis"), ax=right, shrink=0.7,
                 label="mean delay increase when this fails, ms")
    _frame(right, "impact of each failure (dashed black: cuts demands off)", positions)
    worst_cases = ", ".join(c.failed for c in report["cases"][:3])
    fig.suptitle(f"N-1: {len(report['cases'])} single failures in {report['elapsed_s']:.1f} s; worst: {worst_cases}",
                 fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def what_if_picture(before: NetworkState, report: dict, path) -> Path:
    """Two maps of one what-if (``analysis.whatif.what_if``): left, link utilization after the change
    (failed links dashed grey); right, the change of each link's utilization and, on the nodes, the
    change of the mean delay of the paths leaving them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, TwoSlopeNorm

    positions = node_positions(before)
    rows = report["links"]
    after_u = _undirected({(r["src"], r["dst"]): r["utilization_after"] for r in rows
                           if r["utilization_after"] is not None})
    change = _undirected({(r["src"], r["dst"]): r["utilization_after"] - r["utilization_before"] for r in rows
                          if r["utilization_after"] is not None})
    failed = {tuple(sorted((r["src"], r["dst"]))) for r in rows if r["utilization_after"] is None}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    u_norm = Normalize(0.0, max(1.0, max(after_u.values(), default=1.0)))
    _draw_links(left, positions, after_u, "RdYlGn_r", u_norm)
    for ax in (left, right):
        _draw_links(ax, positions, {k: 0.5 for k in failed}, "Greys", Normalize(0, 1), width=1.5, style="--")
    xy = np.array([positions[n] for n in before.nodes])
    left.scatter(xy[:, 0], xy[:, 1], s=18, color="#333333", zorder=2)
    fig.colorbar(plt.cm.ScalarMappable(norm=u_norm, cmap="RdYlGn_r"), ax=left, shrink=0.7, label="utilization after")
    _frame(left, "link load after the change (dashed: failed)", positions)
    span = max(1e-6, max((abs(v) for v in change.values()), default=1e-6))
    c_norm = TwoSlopeNorm(0.0, -span, span)
    _draw_links(right, positions, change, "coolwarm", c_norm)
    delay_change = {}
    for p in report["paths"]:
        if p["delay_before"] is not None:
            delay_change.setdefault(p["src"], []).append(p["delay"] - p["delay_before"])
    node_values = [1e3 * float(np.mean(delay_change[n])) if n in delay_change else 0.0 for n in before.nodes]
    d_span = max(1e-6, max(abs(v) for v in node_values))
    right.scatter(xy[:, 0], xy[:, 1], s=40, c=node_values, cmap="PuOr_r", norm=TwoSlopeNorm(0.0, -d_span, d_span),
                  edgecolors="#333333", zorder=2)
    fig.colorbar(plt.cm.ScalarMappable(norm=c_norm, cmap="coolwarm"), ax=right, shrink=0.7,
                 label="utilization change (links)")
    fig.colorbar(plt.cm.ScalarMappable(norm=TwoSlopeNorm(0.0, -d_span, d_span), cmap="PuOr_r"), ax=right, shrink=0.7,
                 label="mean delay change of paths leaving the node, ms")
    _frame(right, "what the change does", positions)
    fig.suptitle(f"{before.name or 'network'}: {report['scenario']}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
