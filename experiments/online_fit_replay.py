"""Replay the closed loop's online calibration over a recorded ``ndt demo`` run: as the controller
fits it (``counted``: each window's errors relative to its own scale of delay, each flow's squared
error in proportion to the packets behind its mean, windows the fit explains far worse than the
others left out), with every window however far off (``every_window``), without the packet counts
either (``relative``), and with every flow's error in seconds (``seconds``: the highest-load windows
weigh most, every window fitted), scoring each
window's prediction against the hosts' own packets as the demo does (``twin_vs_hosts``: pairs with
enough packets in the window, windows with a fitted correction). In all four a pair's reports over
a window average by their packets, as the controller averages them.

The windows are those the loop scored on the hosts' reports (the report's ``twin_scores``), each
rebuilt from the store as ``ndt replay`` rebuilds a moment (routing, links out of service, traffic
matrix and packet size over the window) with the reports stored in it and their packet counts (for
runs recorded before the store kept them, counted again from the hosts' packets sent in each
report's 5-s window); a pair's reports average by them, as the controller does; the loop's own windows are
only approximated (the replay's predictions differ from the store's ``predicted`` rows by a few per
cent), so compare the fits with each other, not with the demo's figure. Prints JSON.

    python experiments/online_fit_replay.py RUN_DIR [REPORT_JSON]

RUN_DIR: what ``ndt demo`` leaves in data/logs/demo (telemetry.db, state.json, phase-N/ with the
hosts' packets); REPORT_JSON: that run's report (default: data/demo/report.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.replay import _packet_bits, moment_state, open_store, timeline  # noqa: E402
from controller.loop.deployment import REPORT_S, Phase, twin_vs_hosts  # noqa: E402
from controller.loop.service import measured_vector  # noqa: E402
from controller.reported_delays import ReportedDelays  # noqa: E402
from mininet_topos.traffic import received_rows  # noqa: E402
from telemetry.store import PairValue  # noqa: E402
from telemetry.traffic_matrix import traffic_matrix  # noqa: E402
from twin.calibration.correction import CalibratedPredictor, calibrated_twin  # noqa: E402
from twin.calibration.online import OnlineCalibration  # noqa: E402
from twin.models.registry import PREDICTORS  # noqa: E402
from twin.state.model import NetworkState  # noqa: E402

WINDOW_S = 20.0  # the demo's --loop-window, s


def windows(run: Path, report: dict, base: NetworkState, sent: np.ndarray) -> list[tuple]:
    """(score, the state the loop saw, the hosts' reported delays per flow, the packets behind each)
    of each window the loop scored on the hosts' reports, in time order; ``sent``: the hosts'
    received packets (rows of flow index, sequence, sent and received, Unix s)."""
    store = open_store(run / "telemetry.db")
    scored = [s for s in report["twin_scores"] if s["measured_by"] == "hosts"]
    history = timeline(store, base, max(s["ts"] for s in scored))
    flow_of = {(f.src, f.dst): i for i, f in enumerate(base.flows)}
    out = []
    for score in scored:
        end, start = score["ts"], score["ts"] - WINDOW_S
        moment = history.at(end)
        rates = traffic_matrix(store.traffic_matrices(start, end), start, end)
        state, _ = moment_state(base, history.weights(moment.routing), moment.down, rates,
                                _packet_bits(store.link_samples(start, end)))
        reports = ReportedDelays()  # the stored reports, each with the packets sent in its window
        for row in store.path_delays("measured", score["start"] + REPORT_S - 0.5, end + 1.0):
            if (row.src, row.dst) in flow_of:
                packets = row.samples
                if packets is None:
                    flow = sent[:, 0] == flow_of[(row.src, row.dst)]
                    packets = int(np.sum(flow & (sent[:, 2] >= row.ts - REPORT_S) & (sent[:, 2] < row.ts)))
                reports.add(row.ts - REPORT_S, row.ts, {(row.src, row.dst): row.value}, {(row.src, row.dst): packets})
        means = reports.means(-np.inf, np.inf)
        out.append((score, state, measured_vector(state, {pair: m.delay for pair, m in means.items()}),
                    measured_vector(state, {pair: m.samples for pair, m in means.items()})))
    return out


def replay(recorded, predictor, prior, weigh_windows: bool, weigh_samples: bool,
           leave_out_disturbed: bool) -> tuple[list[dict], list[PairValue]]:
    """The loop's online fit over ``recorded`` windows: each predicted with the correction fitted
    before it, then added (if it was steady for half a window and half a window after the last)."""
    calibration = OnlineCalibration(prior, weigh_windows=weigh_windows, weigh_samples=weigh_samples,
                                    leave_out_disturbed=leave_out_disturbed)
    scores, predicted, added_at = [], [], -np.inf
    for score, state, measured, samples in recorded:
        in_use = calibration.last
        delays = CalibratedPredictor(predictor, in_use.correction).predict_delays([state])[0]
        predicted += [PairValue(score["ts"], f.src, f.dst, float(d)) for f, d in zip(state.flows, delays)]
        scores.append({**score, "calibrated_online": in_use.fitted})
        if score["ts"] - score["start"] >= WINDOW_S / 2 and score["ts"] - added_at >= WINDOW_S / 2:
            calibration.add(state, measured, samples)
            added_at = score["ts"]
        calibration.current(predictor)
    return scores, predicted


def main(run: str, report_path: str = "data/demo/report.json") -> dict:
    run_dir = Path(run)
    report = json.loads(Path(report_path).read_text())
    base = NetworkState.from_dict(json.loads((run_dir / "state.json").read_text()))
    twin = calibrated_twin(PREDICTORS[-1], None, base.name, print)
    phases = [Phase(p["name"], base, p["start"], p["end"],
                    received_rows(run_dir / f"phase-{k + 1}" / f"traffic-{k}", len(base.nodes)))
              for k, p in enumerate(report["phases"])]
    recorded = windows(run_dir, report, base, np.concatenate([p.rows for p in phases if len(p.rows)]))
    out = {"run": str(run_dir), "demo_twin_vs_emulation_mape": report["twin_vs_emulation_mape"], "windows": len(recorded)}
    fits = (("counted", True, True, True), ("every_window", True, True, False), ("relative", True, False, False),
            ("seconds", False, False, False))
    for name, by_window, by_samples, leave_out in fits:
        scores, predicted = replay(recorded, twin.predictor, twin.correction, by_window, by_samples, leave_out)
        result = twin_vs_hosts(scores, predicted, phases)
        out[name] = {"mape": result["mape"], "pair_windows": result["pair_windows"],
                     "by_phase": {k: round(v["mape"], 4) for k, v in result["by_phase"].items()}}
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
