"""How the gRPC API answers its control calls while abusive clients hold streams (target: each within 1 s).

``python experiments/api_abuse.py [STREAMS ROUNDS]`` starts the real server beside a stand-in controller
(the one the unit tests use: no switches), opens STREAMS telemetry streams with the longest interval
(default 64), and ROUNDS times (default 50) times health, GetStatus and Apply over a second channel. It
prints one JSON line: streams admitted and refused (and with which status), and the worst and median
latency of each control call in ms. The target: every control call within 1 s.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.api.server import NdtService, pb, serve, services  # noqa: E402
from telemetry.exporter import Metrics  # noqa: E402
from telemetry.store import TelemetryStore  # noqa: E402
from tests.api_stand_in import StandIn  # noqa: E402
from twin.models.registry import get_predictor  # noqa: E402


def main(streams: int = 64, rounds: int = 50) -> dict:
    server, port = serve(NdtService(StandIn(), TelemetryStore(), Metrics(), get_predictor, "qt"), "127.0.0.1:0")
    abuser = grpc.insecure_channel(f"127.0.0.1:{port}")
    opened = [services.NdtStub(abuser).StreamTelemetry(pb.StreamRequest(interval_s=60)) for _ in range(streams)]
    outcomes: dict[str, int] = {}
    for stream in opened:
        try:
            next(stream)
            key = "admitted"
        except grpc.RpcError as exc:
            key = exc.code().name
        outcomes[key] = outcomes.get(key, 0) + 1
    latencies: dict[str, list[float]] = {"health": [], "GetStatus": [], "Apply": []}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as operator:
        stub, health = services.NdtStub(operator), health_pb2_grpc.HealthStub(operator)
        calls = {
            "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1),
            "GetStatus": lambda: stub.GetStatus(pb.Empty(), timeout=1),
            "Apply": lambda: stub.Apply(pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=3)]),
                                        timeout=1),
        }
        for _ in range(rounds):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                latencies[name].append(1e3 * (time.perf_counter() - started))
    for stream in opened:
        stream.cancel()
    abuser.close()
    server.stop(None)
    report = {"streams": streams, "rounds": rounds, "outcomes": outcomes}
    for name, values in latencies.items():
        report[f"{name}_ms_max"] = round(max(values), 2)
        report[f"{name}_ms_median"] = round(statistics.median(values), 2)
    return report


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:3]))))
