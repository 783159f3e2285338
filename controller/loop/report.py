"""The loop's report: the first iteration in full, every iteration in a few numbers, as JSON and
as a picture (per-path delay before/after and the loop's timeline). Delays in s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from controller.loop.closed_loop import IterationResult, Timeline
from mininet_topos.prometheus import PrometheusServer, browse_command
from twin.state.files import jsonable


def build_report(it: IterationResult, timeline: Timeline, metrics_url: str, store: Path) -> dict:
    """The first iteration ``it`` in full: measured before/after, the twin's error, what was validated
    and pushed, the timeline."""
    state, before, final, winner = it.state, it.before, it.final, it.winner
    return {
        "topology": state.name, "nodes": len(state.nodes), "links": len(state.links), "flows": len(state.flows),
        "measured": {"before": before.mean_delay(state), "after": final.mean_delay(state)},
        "improvement": 1.0 - final.mean_delay(state) / before.mean_delay(state),
        "twin_vs_emulation_mape": it.twin_mape,
        "twin_vs_emulation_mape_walk_unknown": it.twin_mape_walk_unknown,
        "walk": it.walk.to_dict() if it.walk else None,
        "measurement_noise_mape": it.noise_mape,
        "loop_s": it.loop_s,
        "pushed": it.pushed, "rolled_back": it.rolled_back,
        "pushed_weights": [float(w) for w in it.validations[winner].weights] if winner else None,
        "final_weights": [float(w) for w in it.final_weights],
        "validated": [v.to_dict(it.estimated) for v in it.validations],
        "optimizer": {"evaluations": it.optimization.evaluations, "wall_s": it.optimization.wall_s},
        "before": before.to_dict(state), "after": final.to_dict(state),
        "timeline": [{"phase": n, "start_s": a, "end_s": b} for n, a, b in timeline.phases],
        "metrics_url": metrics_url, "store": str(store),
    }


def summary(it: IterationResult) -> dict:
    """One iteration in a few numbers (delays s)."""
    state = it.state
    return {"iteration": it.k + 1, "event": it.event, "reoptimized": it.reoptimized, "pushed": it.pushed,
            "rolled_back": it.rolled_back, "before": it.before.mean_delay(state),
            "after": it.final.mean_delay(state), "loop_s": it.loop_s,
            "twin_vs_emulation_mape": it.twin_mape, "twin_vs_emulation_mape_walk_unknown": it.twin_mape_walk_unknown,
            "measurement_noise_mape": it.noise_mape, "final_weights": [float(w) for w in it.final_weights]}


def prometheus_check(prom: PrometheusServer, directory: Path) -> dict:
    """What the Prometheus server recorded of the run (after one more scrape), and how to browse it."""
    time.sleep(2.0)
    measured = prom.query('count(ndt_path_delay_seconds{kind="measured"})')
    changes = prom.query("max_over_time(ndt_routing_changes_total[1h])")
    return {"measured_delay_series": int(float(measured[0]["value"][1])) if measured else 0,
            "routing_changes": int(float(changes[0]["value"][1])) if changes else 0,
            "browse": browse_command(directory, 9090), "browse_url": "http://127.0.0.1:9090"}


def write_report(report: dict, it: IterationResult, timeline: Timeline, out_dir: Path) -> None:
    """report.json and report.png (per-path delay before/after; the loop's timeline) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state, before, after = it.state, it.before, it.final
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["report_json"], report["report_png"] = str(out_dir / "report.json"), str(out_dir / "report.png")
    (out_dir / "report.json").write_text(json.dumps(jsonable(report), indent=1))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 1]})
    order = np.argsort(-np.nan_to_num(before.delay))
    x = np.arange(len(order))
    ax1.bar(x - 0.2, 1e3 * before.delay[order], 0.4, label=f"before (mean {1e3 * before.mean_delay(state):.2f} ms)")
    ax1.bar(x + 0.2, 1e3 * after.delay[order], 0.4, label=f"after (mean {1e3 * after.mean_delay(state):.2f} ms)")
    ax1.set_xlabel("path (sorted by delay before)")
    ax1.set_ylabel("measured one-way delay, ms")
    ax1.set_title(f"{state.name}: measured per-path delay before/after the loop")
    ax1.legend()
    for i, (name, start, end) in enumerate(timeline.phases):
        ax2.barh(0, end - start, left=start, color=f"C{i % 10}", edgecolor="k")
        ax2.text((start + end) / 2, 0.45 + 0.3 * (i % 2), name, ha="center", fontsize=7)
    ax2.set_yticks([])
    ax2.set_ylim(-0.6, 1.0)
    ax2.set_xlabel(f"s since start (loop: telemetry → flow rules {report['loop_s']:.1f} s)")
    fig.tight_layout()
    fig.savefig(out_dir / "report.png", dpi=110)
    plt.close(fig)
