"""Reading the JSON files users hand to ndt, with errors that name the file and the place, and
turning results into plain JSON values."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_json(path, what: str, error: type[Exception], hint: str = ""):
    """The parsed content of ``path``; an unreadable or malformed file raises ``error``.

    what: how the message calls the file ("the state file"); hint: appended to the
    message when the file cannot be read (e.g. how to create it).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror}){hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def jsonable(value):
    """``value`` as plain JSON: NaN and infinities become None, numpy scalars Python numbers,
    tuples lists (recursively through dicts and lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    return value
