"""The controller's gRPC API as Python calls: what the closed loop, the calibration and the emulation
tests use to drive a running ``ndt controller`` (the emulation takes it as ``connect``)."""

from __future__ import annotations

import json

import grpc

from controller.api import ndt_api_pb2 as pb
from controller.api import ndt_api_pb2_grpc as services


class ControllerClient:
    """A channel to the controller's API at ``address`` (host:port), ready within ``ready_s`` s."""

    def __init__(self, address: str, ready_s: float = 20.0):
        self._channel = grpc.insecure_channel(address)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=ready_s)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise
        self.stub = services.NdtStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def status(self):
        """Switches connected, hosts learned, links down, route version (GetStatus)."""
        return self.stub.GetStatus(pb.Empty(), timeout=10)

    def apply(self, weights: dict[tuple[str, str], float], who: str) -> int:
        """Push OSPF weights (gRPC Apply); returns the route version installed."""
        changes = [pb.WeightChange(src=s, dst=d, weight=float(w)) for (s, d), w in weights.items()]
        return self.stub.Apply(pb.ApplyRequest(weights=changes, who=who), timeout=30).route_version

    def weights(self) -> dict[tuple[str, str], float]:
        """The weights the controller routes by now."""
        return {(lk.src, lk.dst): lk.weight for lk in self.stub.GetTopology(pb.Empty(), timeout=10).links}

    def state(self):
        """The running network as a :class:`twin.state.model.NetworkState` (gRPC GetState): topology in
        service, routing in place, traffic measured over the controller's window."""
        from twin.state.model import NetworkState

        return NetworkState.from_dict(json.loads(self.stub.GetState(pb.Empty(), timeout=30).state_json))

    def report_measured(self, delays: dict[tuple[str, str], float], source: str,
                        window: tuple[float, float] | None = None):
        """Measured mean path delays (s) to the controller's store and exporter (gRPC ReportMeasured);
        with ``window`` (start, end; Unix s), the span they are means over, the closed loop uses them too."""
        paths = [pb.PathDelay(src=s, dst=d, delay_s=float(v)) for (s, d), v in delays.items()]
        start, end = window or (0.0, 0.0)
        return self.stub.ReportMeasured(pb.MeasuredDelays(paths=paths, source=source, start=start, end=end),
                                        timeout=10)

    def anomalies(self, max_suspects: int = 10):
        """The anomalous paths now and the suspect links, best first (gRPC ListAnomalies)."""
        return self.stub.ListAnomalies(pb.AnomaliesRequest(max_suspects=max_suspects), timeout=10)
