"""Frames the controller carries to every edge port: broadcast (ARP, DHCP), multicast (IPv6 router
advertisements, mDNS) and unicast to a MAC it has not learned (a DHCP server's answer to a client
that has no address yet). The switches send such frames to the controller (table-miss), which
packets them out of every other edge port and never into a link of the wiring, so the links ndt
knows cannot loop them. A host that floods costs the controller (a packet-in, then a packet-out
per edge port), so each edge port has a budget. Pure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

FLOOD_BURST_S = 2.0  # a port's bucket holds this many seconds of its rate (a DHCP exchange's burst)
LINK_LOCAL_GROUPS = "01:80:c2:00:00:0"  # 01:80:c2:00:00:00-0f: STP, LACP, 802.1X, LLDP; no bridge forwards them


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
