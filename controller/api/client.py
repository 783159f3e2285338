"""The controller's gRPC API as Python calls: what the closed loop, the calibration, the emulation
tests and measurement agents use to drive a running ``ndt controller`` (the emulation takes it as
``connect``). It speaks to an API behind a bearer token and TLS (mutual TLS too) as the controller
serves it beyond loopback (``ndt controller --help``, docs/operations.md)."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import grpc

from controller.api import ndt_api_pb2 as pb
from controller.api import ndt_api_pb2_grpc as services
from controller.tls_files import check_tls_files
from twin.state.errors import NdtError


class _CallDetails(namedtuple("_CallDetails", "method timeout metadata credentials wait_for_ready compression"),
                   grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (with or without TLS, as the server accepts it)."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self._header],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)


def _tls_credentials(tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None):
    """Channel credentials from PEM files, checked first (a bad file would otherwise only show as a
    server that never answers); None without ``tls_ca``."""
    if tls_ca is None:
        if tls_cert is not None or tls_key is not None:
            raise NdtError(f"--tls-cert {tls_cert} / --tls-key {tls_key}: a client certificate and its key need "
                           "--tls-ca, the CA to trust for the server's (a client certificate is only sent over TLS)")
        return None
    check_tls_files(tls_cert, tls_key, tls_ca)
    read = (lambda path: None if path is None else Path(path).read_bytes())
    return grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))


class ControllerClient:
    """A channel to the controller's API at ``address`` (host:port), ready within ``ready_s`` s.

    ``token``: the controller's ``NDT_API_TOKEN``, sent as a bearer token. ``tls_ca``: the PEM
    certificate(s) to trust for the server's (turns TLS on; ``address`` must name a host its
    certificate is for); ``tls_cert`` and ``tls_key``: this client's certificate and key, for a
    controller started with ``--tls-client-ca``. Files that are missing or not PEM, or a certificate
    without its key or without ``tls_ca``, raise :class:`NdtError` at once."""

    def __init__(self, address: str, ready_s: float = 20.0, token: str | None = None, tls_ca: Path | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None):
        credentials = _tls_credentials(tls_ca, tls_cert, tls_key)
        channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
        try:
            grpc.channel_ready_future(channel).result(timeout=ready_s)
        except grpc.FutureTimeoutError:
            channel.close()
            raise
        self._channel = channel
        self.stub = services.NdtStub(grpc.intercept_channel(channel, _BearerToken(token)) if token else channel)

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
                        window: tuple[float, float] | None = None, samples: dict[tuple[str, str], int] | None = None):
        """Measured mean path delays (s) to the controller's store and exporter (gRPC ReportMeasured);
        with ``window`` (start, end; Unix s), the span they are means over, the closed loop uses them too;
        ``samples``: per pair, how many packets or probes its mean is over (the online fit weighs by it)."""
        counts = samples or {}
        paths = [pb.PathDelay(src=s, dst=d, delay_s=float(v), samples=int(counts.get((s, d), 0)))
                 for (s, d), v in delays.items()]
        start, end = window or (0.0, 0.0)
        return self.stub.ReportMeasured(pb.MeasuredDelays(paths=paths, source=source, start=start, end=end),
                                        timeout=10)

    def anomalies(self, max_suspects: int = 10):
        """The anomalous paths now and the suspect links, best first (gRPC ListAnomalies)."""
        return self.stub.ListAnomalies(pb.AnomaliesRequest(max_suspects=max_suspects), timeout=10)
