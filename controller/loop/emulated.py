"""The closed loop on an emulated network: the live network and the sandbox brought up in Mininet
with ``ndt controller`` routing them, telemetry read from the live controller's store, flow rules
pushed through its gRPC API, and optionally a Prometheus server scraping it."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from controller.api.client import ControllerClient
from controller.loop.closed_loop import ClosedLoop, LoopSettings, Timeline
from controller.loop.report import build_report, prometheus_check, summary, write_report
from mininet_topos.network import REPO, EmulatedNetwork, free_port
from mininet_topos.prometheus import PrometheusServer
from mininet_topos.sandbox import Validation, validate
from mininet_topos.traffic import Measurement, play
from telemetry.store import TelemetryStore
from telemetry.traffic_matrix import traffic_matrix
from twin.calibration.correction import Correction
from twin.calibration.port_walk import Walk
from twin.state.model import Link, NetworkState

DEFAULT_OUT = REPO / "data" / "loop"


class EmulatedLive:
    """:class:`~controller.loop.network.Network` over a running :class:`EmulatedNetwork`: measuring
    plays the state's traffic from the emulated hosts and reports the delays to the controller."""

    def __init__(self, net: EmulatedNetwork):
        self.net = net

    def measure(self, state: NetworkState, duration: float, warmup: float, seed: int, label: str) -> Measurement:
        measured = play(self.net, state, duration, warmup, seed, self.net.workdir / label)
        self.net.report_measured(measured.by_pair(state), source=f"emulation: {label}")
        return measured

    def traffic_matrix(self, start: float, end: float) -> dict[tuple[str, str], float]:
        store = TelemetryStore(self.net.store_path)
        try:
            return traffic_matrix(store.traffic_matrices(start, end), start, end)
        finally:
            store.close()

    def push(self, weights: np.ndarray, links: tuple[Link, ...], who: str) -> int:
        return self.net.apply_vector(weights, who=who, links=links)

    def fail_link(self, a: str, b: str) -> None:
        self.net.fail_link(a, b)

    def walk(self, state: NetworkState) -> Walk | None:
        return self.net.walk(state)


class EmulatedSandbox:
    """:class:`~controller.loop.network.Sandbox`: a fresh Mininet network per validation, its
    switches and hosts named with ``prefix`` so it runs beside the live one."""

    def __init__(self, prefix: str, tag: str):
        self.prefix, self.tag = prefix, tag

    def validate(self, state: NetworkState, candidates: list[np.ndarray], predictor, correction: Correction,
                 duration: float, warmup: float, seed: int) -> list[Validation]:
        return validate(state, candidates, predictor, correction, duration, warmup, seed, tag=self.tag,
                        prefix=self.prefix, connect=ControllerClient)


def run_loop(state: NetworkState, predictor, correction: Correction, settings: LoopSettings,
             out_dir: Path = DEFAULT_OUT, metrics_port: int = 0, log=print, prefixes: tuple[str, str] = ("l", "v"),
             tag: str = "live", shifts: tuple[NetworkState, ...] = (), failures: tuple[tuple[str, str], ...] = (),
             prometheus: bool = False) -> dict:
    """The loop on ``state`` brought up in Mininet (:meth:`ClosedLoop.run` for ``shifts`` and
    ``failures``). Returns the report of the first iteration with every iteration's summary (also
    written as JSON + PNG in ``out_dir``). ``prefixes``: Mininet name prefixes of the live and the
    sandbox network; ``tag``: the live network's directory under data/logs; ``prometheus``: a
    Prometheus server scrapes the live controller, its database kept in ``out_dir``/prometheus."""
    timeline = Timeline()
    out_dir = Path(out_dir).resolve()
    with ExitStack() as stack:
        with timeline.phase("live network up"):
            live = stack.enter_context(EmulatedNetwork(state, ControllerClient, prefixes[0], tag=tag,
                                                       metrics_port=metrics_port))
        log(f"live network: {len(state.nodes)} switches, {len(state.flows)} flows; metrics {live.metrics_url}")
        prom = None
        if prometheus:
            prom = stack.enter_context(PrometheusServer(out_dir / "prometheus", free_port(),
                                                        f"127.0.0.1:{live.metrics_port}"))
            log(f"Prometheus scraping it: {prom.url}")
        loop = ClosedLoop(EmulatedLive(live), EmulatedSandbox(prefixes[1], f"{tag}-sandbox"), predictor, correction,
                          settings, timeline, log)
        iterations = loop.run(state, shifts, failures)
        report = build_report(iterations[0], timeline, live.metrics_url, live.store_path)
        if prom is not None:
            report["prometheus"] = prometheus_check(prom, out_dir / "prometheus")
    report["iterations"] = [summary(it) for it in iterations]
    write_report(report, iterations[0], timeline, out_dir)
    return report
