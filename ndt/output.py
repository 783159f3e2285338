"""Printing results: JSON for scripts (the command contract), aligned tables for people."""

from __future__ import annotations

import json
import sys

from twin.state.files import jsonable


def print_json(data) -> None:
    """One JSON document on stdout; NaN and infinities become null."""
    json.dump(jsonable(data), sys.stdout, indent=1)
    sys.stdout.write("\n")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, spec))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
