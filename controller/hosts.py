"""Where each host is, as the controller learns it from ARP and IPv6 neighbour discovery on edge
ports. Pure: the os-ken app holds its own lock around it.

Two tables: a MAC's place (switch and port), which the route and counting rules follow, and each
address's MAC, which ARP answers and the probes' targets need. A host (or router) with several
addresses is one MAC; an address passing to another MAC leaves the first MAC's routes in place; a
MAC seen at another port takes its addresses with it. A MAC is forgotten, with its addresses, when
its port goes down or it has not been heard from (an announcement, or frames its counting rules
counted) for the ageing time, as an Ethernet bridge ages its table (IEEE 802.1D: 300 s).
"""

from __future__ import annotations

import time
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


@dataclass(frozen=True)
class Forgotten:
    """What forgetting some MACs removed: one host per MAC (at its place), and every address they had."""

    macs: list[Host]
    addresses: list[Host]


class HostTable:
    """The hosts learned so far, by MAC and by address (IPv4 or IPv6), and when each MAC was last
    heard from (``clock`` s)."""

    def __init__(self, clock=time.monotonic):
        self._by_mac: dict[str, Host] = {}
        self._by_address: dict[str, Host] = {}
        self._clock = clock
        self._heard: dict[str, float] = {}  # MAC → when it was last heard from

    def learn(self, host: Host) -> Learned:
        """Record that ``host.ip`` is at ``host.mac``, which is at ``host.switch`` port ``host.port``."""
        known = self._by_mac.get(host.mac)
        self._heard[host.mac] = self._clock()
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

    def heard(self, macs) -> None:
        """``macs`` have sent frames now (their counting rules counted bytes since their last reading);
        unknown MACs are skipped."""
        now = self._clock()
        for mac in macs:
            if mac in self._by_mac:
                self._heard[mac] = now

    def refresh(self, switch: str) -> None:
        """Every MAC at ``switch`` is heard from now (its switch has just reconnected: while it was
        away its counting rules could not be read)."""
        now = self._clock()
        for mac, host in self._by_mac.items():
            if host.switch == switch:
                self._heard[mac] = now

    def silent(self, age_s: float, switches: set[str]) -> list[Host]:
        """One host per MAC at one of ``switches`` (those whose rules are read) not heard from for
        ``age_s`` s or more."""
        now = self._clock()
        return [host for mac, host in self._by_mac.items()
                if host.switch in switches and now - self._heard.get(mac, now) >= age_s]

    def at(self, switch: str, port: int) -> list[Host]:
        """One host per MAC at ``switch`` port ``port``."""
        return [host for host in self._by_mac.values() if (host.switch, host.port) == (switch, port)]

    def forget(self, macs: list[str]) -> Forgotten:
        """Drop ``macs`` (unknown ones are skipped) and every address they had."""
        gone = [self._by_mac.pop(mac) for mac in dict.fromkeys(macs) if mac in self._by_mac]
        names = {host.mac for host in gone}
        addresses = [host for host in self._by_address.values() if host.mac in names]
        for host in addresses:
            del self._by_address[host.ip]
        for mac in names:
            self._heard.pop(mac, None)
        return Forgotten(gone, addresses)

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
