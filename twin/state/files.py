"""Reading the JSON files users hand to ndt, with errors that name the file and the place, and
turning results into plain JSON values."""

from __future__ import annotations

import json
import math
from pathlib import Path

from twin.state.errors import NdtError

MAX_FILE_BYTES = 512 * 2**20  # an input file larger than this is refused before it is read


def read_text(path, what: str, error: type[Exception] = NdtError, hint: str = "",
              max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable, oversized or non-UTF-8 file raises ``error``
    naming the file (``what``: how the message calls it; ``hint``: appended when it cannot be read)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{path}: is a directory, not {what}")
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path}: {size / 2**20:.0f} MiB, larger than {what} may be ({max_bytes / 2**20:.0f} MiB)")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror}){hint}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise error(f"{path}: {what} is UTF-16; ndt reads UTF-8 (convert it: iconv -f UTF-16 -t UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start}, line {line})") from None


class _KeyGivenTwice(Exception):
    pass


def _object_without_repeats(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _KeyGivenTwice(key)
            seen.add(key)
    return out


def parse_json(text: str, error: type[Exception] = NdtError):
    """Parsed JSON; malformed text, a key given twice in one object, nesting deeper than Python's
    recursion limit or an integer of more than 4,300 digits raise ``error`` saying where."""
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeats)
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except _KeyGivenTwice as exc:
        raise error(f"key {exc.args[0]!r} is given twice in one JSON object; which one is meant?") from None
    except RecursionError:
        raise error("JSON nested too deeply (more than about 1,000 levels)") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise error("JSON holds an integer of more than 4,300 digits") from None


def read_json(path, what: str, error: type[Exception], hint: str = ""):
    """The parsed content of ``path``; an unreadable or malformed file raises ``error``.

    what: how the message calls the file ("the state file"); hint: appended to the
    message when the file cannot be read (e.g. how to create it).
    """
    text = read_text(path, what, error, hint)
    try:
        return parse_json(text, error)
    except error as exc:
        raise error(f"{path}: {exc}") from None


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
