"""How much traffic the machine emulates faithfully, and how well a measurement repeats (root).

``python experiments/headroom.py scan [SOURCE LOAD CAPACITIES DURATION]``,
``python experiments/headroom.py repeat [SOURCE LOAD DURATIONS]`` and
``python experiments/headroom.py md1 [LOADS DURATION]`` and
``python experiments/headroom.py noise [SOURCE LOAD DURATIONS MIN_PACKETS]`` (no root) and
``python experiments/headroom.py replay REPORT [RUNS SEED]``.

The same topology and busiest-link load are played at growing link capacities, so the packet rate
grows while the queueing, measured in service times (frame / capacity), should stay the same.
For each rate it prints JSON lines: packets/s offered, packet-hops/s through OVS, the CPU busy
fraction and 1-min load average (other people's jobs included), the generator's 99th-percentile
lateness, the overall loss, and the traffic-weighted mean delay in service times. Where lateness
grows past a service time, or the normalised delay departs from the low-rate runs, CPU saturation
is distorting the delays. ``repeat`` plays one state twice per window length (different Poisson
seeds) and prints the MAPE between the two measurements: the floor any model's error meets.
``md1`` plays Poisson traffic of equal frames over one shaped link at each load beside a light
reverse flow and prints the measured mean delay against M/D/1's wait plus the light flow's delay
(the forwarding floor): whether a shaped link is the FIFO server the twin assumes. ``noise``
simulates instead of emulating: the MAPE a perfect model scores against one measurement of each
window length, over flows with at least each number of packets (shortest-path routing, the
calibration shipped for RouteNet-E adding forwarding). ``replay`` takes an ``ndt loop``/``ndt demo``
JSON report and plays its final routing with the very packets of its after-measurement (the same
plan seed, 1 for the first iteration) RUNS times in a fresh network: the MAPE between the runs is
the emulation's own non-determinism, the MAPE of each run against the live measurement says
whether the live network behaved like a fresh one, and the calibrated twin's MAPE against each run
(knowing the fresh network's port walk, and not) is the demo's figure without the live network; each run is also compared packet by packet with an
ideal FIFO network fed the same packets (``ideal_fifo_*``): what OVS adds per switch, and the error
left for a model that knew every packet's queueing wait and fitted forwarding per switch to this
very run.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from controller.api.client import ControllerClient
from mininet_topos.network import EmulatedNetwork
from mininet_topos.topologies import EMU_PACKET, emulation_state
from mininet_topos.traffic import play
from twin.state.metrics import mape


def scan(source: str, load: float, capacities: list[float], duration: float) -> list[dict]:
    rows = []
    for capacity in capacities:
        state = emulation_state(source, load, capacity=capacity)
        with EmulatedNetwork(state, ControllerClient, prefix="c", tag="headroom") as net:
            m = play(net, state, duration)
        service = EMU_PACKET / capacity
        sent = np.array([f.rate for f in state.flows]) / EMU_PACKET
        rows.append({
            "capacity_bps": capacity, "packets_per_s": float(sent.sum()),
            "packet_hops_per_s": float(state.link_loads().sum() / EMU_PACKET),
            "cpu_busy": m.cpu_busy, "load_average": m.load_average, "sender_late_p99_s": m.sender_late_p99,
            "late_p99_in_service_times": m.sender_late_p99 / service,
            "loss": float(np.nansum(m.loss * sent) / sent.sum()),
            "mean_delay_s": m.mean_delay(state), "mean_delay_in_service_times": m.mean_delay(state) / service,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def repeat(source: str, load: float, durations: list[float]) -> list[dict]:
    state = emulation_state(source, load)
    rows = []
    with EmulatedNetwork(state, ControllerClient, prefix="c", tag="repeat") as net:
        for duration in durations:
            a, b = play(net, state, duration, seed=1), play(net, state, duration, seed=2)
            rows.append({"duration_s": duration, "mape_a_vs_b": mape(a.reliable_delay(), b.reliable_delay()),
                         "flows": int(np.isfinite(a.reliable_delay()).sum()), "mean_delay_s": [a.mean_delay(state),
                         b.mean_delay(state)], "load_average": [a.load_average, b.load_average]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def md1(loads: list[float], duration: float) -> list[dict]:
    rows = []
    for load in loads:
        state = emulation_state("line:2", load)
        busy, light = sorted(range(2), key=lambda i: -state.flows[i].rate)
        with EmulatedNetwork(state, ControllerClient, prefix="c", tag="md1") as net:
            m = play(net, state, duration)
        service = EMU_PACKET / state.links[0].capacity
        rho_light = state.flows[light].rate / state.links[0].capacity
        floor = m.delay[light] - rho_light * service / (2 * (1 - rho_light))
        wait = load * service / (2 * (1 - load))
        rows.append({"load": load, "measured_s": float(m.delay[busy]), "md1_wait_s": wait, "floor_s": float(floor),
                     "expected_s": wait + float(floor), "packets": int(m.received[busy]),
                     "load_average": m.load_average})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def noise(source: str, load: float, durations: list[float], min_packets: list[int]) -> list[dict]:
    from twin.calibration.correction import Correction, find
    from twin.calibration.correction import load as load_correction
    from twin.calibration.correction import measurement_noise

    path = find("routenet")
    correction = load_correction(path)[0] if path else Correction()
    state = emulation_state(source, load)
    rows = []
    for duration in durations:
        for k in min_packets:
            rows.append({"duration_s": duration, "min_packets": k,
                         "perfect_model_mape": measurement_noise(state, correction, duration, 2.0, k, runs=6)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def replay(report_path: str, runs: int, seed: int) -> dict:
    from itertools import combinations

    from mininet_topos.traffic import reliable_from_report
    from twin.calibration.correction import CalibratedPredictor, find, load, tuned_predictor
    from twin.models.registry import get_predictor

    report = json.loads(open(report_path).read())
    state = emulation_state(report["topology"], report["load"]).with_weights(np.array(report["final_weights"]))
    live = reliable_from_report(report["after"]["paths"])
    path = find(report["model"])
    correction, info = load(path)
    twin = tuned_predictor(path, info, report["topology"]) or get_predictor(report["model"])
    expected = CalibratedPredictor(twin, correction).predict_delays([state])[0]
    measured = []
    with EmulatedNetwork(state, ControllerClient, prefix="c", tag="replay") as net:
        knowing = CalibratedPredictor(twin, correction, net.walk()).predict_delays([state])[0]
        for _ in range(runs):
            m = play(net, state, report["after"]["duration"], report["after"]["warmup"], seed=seed)
            measured.append(m.reliable_delay())
            print(json.dumps({"mean_delay_s": m.mean_delay(state), "twin_mape_walk_unknown": mape(expected, measured[-1]),
                              "twin_mape": mape(knowing, measured[-1]),
                              "live_vs_this_mape": mape(live, measured[-1]), "load_average": m.load_average,
                              **ideal_fifo_comparison(net.workdir / f"traffic-{seed}", state, seed, m.duration,
                                                      m.warmup, correction.capacity_scale)}),
                  flush=True)
    out = {"runs_pairwise_mape": [mape(measured[a], measured[b]) for a, b in combinations(range(runs), 2)],
           "twin_vs_live_mape_walk_unknown": mape(expected, live), "live_mean_delay_s": report["measured"]["after"]}
    if report.get("walk"):
        from twin.calibration.port_walk import Walk

        live_walk = Walk.from_dict(report["walk"])
        out["twin_vs_live_mape"] = mape(CalibratedPredictor(twin, correction, live_walk).predict_delays([state])[0], live)
    print(json.dumps(out), flush=True)
    return out


def ideal_fifo_comparison(workdir, state, seed: int, duration: float, warmup: float, capacity_scale: float) -> dict:
    """The packets of one :func:`play` (its ``workdir``) against the waits the very same packets meet
    in an ideal FIFO network (:func:`~mininet_topos.traffic.fifo_waits`), per flow with at least
    ``MIN_PACKETS`` packets: what the emulation adds per switch (µs: least, median, most), and the
    MAPE left when the ideal waits plus the best per-switch + per-path cost for this very
    measurement (least squares, in-sample) stand in for a model — the floor of a model that knows
    every packet's queueing exactly and forwarding as a per-switch cost."""
    from mininet_topos.traffic import MIN_PACKETS, fifo_waits, plan_packets, received_rows

    plans = plan_packets(state, duration, seed)
    waits = fifo_waits(state, plans, capacity_scale)
    sent_at = {(int(f), int(q)): t for plan in plans.values() for t, f, q in zip(plan["t"], plan["flow"], plan["seq"])}
    rows = [(int(f), r - s, waits[(int(f), int(q))]) for f, q, s, r in received_rows(workdir, len(state.nodes))
            if sent_at[(int(f), int(q))] >= warmup]
    per_flow = {}
    for flow, delay, wait in rows:
        per_flow.setdefault(flow, []).append((delay, wait))
    flows = sorted(k for k, v in per_flow.items() if len(v) >= MIN_PACKETS)
    measured = np.array([np.mean([d for d, _ in per_flow[k]]) for k in flows])
    ideal = np.array([np.mean([w for _, w in per_flow[k]]) for k in flows])
    switches = np.array([len(state.flow_links[k]) + 1 for k in flows], dtype=float)
    design = np.column_stack([switches, np.ones(len(flows))])
    forwarding = np.linalg.lstsq(design, measured - ideal, rcond=None)[0]
    per_switch = 1e6 * (measured - ideal) / switches
    return {"ideal_fifo_flows": len(flows),
            "ideal_fifo_added_us_per_switch": [round(float(np.min(per_switch))), round(float(np.median(per_switch))),
                                               round(float(np.max(per_switch)))],
            "ideal_fifo_best_fit_mape": mape(ideal + design @ forwarding, measured)}


if __name__ == "__main__":
    mode, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("scan", [])
    source = args[0] if args else "sndlib/abilene"
    if mode == "noise":
        noise(source, float(args[1]) if len(args) > 1 else 0.9,
              [float(d) for d in (args[2] if len(args) > 2 else "12,32,62").split(",")],
              [int(k) for k in (args[3] if len(args) > 3 else "50,200").split(",")])
    elif mode == "replay":
        if not args:
            raise SystemExit("replay needs the JSON report of ndt loop or ndt demo (e.g. data/loop/report.json)")
        replay(args[0], int(args[1]) if len(args) > 1 else 3, int(args[2]) if len(args) > 2 else 1)
    elif mode == "md1":
        md1([float(x) for x in (args[0] if args else "0.5,0.8,0.9").split(",")], float(args[1]) if len(args) > 1 else 32.0)
    elif mode == "repeat":
        repeat(source, float(args[1]) if len(args) > 1 else 0.9,
               [float(d) for d in (args[2] if len(args) > 2 else "12,36").split(",")])
    else:
        scan(source, float(args[1]) if len(args) > 1 else 0.7,
             [float(c) for c in (args[2] if len(args) > 2 else "1e6,2e6,4e6,8e6,16e6").split(",")],
             float(args[3]) if len(args) > 3 else 12.0)
