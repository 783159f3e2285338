"""The timeline picture of a capacity plan (:func:`analysis.plan.plan`): month by month, the utilization
of the busiest links under the current weights, the threshold, the busiest link under the re-optimized
weights, and above them the month each of the intent's constraints first breaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.plan import Plan

BUSIEST = 6  # links drawn
CONSTRAINT_ROWS = 8  # constraints drawn in the strip above, the earliest to break


def timeline_picture(plan: Plan, path, busiest: int = BUSIEST) -> Path:
    """Write the picture of ``plan`` to ``path`` (PNG) and return the path: below, utilization by month;
    above (when the intent breaks), a row per constraint marking the month it first breaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    current, state = plan.current, plan.current.state
    rows = plan.constraint_rows()
    if rows:
        strip_height = 0.35 * min(len(rows), CONSTRAINT_ROWS) + 0.9
        fig, (strip, ax) = plt.subplots(2, 1, sharex=True, figsize=(13, 6 + strip_height),
                                        gridspec_kw={"height_ratios": [strip_height, 6]})
        _constraint_strip(strip, rows, plan.horizon)
    else:
        fig, ax = plt.subplots(figsize=(13, 6))
    months = np.arange(plan.horizon + 1)
    order = np.argsort(-current.utilization[-1])[:busiest]
    over = current.month_over(plan.threshold)
    for rank, i in enumerate(order):
        link = state.links[i]
        colour = f"C{rank % 10}"
        crossing = f", over from month {over[i]}" if over[i] is not None else ""
        ax.plot(months, current.utilization[:, i], "-", color=colour, linewidth=2,
                label=f"{link.src}→{link.dst}{crossing}")
        if over[i] is not None:
            ax.plot(over[i], current.utilization[over[i], i], "o", color=colour, markersize=7, zorder=3)
    if plan.reoptimized is not None:
        top = order[0]
        link = state.links[top]
        again = plan.reoptimized.month_over(plan.threshold)[top]
        ax.plot(months, plan.reoptimized.utilization[:, top], "--", color="C0", linewidth=2,
                label=f"{link.src}→{link.dst}, re-optimized weights"
                      + (f", over from month {again}" if again is not None else ", never over"))
    ax.axhline(plan.threshold, color="0.3", linestyle=":", linewidth=1.5, label=f"threshold {plan.threshold:g}")
    ax.set_xlim(-0.02 * plan.horizon, 1.02 * plan.horizon)
    ax.set_ylim(0, max(1.05 * float(current.utilization[:, order].max()), 1.15 * plan.threshold))
    ax.set_xlabel("month")
    ax.set_ylabel("utilization (offered load / capacity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="busiest links, current weights",
              title_fontsize=8)
    overrides = " (with overrides)" if plan.growth.nodes or plan.growth.pairs else ""
    first = current.first_month(plan.threshold)
    fig.suptitle(f"{state.name or 'network'}: growth {100 * plan.growth.rate:g} %/month{overrides} over "
                 f"{plan.horizon} months; first problem under the current weights: "
                 f"{'none' if first is None else f'month {first}'}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _constraint_strip(ax, rows: list[dict], horizon: int) -> None:
    """One row per constraint (the earliest to break), named beside its marks: a filled triangle at the
    month it first breaks under the current weights, a hollow one under the re-optimized weights."""
    drawn = rows[:CONSTRAINT_ROWS]
    for y, row in enumerate(drawn):
        marks = [m for m in (row["month_violated"], row["month_violated_reoptimized"]) if m is not None]
        if row["month_violated"] is not None:
            ax.plot(row["month_violated"], y, "v", color="red", markersize=9, clip_on=False,
                    label="current weights" if y == 0 else None)
        if row["month_violated_reoptimized"] is not None:
            ax.plot(row["month_violated_reoptimized"], y, "v", markerfacecolor="none", markeredgecolor="red",
                    markersize=13, clip_on=False, label="re-optimized weights" if y == 0 else None)
        left = min(marks) > horizon / 2
        ax.annotate(f"{row['constraint']} {row['what']}", ((min(marks) if left else max(marks)), y),
                    xytext=(-10 if left else 10, 0), textcoords="offset points", fontsize=8, va="center",
                    ha="right" if left else "left")
    ax.set_yticks([])
    ax.set_ylim(len(drawn) - 0.4, -0.6)
    more = f" ({len(rows) - CONSTRAINT_ROWS} more in the report)" if len(rows) > CONSTRAINT_ROWS else ""
    ax.set_title(f"intent constraints: the month each is first violated{more}", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="first violated under",
              title_fontsize=8)
