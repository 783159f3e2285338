"""Command-line option types that refuse what no run can use: argparse then prints one line naming
the option and the allowed range, exit code 2."""

from __future__ import annotations

import argparse
import ipaddress
import math
from pathlib import Path

MAX_SEED = 2**32 - 1  # numpy's seed range


def number(low: float | None = None, high: float | None = None, integer: bool = False, open_low: bool = False,
           open_high: bool = False, unit: str = ""):
    """An argparse ``type``: a finite number (a whole one with ``integer``) within [low, high]
    (``open_low``, ``open_high``: that bound itself excluded)."""

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if integer else 'a number'}, "
                                             f"got {text[:40]!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
        too_low = low is not None and (value <= low if open_low else value < low)
        too_high = high is not None and (value >= high if open_high else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high, open_low, open_high)}{unit}, got {text[:40]}")
        return value

    return parse


def _bounds(low, high, open_low: bool, open_high: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '>='} {_plain(low)}")
    if high is not None:
        parts.append(f"{'<' if open_high else '<='} {_plain(high)}")
    return " and ".join(parts)


def _plain(bound: float) -> str:
    """A bound as people write it: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e16 else f"{bound:g}"


def port(allow_zero: bool = False):
    """A TCP port 1..65535 (0 too with ``allow_zero``: any free port)."""
    return number(0 if allow_zero else 1, 65535, integer=True)


seed = number(0, MAX_SEED, integer=True)
workers = number(1, 1024, integer=True)


def ip_address(text: str) -> str:
    """An IPv4 or IPv6 address literal (a listen address)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address such as 127.0.0.1 or ::1, got {text[:40]!r}") from None


def host_port(text: str) -> str:
    """``HOST:PORT`` of a server (a bracketed IPv6 literal allowed), the port from 1 to 65535."""
    from controller.api.server import split_address
    from twin.state.errors import NdtError

    try:
        port = split_address(text)[1]
    except NdtError:
        port = 0
    if port == 0:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:50051; "
                                         f"got {text[:60]!r}")
    return text


def directory(text: str) -> Path:
    """A directory that exists (to read from)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {'not a directory' if path.exists() else 'no such directory'}")
    return path


def output_file(text: str) -> Path:
    """A file to write: not a directory, in a folder that exists (refused before any work is done)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file in it")
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {str(folder)!r} does not exist")
    return path


PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


def picture_path(text: str) -> Path:
    """A file to draw a picture into: .png, .svg or .pdf (matplotlib picks the format by the suffix)."""
    path = output_file(text)
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r}: a picture is written as {', '.join(PICTURE_SUFFIXES)}")
    return path
