"""Pings for the tests that count lost ones: every reply waited for, the lost ones named."""

from __future__ import annotations

import math
import re

DEADLINE_MARGIN_S = 5


def ping_deadline(count: int, interval_s: float) -> int:
    """The ``ping -w`` deadline (s) for ``count`` pings ``interval_s`` apart: with ``-c`` it waits for
    every reply up to then. ``-W`` would not do: after the last ping, iputils waits only twice the
    largest round trip so far, so a reply delayed by a switch-over counts as lost. Twice the sending
    time, as a busy host may send slower than asked (the deadline stops the sending too)."""
    return math.ceil(2 * count * interval_s) + DEADLINE_MARGIN_S


def ping_command(dst_ip: str, count: int, interval_s: float) -> list[str]:
    """``ping`` of ``count`` echo requests ``interval_s`` apart, one line per reply (for :func:`lost_pings`)."""
    return ["ping", "-n", "-i", str(interval_s), "-w", str(ping_deadline(count, interval_s)), "-c", str(count), dst_ip]


def ping_counts(output: str) -> tuple[int, int]:
    """(sent, received) from ping's summary line."""
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert summary, output
    return int(summary.group(1)), int(summary.group(2))


def lost_pings(output: str) -> tuple[int, int, list[int]]:
    """(sent, received, sequence numbers without a reply) from the output of :func:`ping_command`."""
    sent, received = ping_counts(output)
    answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", output)}
    return sent, received, [seq for seq in range(1, sent + 1) if seq not in answered]
