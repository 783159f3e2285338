"""Where each host is, as the controller learns it from ARP and IPv6 neighbour discovery on edge
ports. Pure: the os-ken app holds its own lock around it.

Two tables: a MAC's place (switch and port), which the route and counting rules follow, and each
address's MAC, which ARP answers and the probes' targets need. A host (or router) with several
addresses is one MAC; an address passing to another MAC leaves the first MAC's routes in place; a
MAC seen at another port takes its addresses with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.routing_rules import Host


@dataclass(frozen=True)
class Learned:
    """What one announcement changed. ``place``: a MAC is new or at another port (the route and
    counting rules change); ``address``: an address is new or at another MAC (the probes' targets
    and rules); ``moved_from``: the MAC's earlier (switch, port) when it moved; ``replaced``: the
    address's earlier host when it was at another MAC."""

    place: bool
    address: bool
    moved_from: tuple[str, int] | None = None
    replaced: Host | None = None


class HostTable:
    """The hosts learned so far, by MAC and by address (IPv4 or IPv6)."""

    def __init__(self):
        self._by_mac: dict[str, Host] = {}
        self._by_address: dict[str, Host] = {}

    def learn(self, host: Host) -> Learned:
        """Record that ``host.ip`` is at ``host.mac``, which is at ``host.switch`` port ``host.port``."""
        known = self._by_mac.get(host.mac)
        moved_from = None
        place = known is None or (known.switch, known.port) != (host.switch, host.port)
        if known is None:
            self._by_mac[host.mac] = host
        elif place:
            moved_from = (known.switch, known.port)
            self._by_mac[host.mac] = replace(known, switch=host.switch, port=host.port)
            for address, entry in self._by_address.items():
                if entry.mac == host.mac:
                    self._by_address[address] = replace(entry, switch=host.switch, port=host.port)
        earlier = self._by_address.get(host.ip)
        self._by_address[host.ip] = host
        replaced = earlier if earlier is not None and earlier.mac != host.mac else None
        return Learned(place, earlier != host, moved_from, replaced)

    def by_mac(self, mac: str) -> Host | None:
        return self._by_mac.get(mac)

    def by_address(self, address: str) -> Host | None:
        return self._by_address.get(address)

    def macs(self) -> list[Host]:
        """One host per MAC, at its place (labelled with the first address learned for it)."""
        return list(self._by_mac.values())

    def addresses(self) -> list[Host]:
        """One host per address."""
        return list(self._by_address.values())
