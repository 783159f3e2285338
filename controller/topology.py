"""The wiring file: which OpenFlow switch and port each node and link of a state is.

JSON: ``{"dpids": {"s1": 1, ...}, "ports": {"s1->s2": 2, ...}}``. A datapath id is a number or,
as Open vSwitch prints it, hexadecimal text: ``"0x1a"``, ``"000000000000001a"`` (16 digits) or
``"00:00:00:00:00:00:00:1a"``. ``dpids`` may be left out when every node name ends in its
datapath id in decimal (Mininet's ``s1`` → 1). Every link of
the state needs its output port, unless ``discover`` is set: then the ports come from LLDP
and the file (or no file at all) may give only dpids. Errors name the file and the bad key.
"""

from __future__ import annotations

import re

from controller.routing_rules import RuleError, Wiring
from twin.state.errors import shown
from twin.state.files import read_json
from twin.state.model import NetworkState

MAX_DPID = 2**64 - 1  # OpenFlow datapath ids are 64 bits


def wiring_from_dict(data, state: NetworkState, where: str = "wiring", discover: bool = False) -> Wiring:
    """Build and check a :class:`Wiring` for ``state`` from the parsed JSON object."""
    if not isinstance(data, dict):
        raise RuleError(f"{where}: expected an object with 'dpids' and 'ports'")
    unknown = set(data) - {"dpids", "ports"}
    if unknown:
        raise RuleError(f"{where}: unknown field {sorted(unknown)[0]!r} (known: dpids, ports)")
    dpids = data.get("dpids")
    if dpids is None:
        dpids = {node: _trailing_int(node, where) for node in state.nodes}
    if not isinstance(dpids, dict):
        raise RuleError(f"{where}: 'dpids' must map switch names to datapath ids")
    dpids = {name: _dpid(value, f"{where}: dpids[{name!r}]") for name, value in dpids.items()}
    raw_ports = data.get("ports", {} if discover else None)
    if not isinstance(raw_ports, dict):
        raise RuleError(f"{where}: 'ports' must map 'src->dst' to the output port on src")
    ports = {}
    for key, port in raw_ports.items():
        parts = key.split("->")
        if len(parts) != 2 or not all(parts):
            raise RuleError(f"{where}: ports key {key!r} is not of the form 'src->dst'")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFFFF00:
            raise RuleError(f"{where}: ports[{key!r}] must be an OpenFlow port number >= 1, got {shown(port)}")
        ports[(parts[0], parts[1])] = port
    wiring = Wiring(dpids=dict(dpids), ports=ports)
    try:
        wiring.check(state, frozenset(state.link_index) if discover else frozenset())
    except RuleError as exc:
        raise RuleError(f"{where}: {exc}") from None
    for (src, dst) in ports:
        if (src, dst) not in state.link_index:
            raise RuleError(f"{where}: ports names link {src}->{dst}, which is not in the state")
    return wiring


def load_wiring(path, state: NetworkState, discover: bool = False) -> Wiring:
    """The wiring from a file; with ``discover`` and no file, dpids from the node names and no ports."""
    if path is None:
        if not discover:
            raise RuleError("a wiring file is needed unless links are discovered (LLDP)")
        return wiring_from_dict({}, state, "wiring", discover=True)
    data = read_json(path, "the wiring file", RuleError)
    return wiring_from_dict(data, state, str(path), discover)


def _dpid(value, what: str) -> int:
    """A datapath id from a number or hexadecimal text (:mod:`controller.topology`'s forms)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"0x[0-9a-f]{1,16}|[0-9a-f]{16}|([0-9a-f]{2}:){7}[0-9a-f]{2}", text):
            return int(text.removeprefix("0x").replace(":", ""), 16)
        raise RuleError(f"{what}: {shown(value)} is not a datapath id; give a number, or hexadecimal as Open vSwitch "
                        "prints it: '0x1a', '000000000000001a' or '00:00:00:00:00:00:00:1a'")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DPID:
        raise RuleError(f"{what} must be a datapath id from 0 to 2**64-1, got {shown(value)}")
    return value


def _trailing_int(name: str, where: str) -> int:
    match = re.search(r"(\d+)$", name)
    if match is None:
        raise RuleError(f"{where}: switch {name!r} has no trailing number; give its datapath id in 'dpids'")
    digits = match.group(1)
    if len(digits) > 20 or int(digits) > MAX_DPID:
        raise RuleError(f"{where}: switch {shown(name)}: its trailing number is above 2**64-1, the largest datapath id")
    return int(digits)
