"""``ndt replay``: troubleshoot by replaying past states from the telemetry store through the twin."""

from __future__ import annotations

import argparse
import math
from datetime import datetime, timezone
from pathlib import Path

from ndt.options import number, picture_path
from ndt.output import print_json, print_table

LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z


def register(subparsers) -> None:
    from twin.models.registry import PREDICTORS

    p = subparsers.add_parser(
        "replay", help="replay past states from the telemetry store: predicted vs measured delay, suspects",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Rebuild the network at each step of a past window from the controller's telemetry store and ask the\n"
            "twin about it: the topology of --state (the store keeps none) routed by the weights in place (the\n"
            "store's routing records: pushes, operators' Apply, rollbacks), without the links out of service\n"
            "(link records and the closed loop's decisions), carrying the traffic matrix measured over the step.\n"
            "Shows the twin's traffic-weighted mean delay beside the measured one over the same pairs, the\n"
            "pushes and link events, and the suspects: links that the paths where twin and network disagree\n"
            "cross and the agreeing paths do not (docs/analysis.md). --whatif-at T answers what would have\n"
            "happened at T without the last push before it. The store is opened read-only.\n\n"
            "times: Unix seconds (1796407200) or ISO 8601 (2026-12-04T18:00:00Z; no zone means UTC)\n\n"
            "examples:\n"
            "  ndt replay --state ring.json --from 2026-12-04T18:00:00Z --to 2026-12-04T18:30:00Z\n"
            "  ndt replay --store /var/lib/ndt/telemetry.db --state ring.json --from 1796407200 --to 1796409000 \\\n"
            "      --whatif-at 1796408100 --plot replay.png --json"),
    )
    p.add_argument("--store", type=Path, default=Path("ndt-telemetry.db"), metavar="FILE",
                   help="the controller's SQLite telemetry store (default: ndt-telemetry.db, as 'ndt controller')")
    p.add_argument("--state", type=Path, required=True, metavar="FILE",
                   help="the state file the controller was started with: its topology and initial weights")
    p.add_argument("--from", dest="start", type=moment, required=True, metavar="T", help="start of the window")
    p.add_argument("--to", dest="end", type=moment, required=True, metavar="T", help="end of the window (excluded)")
    p.add_argument("--step", type=number(1, 86400, unit=" s"), default=10.0, metavar="S",
                   help="replay step, s: each step's traffic and delays are its means (default: 10; the "
                        "controller reports probe delays every 10 s)")
    p.add_argument("--model", choices=[m for m in PREDICTORS if m != "sim"], default=PREDICTORS[-1],
                   help=f"twin model (default: {PREDICTORS[-1]})")
    p.add_argument("--weights-dir", type=Path, metavar="DIR", help="model weights and intervals (default: shipped)")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="a correction from 'ndt calibrate': the twin then predicts what the emulated network's "
                        "probes measure (forwarding costs included); prediction intervals then do not apply")
    p.add_argument("--measured", choices=("auto", "probe", "measured"), default="auto",
                   help="measured delays to compare with: the controller's in-band probes, the hosts' own "
                        "(gRPC ReportMeasured), or auto: whichever has more samples in the window (default)")
    p.add_argument("--tolerance", type=number(0, 100, open_low=True), default=0.25, metavar="R",
                   help="relative residual |measured - predicted| / predicted beyond which a path disagrees, when "
                        "the model has no prediction interval for it (default: 0.25)")
    p.add_argument("--whatif-at", type=moment, metavar="T",
                   help="a moment in the window: predict it with the routing in place and with the routing the "
                        "last push before it replaced (a counterfactual), on the traffic measured over [T, T+step)")
    p.add_argument("--plot", type=picture_path, metavar="FILE.png",
                   help="draw predicted and measured mean delay over time, pushes and link events marked")
    p.add_argument("--top", type=number(1, 10**6, integer=True), default=5,
                   help="suspects shown (default: 5; --json has all)")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    p.set_defaults(handler=run)


def moment(text: str) -> float:
    """A time as Unix seconds: the number itself, or ISO 8601 (no zone: UTC)."""
    try:
        value = float(text)
    except ValueError:
        try:
            utc = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text  # Python 3.10 reads no "Z"
            when = datetime.fromisoformat(utc)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected Unix seconds or ISO 8601 such as 2026-12-04T18:00:00Z, "
                                             f"got {text[:40]!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        value = when.timestamp()
    if not (math.isfinite(value) and 0 <= value <= LATEST_TIME):
        raise argparse.ArgumentTypeError(f"a time from 1970 to 9999 (Unix seconds 0 to {LATEST_TIME:.0f}), "
                                         f"got {text[:40]}")
    return value


def run(args: argparse.Namespace) -> int:
    from analysis.replay import ReplayError, counterfactual, iso, open_store, replay
    from twin.models.intervals import load_intervals
    from twin.models.registry import get_predictor
    from twin.state.model import NetworkState

    base = NetworkState.load(args.state)
    if args.whatif_at is not None and not args.start <= args.whatif_at < args.end:
        raise ReplayError(f"--whatif-at {iso(args.whatif_at)} lies outside the window {iso(args.start)} to "
                          f"{iso(args.end)}")
    store = open_store(args.store)
    try:
        predictor, intervals = _twin(args, get_predictor, load_intervals)
        report = replay(store, base, args.start, args.end, predictor, args.step, intervals, args.measured,
                        args.tolerance)
        if args.whatif_at is not None:
            report["whatif"] = counterfactual(store, base, args.whatif_at, predictor, args.step, args.measured)
    finally:
        store.close()
    report = {"store": str(args.store), "from": args.start, "to": args.end, "step": args.step, "model": args.model,
              "calibration": None if args.calibration is None else str(args.calibration), **report}
    if args.plot:
        from analysis.replay import replay_picture

        report["plot"] = str(replay_picture(report, args.plot, args.model, args.whatif_at))
    if args.json:
        print_json(report)
        return 0
    _print(report, args.top, iso)
    return 0


def _twin(args, get_predictor, load_intervals):
    """The predictor and its intervals (none with a calibration: they bound the twin's own delays)."""
    predictor = get_predictor(args.model, args.weights_dir)
    if args.calibration is None:
        return predictor, load_intervals(args.model, args.weights_dir)
    from twin.calibration.correction import CalibratedPredictor, load

    return CalibratedPredictor(predictor, load(args.calibration)[0]), None


def _print(report: dict, top: int, iso) -> None:
    steps = report["steps"]
    kind = report["measured_kind"]
    source = {"probe": "the controller's in-band probes", "measured": "the hosts' own measurements",
              None: "none in the store for this window"}[kind]
    print(f"replay of {report['store']} from {iso(report['from'])} to {iso(report['to'])}: {len(steps)} steps of "
          f"{report['step']:g} s, model {report['model']}; measured delays: {source}")
    print_table([dict(s, pred_ms=_ms(s["predicted_mean"]), meas_ms=_ms(s["measured_mean"]),
                      all_ms=_ms(s["predicted_mean_all"]),
                      routing_text="state file" if s["routing"] is None else f"config {s['routing']}",
                      down_text=", ".join(s["down"]) or "-", mark="*" if s["changed"] else "")
                 for s in steps],
                [("time", "step start", ""), ("mark", "", ""), ("routing_text", "routing", ""),
                 ("down_text", "links down", ""), ("flows", "flows", "d"), ("pairs", "compared", "d"),
                 ("pred_ms", "predicted ms", ".3f"), ("meas_ms", "measured ms", ".3f"),
                 ("disagreeing", "disagree", "d"), ("all_ms", "predicted ms, every demand", ".3f")])
    if any(s["changed"] for s in steps):
        print("* the routing or the links changed during the step or in the 10 s before it (a probe row averages "
              "the 10 s before its time): its measurements mix two networks, so it is left out of the suspects")
    print("events:" if report["events"] else "events: none in the window")
    for event in report["events"]:
        print(f"  {event['time']}  {event['label']}  ({event['who']}, config {event['config']})")
    judged = report["judged_by"]
    rule = (f"outside the prediction interval ({judged['interval']} paths) or, without one, beyond a relative "
            f"residual of {report['tolerance']:g} ({judged['tolerance']} paths)")
    if kind is None:
        print("suspects: none (no measured delay to compare with)")
    elif not report["suspects"]:
        print(f"suspects: none (no compared path disagrees: {rule})")
    else:
        print(f"suspects (paths disagree when {rule}; score: share of the disagreement crossing the link x share "
              "of its paths that disagree):")
        print_table(report["suspects"][:top], [("link", "link", ""), ("score", "score", ".3f"),
                                               ("disagreeing", "disagreeing", "d"), ("agreeing", "agreeing", "d"),
                                               ("mean_residual", "mean residual", "+.2f")])
    if "whatif" in report:
        w = report["whatif"]
        push = w["push"]
        print(f"at {w['time']}, without the push of {push['time']} ({push['who']}, config {push['config']}, "
              f"{push['links_changed']} weights; {w['paths_changed']} demands routed differently):")
        print(f"  predicted mean delay {_ms_text(w['with_push']['predicted_mean'])} ms with it, "
              f"{_ms_text(w['without_push']['predicted_mean'])} ms without it; measured "
              f"{_ms_text(w['with_push']['measured_mean'])} ms")
    if "plot" in report:
        print(f"picture: {report['plot']}")


def _ms(seconds) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _ms_text(seconds) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.3f}"
