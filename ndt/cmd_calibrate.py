"""``ndt calibrate``: measure a handful of states in the emulation and fit the twin's correction to them."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ndt.cmd_loop import OptionError
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit the twin to the Mininet emulation (per-hop forwarding cost, queueing scale); needs root",
        description=(
            "First fine-tune the learned twin on simulated states of the topology (--tune-samples; written beside "
            "the correction as <out>-twin.*). Then bring the topology up in Mininet (userspace OVS, HTB-shaped "
            "links, the ndt controller), play its "
            "traffic at several loads under shortest-path, optimized and random OSPF weights, each state in a "
            "freshly brought-up network (ovs-vswitchd's thread serves the ports in an order that changes with every "
            "bring-up, and forwarding time depends on it; the order is read with strace), measure every path's "
            "one-way delay and fit emulated = queue_scale x (twin queueing wait at capacity_scale x capacity) + "
            "per_hop_s x switches + base_s + random_hop_s x random-phase hops + port_s x ports walked + "
            "wrap_s x main-loop rounds "
            "(errors over flows with at least 200 measured packets). "
            "Prints the twin-vs-emulation MAPE before (the general twin, no correction) and after (in-sample and "
            "leave-one-load-out, with and without the walk) and writes "
            "the correction as JSON for 'ndt loop' and 'ndt demo'."
        ),
    )
    p.add_argument("--topology", default="sndlib/abilene",
                   help="topohub key, state file, or line:N / ring:N / grid:N / powerlaw:N (default: sndlib/abilene)")
    p.add_argument("--loads", default="0.2,0.5,0.7,0.9",
                   help="busiest-link loads under shortest paths, comma-separated; a light one separates the per-switch "
                        "from the per-path cost (default: 0.2,0.5,0.7,0.9)")
    p.add_argument("--routings", type=int, default=3,
                   help="routings per load: shortest path, the routing the optimizer picks with QT, then random weights "
                        "(default: 3)")
    p.add_argument("--duration", type=float, default=30.0, metavar="S",
                   help="traffic per measurement, s; shorter windows leave fewer flows with enough packets and "
                        "noisier means (default: 30)")
    p.add_argument("--model", default=None, help="twin model (default: the newest in twin.predictors)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="correction JSON (default: data/calibration-<model>.json in the repository)")
    p.add_argument("--tune-samples", type=int, default=300, metavar="N",
                   help="before measuring, fine-tune a learned twin on N simulated states of this topology "
                        "(random weights and loads; the emulated links are FIFO servers, so the simulator is "
                        "their queueing); 0: no fine-tuning (default: 300)")
    p.add_argument("--tune-minutes", type=float, default=8.0, metavar="M",
                   help="training time of the fine-tuning (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def parse_loads(text: str) -> list[float]:
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OptionError(f"--loads {text!r}: expected comma-separated numbers such as 0.5,0.8") from None
    if not loads or not all(0 < x < 2 for x in loads):
        raise OptionError(f"--loads {text!r}: every load must lie in (0, 2)")
    return loads


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mininet_topos import calibration as cal
    from mininet_topos.network import EmulationError
    from mininet_topos.topologies import emulation_state
    from mininet_topos.traffic import MIN_PACKETS
    from mininet_topos.validate import validate
    from twin.predictors import LEARNED, PREDICTORS, get_predictor

    loads = parse_loads(args.loads)
    model = args.model or PREDICTORS[-1]
    out = args.out or cal.default_path(model)
    if args.routings < 1:
        raise OptionError(f"--routings must be >= 1, got {args.routings}")
    if args.tune_samples < 0 or args.tune_minutes <= 0:
        raise OptionError("--tune-samples must be >= 0 and --tune-minutes positive")
    general = get_predictor(model)
    base = emulation_state(args.topology, 1.0, seed=args.seed)
    started = time.monotonic()
    tuned = args.tune_samples > 0 and model in LEARNED
    predictor = general
    if tuned:
        import shutil
        import tempfile

        from twin.routenet import load_twin

        with tempfile.TemporaryDirectory(prefix="ndt-tune-") as work:
            best = cal.fine_tune(base, model, Path(work), args.tune_samples, args.tune_minutes, args.seed,
                                 log=lambda msg: print(msg, file=sys.stderr))
            stem = cal.tuned_model_stem(out)
            stem.parent.mkdir(parents=True, exist_ok=True)
            for suffix in (".weights.h5", ".json"):
                shutil.copyfile(f"{best}{suffix}", f"{stem}{suffix}")
        predictor = load_twin(stem.name, stem.parent)
    samples = []  # (load, state, raw prediction, measured, walk)
    total = len(loads) * args.routings
    for load in loads:
        state = base.scaled(load)
        for label, weights in cal.calibration_weights(state, args.routings, args.seed):
            print(f"calibrate: state {len(samples) + 1}/{total}: load {load:g}, {label}, {args.duration:g} s "
                  f"in a fresh network", file=sys.stderr, flush=True)
            for attempt in (1, 2):
                try:
                    v = validate(state, [weights], predictor, duration=args.duration, seed=args.seed, prefix="c",
                                 tag=f"calibrate-{len(samples) + 1}-{attempt}")[0]
                    break
                except EmulationError as exc:
                    if attempt == 2:
                        raise
                    print(f"calibrate: state {len(samples) + 1}: {exc}; measuring it again in a fresh network",
                          file=sys.stderr, flush=True)
            samples.append((load, state.with_weights(v.weights), v.predicted, v.measured, v.walk))
    states = [s for _, s, *_ in samples]
    measured = [m.reliable_delay() for _, _, _, m, _ in samples]
    walks = [w for *_, w in samples]
    if any(w is None for w in walks):
        print("calibrate: ovs-vswitchd's port walk could not be read for every state (is strace installed?): "
              "fitting without it", file=sys.stderr)

    def errors(correction, indices, known=True):
        """MAPE per state of ``indices`` under ``correction``, with each state's walk or without."""
        return [cal.mape(cal.CalibratedPredictor(predictor, correction, walks[i] if known else None)
                         .predict_delays([states[i]])[0], measured[i]) for i in indices]

    everything = list(range(len(samples)))
    correction = cal.fit(states, measured, predictor, walks)
    structural = [cal.mape(cal.emulated_delays(s, p, cal.Correction()), m) for s, (_, _, p, _, _), m in
                  zip(states, samples, measured)]
    general_structural = ([cal.mape(cal.emulated_delays(s, p, cal.Correction()), m) for s, p, m in
                           zip(states, general.predict_delays(states), measured)] if tuned else structural)
    raw = [cal.mape(p, m) for (_, _, p, _, _), m in zip(samples, measured)]
    after, after_unknown = errors(correction, everything), errors(correction, everything, known=False)
    held_out, held_out_unknown = [], []
    for load in loads:
        train = [i for i, (l, *_) in enumerate(samples) if l != load] or everything
        test = [i for i, (l, *_) in enumerate(samples) if l == load]
        corr = cal.fit([states[i] for i in train], [measured[i] for i in train], predictor, [walks[i] for i in train])
        held_out += errors(corr, test)
        held_out_unknown += errors(corr, test, known=False)
    noise = [cal.measurement_noise(s, correction, m.duration, m.warmup, MIN_PACKETS) for _, s, _, m, _ in samples]
    rows = [{"load": l, "mean_measured_ms": 1e3 * m.mean_delay(s), "flows": int(np.isfinite(m.reliable_delay()).sum()),
             "raw_mape": r, "structural_mape": st, "after_mape": a, "after_walk_unknown_mape": u, "noise_mape": n,
             "sender_late_p99_ms": 1e3 * m.sender_late_p99, "cpu_busy": m.cpu_busy, "load_average": m.load_average,
             "weights": s.link_arrays["weight"].tolist(), "measured_s": m.delay.tolist(), "received": m.received.tolist(),
             "walk": w.to_dict() if w else None}
            for (l, s, p, m, w), r, st, a, u, n in zip(samples, raw, structural, after, after_unknown, noise)]
    report = {"topology": args.topology, "model": model, "states": len(samples), "loads": loads,
              "correction": asdict(correction),
              "tuned": tuned, "tune_samples": args.tune_samples if tuned else 0,
              "mape_general_structural": float(np.mean(general_structural)),
              "mape_before": float(np.mean(raw)), "mape_structural": float(np.mean(structural)),
              "mape_after": float(np.mean(after)), "mape_after_held_out": float(np.mean(held_out)),
              "mape_after_walk_unknown": float(np.mean(after_unknown)),
              "mape_after_held_out_walk_unknown": float(np.mean(held_out_unknown)),
              "mape_perfect_model": float(np.mean(noise)),
              "wall_s": time.monotonic() - started, "measurements": rows, "out": str(out)}
    cal.save(out, correction, {k: report[k] for k in ("topology", "model", "tuned", "states", "loads",
                                                           "mape_general_structural", "mape_before",
                                                           "mape_structural", "mape_after", "mape_after_held_out",
                                                           "mape_after_walk_unknown",
                                                           "mape_after_held_out_walk_unknown",
                                                           "mape_perfect_model")})
    if args.json:
        print_json(report)
        return 0
    print_table(rows, [("load", "load", ".2f"), ("mean_measured_ms", "measured ms", ".3f"), ("flows", "flows", "d"),
                       ("raw_mape", "twin MAPE", ".3f"),
                       ("structural_mape", "queueing-only MAPE", ".3f"), ("after_mape", "calibrated MAPE", ".3f"),
                       ("after_walk_unknown_mape", "walk unknown", ".3f"),
                       ("noise_mape", "perfect-model MAPE", ".3f"),
                       ("sender_late_p99_ms", "send late p99 ms", ".2f"), ("load_average", "load avg", ".1f")])
    c = correction
    print(f"{model} vs emulation, {len(samples)} states: general twin, queueing only: "
          f"{report['mape_general_structural']:.3f}; {'tuned' if tuned else 'general'} twin MAPE "
          f"{report['mape_before']:.3f} raw -> "
          f"{report['mape_after']:.3f} calibrated ({report['mape_after_held_out']:.3f} leave-one-load-out; "
          f"OVS's port walk unknown: {report['mape_after_walk_unknown']:.3f} and "
          f"{report['mape_after_held_out_walk_unknown']:.3f}; a perfect "
          f"model {report['mape_perfect_model']:.3f} against measurements this long); "
          f"capacity_scale {c.capacity_scale:.4f}, queue_scale {c.queue_scale:.3f}, per_hop {1e6 * c.per_hop_s:.1f} us, "
          f"base {1e6 * c.base_s:.1f} us, random hop {1e6 * c.random_hop_s:.1f} us, port walked {1e6 * c.port_s:.2f} us, "
          f"wrap {1e6 * c.wrap_s:.1f} us ({c.walk_ports} ports) -> {out}")
    return 0
