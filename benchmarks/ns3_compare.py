"""Cross-check of ndt's packet-level simulator against ns-3 (optional extra).

The same :class:`~twin.state.NetworkState` is built in ns-3 (3.44, Python
bindings over cppyy): one point-to-point channel per node pair with the state's
capacity and propagation delay, a DropTail device queue per direction sized like
our ``buffer``, static host routes along each flow's path, and a Poisson UDP
source per flow written in C++ (JIT-compiled by cppyy, so no Python runs per
packet). Per-flow one-way delays come from ns-3's FlowMonitor.

Mapping notes, checked against the ns-3 sources:

- Wire size: ns-3 transmits payload + UDP (8 B) + IPv4 (20 B) + PPP (2 B); the
  payload is chosen so that this equals the flow's ``packet_size``.
- Buffer: a PointToPointNetDevice dequeues the packet it transmits, so its
  queue's ``MaxSize`` counts waiting packets only, exactly like ``Link.buffer``.
  The traffic-control layer's default pfifo_fast queue disc (1000 packets,
  installed by Ipv4AddressHelper) is removed, otherwise it would sit in front
  of the device queue as a second, larger buffer. Without it, a full device
  queue stops its tx queue and the traffic-control layer drops the arrival:
  tail drop at ``buffer`` waiting packets (the device queue's own drop counter
  stays at 0).
- MTU: packets must fit the 1500-byte PPP MTU, or IPv4 would fragment them.
- Delay: FlowMonitor stamps a packet when the source's IP layer sends it and
  when the destination's IP layer receives its last bit: our creation → arrival.
- Warm-up: FlowMonitor starts at ``warmup``, so both count packets born after it.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from twin.sim.simulator import simulate
from twin.state.errors import NdtError
from twin.state.metrics import finite_or_none, mape
from twin.state.model import Flow, Link, NetworkState

HEADER_BYTES = 8 + 20 + 2  # UDP + IPv4 + PPP headers that ns-3 puts on the wire
PPP_MTU_BYTES = 1500  # PointToPointNetDevice default: the largest IPv4 packet it carries
UDP_PORT = 9
INSTALL_HINT = "pip install 'ndt[ns3]' (or .venv/bin/pip install ns3==3.44.post0)"
MBPS = 1e6

_CPP = r"""
namespace ndt_ns3 {
using namespace ns3;

// Sends fixed-size UDP datagrams with exponential gaps (a Poisson process) until stop_s.
class PoissonUdpSource {
  public:
    PoissonUdpSource(Ptr<Node> node, Ipv4Address dst, uint16_t port, uint32_t payload_bytes,
                     double mean_gap_s, double stop_s, int64_t stream)
        : m_payload(payload_bytes), m_stop(stop_s) {
        m_socket = Socket::CreateSocket(node, UdpSocketFactory::GetTypeId());
        m_socket->Bind();
        m_socket->Connect(InetSocketAddress(dst, port));
        m_gap = CreateObject<ExponentialRandomVariable>();
        m_gap->SetAttribute("Mean", DoubleValue(mean_gap_s));
        m_gap->SetStream(stream);
        ScheduleNext();
    }
    uint64_t sent = 0;

  private:
    void ScheduleNext() {
        double gap = m_gap->GetValue();
        if (Simulator::Now().GetSeconds() + gap <= m_stop) {
            Simulator::Schedule(Seconds(gap), &PoissonUdpSource::Send, this);
        }
    }
    void Send() {
        m_socket->Send(Create<Packet>(m_payload));
        ++sent;
        ScheduleNext();
    }
    Ptr<Socket> m_socket;
    Ptr<ExponentialRandomVariable> m_gap;
    uint32_t m_payload;
    double m_stop;
};

// Binds a UDP port on a node and counts and discards what arrives (no ICMP port-unreachable replies).
class UdpDiscardSink {
  public:
    uint64_t received = 0;

    UdpDiscardSink(Ptr<Node> node, uint16_t port) {
        m_socket = Socket::CreateSocket(node, UdpSocketFactory::GetTypeId());
        m_socket->Bind(InetSocketAddress(Ipv4Address::GetAny(), port));
        m_socket->SetRecvCallback(MakeCallback(&UdpDiscardSink::Drain, this));
    }

  private:
    void Drain(Ptr<Socket> socket) {
        while (socket->Recv()) {
            ++received;
        }
    }
    Ptr<Socket> m_socket;
};
}  // namespace ndt_ns3
"""


def ns3_scenario() -> NetworkState:
    """Six routers, eight Poisson UDP flows of 1000-byte packets on explicit paths.

    Links are 10 Mbit/s (8 Mbit/s between d and e) with 0.1-0.5 ms propagation
    and 10-16 packet buffers; four bottlenecks run at 70-85 % load
    (c→d 0.85, e→b 0.80, d→f 0.75, b→a 0.70), the other links at 0.25-0.69.
    """
    spans = [  # node pair, capacity (bit/s), buffer (packets), propagation (s)
        ("a", "b", 10 * MBPS, 16, 2e-4),
        ("b", "c", 10 * MBPS, 16, 3e-4),
        ("c", "d", 10 * MBPS, 10, 5e-4),
        ("b", "e", 10 * MBPS, 16, 2e-4),
        ("e", "d", 8 * MBPS, 16, 4e-4),
        ("d", "f", 10 * MBPS, 12, 1e-4),
    ]
    links = []
    for u, v, capacity, buffer, prop in spans:
        links += [Link(u, v, capacity, buffer, prop), Link(v, u, capacity, buffer, prop)]
    routes = {  # path, rate (Mbit/s)
        "abcd": 3.0, "abedf": 2.5, "bcd": 3.5, "edf": 3.0,
        "cdf": 2.0, "fdcba": 4.0, "deb": 5.0, "eba": 3.0,
    }
    flows = tuple(Flow(p[0], p[-1], r * MBPS, packet_size=8000.0) for p, r in routes.items())
    paths = {(p[0], p[-1]): tuple(p) for p in routes}
    return NetworkState(
        nodes=tuple("abcdef"), links=tuple(links), flows=flows,
        routing_kind="paths", paths=paths, name="ns3-crosscheck",
    )


def import_ns3():
    """The ``ns`` namespace of the ns-3 Python bindings (~10 s on first import).

    Raises NdtError with the install command when ns-3 is not installed.
    """
    if importlib.util.find_spec("ns3") is None or importlib.util.find_spec("cppyy") is None:
        raise NdtError(f"ns-3 is not installed (an optional extra, ~520 MB): {INSTALL_HINT}")
    from ns import ns

    if not hasattr(ns.cppyy.gbl, "ndt_ns3"):
        ns.cppyy.cppdef(_CPP)
    return ns


def _payload_bytes(state: NetworkState) -> list[int]:
    """UDP payload per flow, bytes, so that payload + headers = packet_size bits.

    Raises NdtError for flows ns-3 cannot reproduce here (non-Poisson, variable
    size, a size that is not whole bytes larger than the headers, or one that
    does not fit the MTU).
    """
    out = []
    for flow in state.flows:
        tag = f"flow {flow.src}->{flow.dst}"
        if flow.time_dist != "poisson" or flow.size_dist != "deterministic":
            raise NdtError(f"{tag}: the ns-3 cross-check supports Poisson flows of fixed packet size only")
        size_bytes = flow.packet_size / 8
        if size_bytes != int(size_bytes) or not HEADER_BYTES < size_bytes <= PPP_MTU_BYTES + 2:
            raise NdtError(
                f"{tag}: packet_size {flow.packet_size} bits must be whole bytes above the "
                f"{HEADER_BYTES}-byte UDP/IPv4/PPP headers and at most {PPP_MTU_BYTES + 2} bytes (MTU + PPP)"
            )
        out.append(int(size_bytes) - HEADER_BYTES)
    return out


def _channel_pairs(state: NetworkState) -> dict[tuple[str, str], tuple[Link, Link]]:
    """One point-to-point channel per node pair: (u, v) → (link u→v, link v→u).

    A missing direction borrows the other direction's parameters (its device
    stays idle). Raises NdtError if the two directions differ in propagation
    delay, which one ns-3 channel cannot express.
    """
    pairs = {}
    for link in state.links:
        u, v = sorted((link.src, link.dst))
        if (u, v) in pairs:
            continue
        forward = state.links[state.link_index[(u, v)]] if (u, v) in state.link_index else None
        back = state.links[state.link_index[(v, u)]] if (v, u) in state.link_index else None
        forward, back = forward or back, back or forward
        if forward.prop_delay != back.prop_delay:
            raise NdtError(f"link {u}->{v}: ns-3 needs the same prop_delay in both directions")
        pairs[(u, v)] = (forward, back)
    return pairs


def _build_topology(ns, state: NetworkState) -> tuple[dict, dict]:
    """Nodes, IPv4 stack with static routing, channels and device queues.

    Returns (node by name, device by (node, neighbour)): the device on ``node``
    that transmits towards ``neighbour``.
    """
    nodes = ns.NodeContainer()
    nodes.Create(len(state.nodes))
    node = {name: nodes.Get(i) for i, name in enumerate(state.nodes)}
    stack = ns.InternetStackHelper()
    stack.SetIpv6StackInstall(False)
    stack.SetRoutingHelper(ns.Ipv4StaticRoutingHelper())
    stack.Install(nodes)
    device = {}
    for i, ((u, v), (forward, back)) in enumerate(_channel_pairs(state).items()):
        helper = ns.PointToPointHelper()
        helper.SetChannelAttribute("Delay", ns.TimeValue(ns.NanoSeconds(round(forward.prop_delay * 1e9))))
        pair = helper.Install(node[u], node[v])
        for k, (ends, link) in enumerate((((u, v), forward), ((v, u), back))):
            dev = ns.DynamicCast[ns.PointToPointNetDevice](pair.Get(k))
            dev.SetDataRate(ns.DataRate(round(link.capacity)))
            dev.GetQueue().SetMaxSize(ns.QueueSize(f"{int(link.buffer)}p"))
            device[ends] = dev
        addresses = ns.Ipv4AddressHelper()
        addresses.SetBase(ns.Ipv4Address(f"10.{i // 64}.{(i % 64) * 4}.0"), ns.Ipv4Mask("255.255.255.252"))
        addresses.Assign(pair)
        ns.TrafficControlHelper().Uninstall(pair)
    return node, device


def _flow_address(i: int) -> str:
    """A /32 address owned by flow ``i``'s destination, so routes can follow any explicit path."""
    return f"172.16.{i // 256}.{i % 256}"


def _install_routes(ns, state: NetworkState, device: dict) -> None:
    """Per flow: its address on the destination's last-hop interface and a host route at every hop."""
    routing = ns.Ipv4StaticRoutingHelper()
    host_mask = ns.Ipv4Mask("255.255.255.255")
    for i in range(len(state.flows)):
        path = state.flow_path(i)
        address = ns.Ipv4Address(_flow_address(i))
        for a, b in zip(path, path[1:]):
            ipv4 = device[(a, b)].GetNode().GetObject[ns.Ipv4]()
            routing.GetStaticRouting(ipv4).AddHostRouteTo(address, ipv4.GetInterfaceForDevice(device[(a, b)]))
        arrival = device[(path[-1], path[-2])]
        ipv4 = arrival.GetNode().GetObject[ns.Ipv4]()
        ipv4.AddAddress(ipv4.GetInterfaceForDevice(arrival), ns.Ipv4InterfaceAddress(address, host_mask))


def _install_traffic(ns, state: NetworkState, node: dict, duration: float) -> tuple[list, list]:
    """A Poisson UDP source per flow (packets created in [0, duration] s) and a sink per destination.

    Returns (sources, sinks): C++ objects that must stay alive until the simulation ends.
    """
    destinations = dict.fromkeys(f.dst for f in state.flows)
    sinks = [ns.cppyy.gbl.ndt_ns3.UdpDiscardSink(node[name], UDP_PORT) for name in destinations]
    sources = []
    for i, (flow, payload) in enumerate(zip(state.flows, _payload_bytes(state))):
        if flow.rate <= 0:
            continue
        mean_gap = flow.packet_size / flow.rate
        sources.append(
            ns.cppyy.gbl.ndt_ns3.PoissonUdpSource(
                node[flow.src], ns.Ipv4Address(_flow_address(i)), UDP_PORT, payload, mean_gap, duration, i
            )
        )
    return sources, sinks


def _drain_time(state: NetworkState) -> float:
    """Upper bound, s, on the time a packet created at the end still needs to arrive or drop."""
    la = state.link_arrays
    worst = 0.0
    for flow, links in zip(state.flows, state.flow_links):
        per_hop = (la["buffer"][links] + 1) * flow.packet_size / la["capacity"][links] + la["prop_delay"][links]
        worst = max(worst, float(np.sum(per_hop)))
    return 2 * worst + 0.1


def _flow_stats(ns, monitor, classifier, n_flows: int) -> dict[int, object]:
    """FlowMonitor statistics by our flow index (matched on the flow's destination address)."""
    by_address = {ns.Ipv4Address(_flow_address(i)).Get(): i for i in range(n_flows)}
    out = {}
    for flow_id, stats in monitor.GetFlowStats():
        five_tuple = classifier.FindFlow(flow_id)
        i = by_address.get(five_tuple.destinationAddress.Get())
        if i is not None:
            out[i] = stats
    return out


def _packet_hops(device: dict, created: int, arrived: int) -> int:
    """Packet-hops: every transmission on every link, plus one per dropped packet.

    created/arrived: packets the sources sent and the sinks received over the
    whole run. A full device queue stops its traffic-control queue, which then
    drops the arrival before the device sees it, so drops are counted as the
    packets that never arrived (the network is drained when the run ends).
    """
    transmitted = sum(int(dev.GetQueue().GetTotalReceivedPackets()) for dev in device.values())
    return transmitted + created - arrived


def _per_flow(stats: dict, n_flows: int) -> dict[str, list]:
    """Per-flow ``delay`` (mean, s), ``sent``, ``delivered`` and ``loss`` from FlowMonitor statistics."""
    sent = [int(stats[i].txPackets) if i in stats else 0 for i in range(n_flows)]
    delivered = [int(stats[i].rxPackets) if i in stats else 0 for i in range(n_flows)]
    delay = [stats[i].delaySum.GetSeconds() / delivered[i] if delivered[i] else math.nan for i in range(n_flows)]
    loss = [1 - d / s if s else math.nan for s, d in zip(sent, delivered)]
    return {"delay": delay, "sent": sent, "delivered": delivered, "loss": loss}


def run_ns3(state: NetworkState, duration: float, seed: int = 0, warmup: float | None = None) -> dict:
    """Simulate ``state`` in ns-3.

    duration: s of packet generation; warmup: s whose packets are not measured
    (default 10 %, as in :func:`twin.sim.simulate`); the network is then
    drained. Returns per-flow lists in flow order, ``delay`` (mean one-way, s),
    ``sent``, ``delivered``, ``loss``; and ``packet_hops``, ``run_s`` and
    ``run_cpu_s`` (wall and CPU time of ``Simulator::Run``, s), ``setup_s``
    (s, import excluded) and ``ns3_packet_hops_per_s`` (= packet_hops / run_s).
    """
    _payload_bytes(state)
    ns = import_ns3()
    warmup = 0.1 * duration if warmup is None else warmup
    started = time.perf_counter()
    ns.RngSeedManager.SetSeed(1)
    ns.RngSeedManager.SetRun(seed + 1)
    try:
        node, device = _build_topology(ns, state)
        _install_routes(ns, state, device)
        sources, sinks = _install_traffic(ns, state, node, duration)
        monitor_helper = ns.FlowMonitorHelper()
        monitor = monitor_helper.InstallAll()
        monitor.Start(ns.Seconds(warmup))
        ns.Simulator.Stop(ns.Seconds(duration + _drain_time(state)))
        ran, ran_cpu = time.perf_counter(), time.process_time()
        ns.Simulator.Run()
        run_s, run_cpu_s = time.perf_counter() - ran, time.process_time() - ran_cpu
        classifier = ns.DynamicCast[ns.Ipv4FlowClassifier](monitor_helper.GetClassifier())
        out = _per_flow(_flow_stats(ns, monitor, classifier, len(state.flows)), len(state.flows))
        created = sum(int(source.sent) for source in sources)
        arrived = sum(int(sink.received) for sink in sinks)
        out["packet_hops"] = _packet_hops(device, created, arrived)
    finally:
        ns.Simulator.Destroy()
    out.update(
        run_s=run_s, run_cpu_s=run_cpu_s, setup_s=ran - started,
        ns3_packet_hops_per_s=out["packet_hops"] / max(run_s, 1e-9),
    )
    return out


def _fixed_delay(state: NetworkState) -> np.ndarray:
    """Per flow, s: transmission + propagation along the path (the delay with empty queues)."""
    la = state.link_arrays
    return np.array(
        [
            np.sum(flow.packet_size / la["capacity"][links] + la["prop_delay"][links])
            for flow, links in zip(state.flows, state.flow_links)
        ]
    )


def _flow_rows(state: NetworkState, ns3: dict, ours, fixed: np.ndarray) -> list[dict]:
    """Per flow, side by side: delays and queueing parts (s), relative error, loss, packets sent."""
    utilization = state.utilization()
    rows = []
    for i, flow in enumerate(state.flows):
        ref = ns3["delay"][i]
        rows.append(
            {
                "src": flow.src,
                "dst": flow.dst,
                "path": "-".join(state.flow_path(i)),
                "max_utilization": round(float(utilization[state.flow_links[i]].max()), 3),
                "delay_ns3": finite_or_none(ref),
                "delay": finite_or_none(ours.delay[i]),
                "rel_error": finite_or_none(ours.delay[i] / ref - 1),
                "queueing_ns3": finite_or_none(ref - fixed[i]),
                "queueing": finite_or_none(ours.delay[i] - fixed[i]),
                "loss_ns3": finite_or_none(ns3["loss"][i]),
                "loss": finite_or_none(ours.loss[i]),
                "sent_ns3": ns3["sent"][i],
                "sent": int(ours.sent[i]),
            }
        )
    return rows


def compare_with_ns3(duration: float = 300.0, seed: int = 0, state: NetworkState | None = None) -> dict:
    """Run ns-3 and ndt's simulator on the same state (default :func:`ns3_scenario`) and compare.

    duration: s of traffic generation in both (10 % warm-up). Speeds are
    packet-hops per wall-clock second of the event loop only (ns-3's
    ``Simulator::Run``, our compiled loop; imports and setup excluded);
    ``speedup_vs_ns3_cpu`` uses process CPU time instead (ours: the whole
    ``simulate`` call), which a busy machine disturbs less.
    ``delay_mape_vs_ns3`` is over the flows' mean one-way delays;
    ``queueing_mape_vs_ns3`` is the same on the queueing part (delay minus
    transmission and propagation), a stricter check. Raises NdtError when
    ns-3 is not installed.
    """
    state = ns3_scenario() if state is None else state
    ns3 = run_ns3(state, duration, seed)
    simulate(state, duration=1e-3 * duration, seed=seed)  # loads the compiled loop before timing
    cpu = time.process_time()
    ours = simulate(state, duration=duration, seed=seed)
    ours_cpu_s = max(time.process_time() - cpu, 1e-9)
    fixed = _fixed_delay(state)
    ref_delay = np.array(ns3["delay"])
    ours_per_s = ours.packet_hops / max(ours.wall_s, 1e-9)
    ns3_per_cpu_s = ns3["packet_hops"] / max(ns3["run_cpu_s"], 1e-9)
    return {
        "scenario": state.name,
        "duration_s": duration,
        "seed": seed,
        "ns3_packet_hops": ns3["packet_hops"],
        "ns3_run_s": ns3["run_s"],
        "ns3_packet_hops_per_s": ns3["ns3_packet_hops_per_s"],
        "packet_hops": ours.packet_hops,
        "sim_wall_s": ours.wall_s,
        "packet_hops_per_s": ours_per_s,
        "speedup_vs_ns3": ours_per_s / ns3["ns3_packet_hops_per_s"],
        "ns3_run_cpu_s": ns3["run_cpu_s"],
        "sim_cpu_s": ours_cpu_s,
        "speedup_vs_ns3_cpu": (ours.packet_hops / ours_cpu_s) / ns3_per_cpu_s,
        "delay_mape_vs_ns3": mape(ours.delay, ref_delay),
        "queueing_mape_vs_ns3": mape(ours.delay - fixed, ref_delay - fixed),
        "flows": _flow_rows(state, ns3, ours, fixed),
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="ndt's simulator against ns-3 on the same scenario, in one run; "
                                                 "prints the comparison as JSON (needs the ns3 package)")
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(compare_with_ns3(seed=parser.parse_args().seed)))
