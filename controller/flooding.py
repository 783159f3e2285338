"""Frames the controller carries to every edge port: broadcast (DHCP), multicast (IPv6 router
advertisements, mDNS) and unicast to a MAC it has not learned (a DHCP server's answer to a client
that has no address yet). The switches send such frames to the controller (table-miss), which
packets them out of every other edge port and never into a link, so a loop in the wiring cannot
make a storm. A host that floods costs the controller, so each edge port has a budget. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLOOD_BURST_S = 2.0  # a port's bucket holds this many seconds of its rate (a DHCP exchange's burst)


def is_group_mac(mac: str) -> bool:
    """Broadcast or multicast: the group bit, the lowest bit of the first octet."""
    return bool(int(mac.split(":")[0], 16) & 1)


@dataclass
class FloodLimiter:
    """A token bucket per ingress port: ``rate_pps`` frames/s each, bursts of ``rate_pps`` ·
    :data:`FLOOD_BURST_S`. ``rate_pps`` 0 carries nothing."""

    rate_pps: float
    _buckets: dict = field(default_factory=dict)  # port → (tokens, at: monotonic s)

    def allow(self, port, now: float) -> bool:
        """True when a frame that came in at ``port`` (any hashable key) at ``now`` (s) may be carried."""
        if self.rate_pps <= 0:
            return False
        depth = self.rate_pps * FLOOD_BURST_S
        tokens, at = self._buckets.get(port, (depth, now))
        tokens = min(depth, tokens + (now - at) * self.rate_pps)
        allowed = tokens >= 1.0
        self._buckets[port] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
