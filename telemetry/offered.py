"""Packets offered to each link, from the counters of the route rules that send to its port, and the
loss on a link: what its rules sent to the port less what the port transmitted.

OpenFlow 1.3 has no per-port drop counter a switch must fill (Open vSwitch reports none for packets
its port's queue drops: they are lost after the port took them), but it counts every packet a rule
matched. A link's port is fed by the route rules of its switch that output to it, so over a window
the packets those rules matched, less the packets the port transmitted, are the packets lost at the
port (its queue full, the link's shaper or its driver dropping): the counter comparison OpenNetMon
makes between the first and last switch of a flow (van Adrichem et al., NOMS 2014), here per hop.
Ports fed by a select group (ECMP) are left out: the share of a group's packets each bucket sent is
not read. Counts in packets, times in s.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

Pair = tuple[str, str]


@dataclass(frozen=True)
class RuleReading:
    """One route rule in a flow-stats reply: ``key`` names it among its switch's rules, ``ports`` the
    ports its actions send to (several: a select group's; none: not known, a group not installed by
    this controller), ``age_s`` its duration, ``packets`` its packet count."""

    key: Hashable
    ports: tuple[int, ...]
    age_s: float
    packets: int


class OfferedPackets:
    """Per link, the packets its switch's route rules sent to its port since the controller began to
    count (a cumulative counter, like the port's own)."""

    def __init__(self):
        self._last: dict[int, dict[Hashable, int]] = {}  # switch → rule → packets at the last reading
        self.totals: dict[Pair, int] = {}

    def update(self, switch: int, readings: list[RuleReading], links: dict[int, Pair],
               since_last_s: float) -> dict[Pair, int]:
        """One reading of ``switch``'s route rules; ``links``: its ports → the links they feed;
        ``since_last_s``: time since its previous reading, s. Returns the totals of the links every
        packet of which is counted (not fed by a select group).

        A rule's packets since its last reading are added; a rule first seen is counted whole when it
        is younger than the previous reading (installed since), else it only starts being counted."""
        last = self._last.get(switch)
        now: dict[Hashable, int] = {}
        shared: set[int] = set()
        for rule in readings:
            now[rule.key] = rule.packets
            if len(rule.ports) != 1:
                shared.update(rule.ports or links)
                continue
            link = links.get(rule.ports[0])
            if link is None:
                continue
            before = None if last is None else last.get(rule.key)
            if before is None:
                added = rule.packets if last is not None and rule.age_s <= since_last_s else 0
            else:
                added = rule.packets - before if rule.packets >= before else rule.packets
            self.totals[link] = self.totals.get(link, 0) + added
        self._last[switch] = now
        counted = {}
        for port, link in links.items():
            if port not in shared:
                counted[link] = self.totals.setdefault(link, 0)
        return counted

    def forget(self, switch: int) -> None:
        """``switch`` disconnected: its rules' counts start again when it is back."""
        self._last.pop(switch, None)


def window_losses(offered, carried) -> dict[Pair, tuple[int, int]]:
    """Per link, (packets offered, packets transmitted) between its first and last sample in a window:
    ``offered`` holds :class:`telemetry.store.PairValue` rows of the offered counter, ``carried``
    :class:`telemetry.store.LinkSample` rows (both in time order). A link is left out when either
    counter has fewer than two samples, is unsupported, or went back (the switch reconnected)."""
    offered_spans = _spans(((s.src, s.dst), s.value) for s in offered)
    carried_spans = _spans(((s.src, s.dst), s.tx_packets) for s in carried)
    return {pair: (int(offered_spans[pair]), int(carried_spans[pair]))
            for pair in offered_spans.keys() & carried_spans.keys()}


def _spans(readings) -> dict[Pair, float]:
    """Per key, its counter's last reading less its first, where it has two or more readings, every
    one supported (not None), and never went back."""
    first: dict = {}
    last: dict = {}
    count: dict = {}
    broken = set()
    for key, value in readings:
        if value is None or (key in last and value < last[key]):
            broken.add(key)
            continue
        first.setdefault(key, value)
        last[key] = value
        count[key] = count.get(key, 0) + 1
    return {key: last[key] - first[key] for key in first if key not in broken and count[key] >= 2}
