"""The telemetry store's read side served by a Prometheus server (for networks that outgrow one SQLite file).

Same queries and return types as :class:`telemetry.store.TelemetryStore` for the series the
exporter publishes (link counters and utilization, traffic matrix, path delays), read with
``/api/v1/query_range`` at ``step_s`` resolution. Applied configurations are not metrics and stay in
the SQLite store.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from telemetry.store import DELAY_KINDS, LinkSample, PairValue, StoreError

_LINK_SERIES = {
    "tx_bytes": "ndt_link_transmit_bytes_total",
    "tx_packets": "ndt_link_transmit_packets_total",
    "tx_dropped": "ndt_link_transmit_dropped_packets_total",
    "utilization": "ndt_link_utilization_ratio",
}


class PrometheusReader:
    """Reads ndt's series from the Prometheus HTTP API at ``base_url`` (e.g. ``http://localhost:9090``)."""

    def __init__(self, base_url: str, step_s: float = 15.0, timeout_s: float = 10.0):
        if not step_s > 0:
            raise StoreError(f"step_s must be positive, got {step_s}")
        self.base_url = base_url.rstrip("/")
        self.step_s = step_s
        self.timeout_s = timeout_s

    def link_samples(self, start: float, end: float, src: str | None = None, dst: str | None = None) -> list[LinkSample]:
        """Link samples with start <= ts < end (one per step), optionally of one link, in time order."""
        columns: dict[str, dict] = {}
        for column, metric in _LINK_SERIES.items():
            columns[column] = self._range(metric + _selector(src, dst), start, end)
        rows = []
        for key in sorted(columns["tx_bytes"]):
            ts, s, d = key
            rows.append(LinkSample(ts, s, d, int(columns["tx_bytes"][key]), int(columns["tx_packets"].get(key, 0)),
                                   int(columns["tx_dropped"].get(key, 0)), columns["utilization"].get(key)))
        return rows

    def traffic_matrices(self, start: float, end: float) -> list[PairValue]:
        """Traffic-matrix rates (bit/s) per step, from the edge counters' rate over two steps."""
        window = f"{max(2 * self.step_s, 1.0):g}s"
        values = self._range(f"8 * rate(ndt_traffic_bytes_total[{window}])", start, end)
        return [PairValue(ts, s, d, v) for (ts, s, d), v in sorted(values.items())]

    def path_delays(self, kind: str, start: float, end: float, src: str | None = None,
                    dst: str | None = None) -> list[PairValue]:
        if kind not in DELAY_KINDS:
            raise StoreError(f"path delay kind {kind!r} is not one of {DELAY_KINDS}")
        values = self._range(f"ndt_path_delay_{kind}_seconds" + _selector(src, dst), start, end)
        return [PairValue(ts, s, d, v) for (ts, s, d), v in sorted(values.items())]

    def _range(self, query: str, start: float, end: float) -> dict[tuple[float, str, str], float]:
        """(ts, src, dst) → value for the points of ``query`` with start <= ts < end."""
        if not start <= end:
            raise StoreError(f"time range: start {start} is after end {end}")
        params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": self.step_s})
        url = f"{self.base_url}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body = json.load(resp)
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"Prometheus at {self.base_url}: query {query!r} failed ({exc})") from None
        if body.get("status") != "success":
            raise StoreError(f"Prometheus at {self.base_url}: query {query!r}: {body.get('error', body)}")
        out = {}
        for series in body["data"]["result"]:
            labels = series["metric"]
            for ts, value in series["values"]:
                if ts < end:
                    out[(float(ts), labels.get("src", ""), labels.get("dst", ""))] = float(value)
        return out


def _selector(src: str | None, dst: str | None) -> str:
    labels = [f'{name}="{value}"' for name, value in (("src", src), ("dst", dst)) if value is not None]
    return "{" + ",".join(labels) + "}" if labels else ""
