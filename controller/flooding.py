"""Frames the controller carries to every edge port: broadcast (ARP, DHCP), multicast (IPv6 router
advertisements, mDNS) and unicast to a MAC it has not learned (a DHCP server's answer to a client
that has no address yet). The switches send such frames to the controller (table-miss), which
packets them out of every other edge port and never into a link of the wiring, so the links ndt
knows cannot loop them. A host that floods costs the controller (a packet-in, then a packet-out
per edge port), so each edge port has a budget. Before that, where the switch has OpenFlow meters,
its packet-in meter (:func:`packet_in_meter`) bounds what reaches the controller from it at all, so
a flood is dropped by the switch instead of costing the controller a packet-in per frame. Pure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from os_ken.ofproto.ofproto_v1_3 import OFPMBT_DROP, OFPMF_BURST, OFPMF_PKTPS, OFPMF_STATS

FLOOD_BURST_S = 2.0  # a port's bucket holds this many seconds of its rate (a DHCP exchange's burst)
LINK_LOCAL_GROUPS = "01:80:c2:00:00:0"  # 01:80:c2:00:00:00-0f: STP, LACP, 802.1X, LLDP; no bridge forwards them



@dataclass(frozen=True)
class MeterPlan:
    """A packet-in meter to install: its flags (OpenFlow 1.3 ``OFPMF_*``), the drop band's rate and
    burst (packets/s, packets)."""

    flags: int
    rate: int
    burst: int


def packet_in_meter(rate_pps: float, max_meter: int, band_types: int, capabilities: int,
                    meter_id: int) -> MeterPlan | str:
    """The packet-in meter a switch gets at ``rate_pps`` (a burst of one second's frames where the
    switch takes a burst size, and counters where it keeps them), from its meter features (OpenFlow
    1.3 ``OFPMeterFeaturesStats``: the highest meter id, the band types and the capabilities as
    bitmaps), or why it gets none."""
    if rate_pps <= 0:
        return "--packet-in-rate is 0"
    if max_meter < meter_id:
        return f"it has no OpenFlow meters (max_meter {max_meter})"
    if not band_types & (1 << OFPMBT_DROP) or not capabilities & OFPMF_PKTPS:
        return "its meters cannot drop by packets per second"
    rate = max(1, round(rate_pps))
    burst = capabilities & OFPMF_BURST
    return MeterPlan(OFPMF_PKTPS | burst | (capabilities & OFPMF_STATS), rate, rate if burst else 0)


def is_group_mac(mac: str) -> bool:
    """Broadcast or multicast: the group bit, the lowest bit of the first octet."""
    return bool(int(mac.split(":")[0], 16) & 1)


def may_flood(dst_mac: str) -> bool:
    """Whether a frame to ``dst_mac`` may be carried to other ports at all: not to the IEEE 802.1D
    link-local group addresses, which end at the first bridge."""
    return not dst_mac.lower().startswith(LINK_LOCAL_GROUPS)


@dataclass
class FloodLimiter:
    """A token bucket per ingress port: ``rate_pps`` frames/s each, in bursts of ``rate_pps`` ·
    :data:`FLOOD_BURST_S` (at least one frame). ``rate_pps`` 0 carries nothing. ``clock``: s."""

    rate_pps: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict = field(default_factory=dict, init=False, repr=False)  # port → (tokens, at)

    def allow(self, port) -> bool:
        """True when a frame that came in at ``port`` (any hashable key) now may be carried."""
        if self.rate_pps <= 0:
            return False
        now = self.clock()
        depth = max(1.0, self.rate_pps * FLOOD_BURST_S)
        tokens, at = self._buckets.get(port, (depth, now))
        tokens = min(depth, tokens + (now - at) * self.rate_pps)
        allowed = tokens >= 1.0
        self._buckets[port] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
