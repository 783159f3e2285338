"""A real Prometheus server (Debian ``prometheus``) scrapes the exporter; every PromQL expression of
the Grafana dashboard and of the alert rules must return data. The exporter is fed values that make
every alert condition true, so the rules are checked to fire, not only to parse. The alerts on a
vanished exporter or series are checked by Prometheus's own rule engine (``promtool test rules``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from mininet_topos.network import free_port
from telemetry.exporter import Exporter, Metrics
from telemetry.store import LinkSample

DASHBOARDS = Path(__file__).resolve().parents[2] / "telemetry" / "dashboards"
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.prometheus



WHEN_GONE = {"NdtExporterDown"}  # fires only without a live exporter: see test_alerts_fire_when_series_vanish


def expressions() -> list[str]:
    dashboard = json.loads((DASHBOARDS / "ndt-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DASHBOARDS / "ndt-alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"] if rule["alert"] not in WHEN_GONE]
    return exprs


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def fed_exporter():
    """An exporter whose values trip every alert; byte, drop and offered-packet counters keep growing."""
    metrics = Metrics()
    metrics.set_link_up("s1", "s2", True)
    metrics.set_link_up("s2", "s1", False)
    metrics.set_path_delays("predicted", {("s1", "s2"): 0.001})
    metrics.set_path_delays("measured", {("s1", "s2"): 0.002})
    metrics.set_gauge("twin_error_ratio", 0.2)
    metrics.set_anomalies(2, {("s1", "s2"): 1.0}, new=2, load_deviations={("s1", "s2"): -0.05}, new_links=1,
                          losses={("s1", "s2"): 0.05})
    metrics.set_gauge("switches_connected", 2)
    metrics.set_gauge("route_version", 3)
    metrics.set_gauge("routing_switch_over_seconds", 2.5)
    metrics.set_gauge("stats_poll_duration_seconds", 0.01)
    metrics.inc("routing_changes", 3)
    metrics.inc("optimizer_runs")
    metrics.set_control_rtt("s1", 0.0004)
    stop = threading.Event()

    def feed():
        tick = 0
        while not stop.is_set():
            tick += 1
            metrics.update_links([LinkSample(time.time(), "s1", "s2", 125_000 * tick, 100 * tick, tick, 0.95)])
            metrics.set_offered_packets({("s1", "s2"): 105 * tick})
            metrics.set_traffic_bytes({("s1", "s2"): 100_000 * tick})
            metrics.observe_loopback("s1", 0.0008 + 0.0001 * (tick % 5))
            metrics.inc("frames_not_flooded")
            metrics.set_packet_in_meter_drops("s1", 40 * tick)
            stop.wait(0.25)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    exporter = Exporter(metrics)
    port = exporter.serve(port=0)
    yield port
    stop.set()
    exporter.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, fed_exporter):
    tmp_path = tmp_path_factory.mktemp("prometheus")
    if PROMETHEUS is None:
        pytest.fail("prometheus not found: run scripts/install-system-deps.sh")
    web = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DASHBOARDS / "ndt-alerts.yml")],
        "scrape_configs": [{"job_name": "ndt", "static_configs": [{"targets": [f"127.0.0.1:{fed_exporter}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                if query(base, 'count_over_time(up{job="ndt"}[1m]) >= 4'):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the exporter 4 times in 30 s"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_rule_file_is_valid():
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian prometheus) not installed")
    run = subprocess.run(["promtool", "check", "rules", str(DASHBOARDS / "ndt-alerts.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def alert_test(series: dict[str, str], eval_time: str, alert: str, expected: list[dict]) -> dict:
    """One promtool rule test: ``series`` (name → promtool values, 15 s apart), the alert expected at ``eval_time``."""
    rules = yaml.safe_load((DASHBOARDS / "ndt-alerts.yml").read_text())
    summary = next(r["annotations"]["summary"] for g in rules["groups"] for r in g["rules"] if r["alert"] == alert)
    return {"interval": "15s",
            "input_series": [{"series": name, "values": values} for name, values in series.items()],
            "alert_rule_test": [{"eval_time": eval_time, "alertname": alert,
                                 "exp_alerts": [{"exp_labels": labels, "exp_annotations": {
                                     "summary": re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)],
                                                       summary)}} for labels in expected]}]}


def run_alert_tests(tmp_path, tests: list[dict]) -> None:
    """``tests`` (from :func:`alert_test`) through ``promtool test rules``; fails with its output."""
    spec = {"rule_files": [str(DASHBOARDS / "ndt-alerts.yml")], "evaluation_interval": "15s", "tests": tests}
    (tmp_path / "alerts-test.yml").write_text(yaml.safe_dump(spec))
    run = subprocess.run(["promtool", "test", "rules", str(tmp_path / "alerts-test.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_alerts_fire_when_series_vanish(tmp_path):
    """The exporter reporting down, the exporter never scraped, and the polling counter vanishing each fire;
    a healthy exporter fires nothing."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh")
    up = 'up{job="ndt", instance="c:9108"}'
    polls = 'ndt_stats_polls_total{job="ndt", instance="c:9108"}'
    tests = [
        alert_test({up: "1 1 0x10"}, "3m", "NdtExporterDown",
                   [{"job": "ndt", "instance": "c:9108", "severity": "critical"}]),
        alert_test({'up{job="other"}': "1x20"}, "3m", "NdtExporterDown", [{"job": "ndt", "severity": "critical"}]),
        alert_test({up: "1x20"}, "4m", "NdtExporterDown", []),
        alert_test({polls: "1+1x4 stale"}, "5m", "NdtStatisticsStalled", [{"severity": "critical"}]),
        alert_test({polls: "1+1x40"}, "8m", "NdtStatisticsStalled", []),
        alert_test({polls: "5x40"}, "8m", "NdtStatisticsStalled",
                   [{"job": "ndt", "instance": "c:9108", "severity": "critical"}]),
    ]
    run_alert_tests(tmp_path, tests)


def test_the_anomaly_alerts_fire_on_persistent_anomalies_only(tmp_path):
    """Anomalous paths for more than 30 s fire NdtDelayAnomaly, links anomalous by load for more than
    15 s NdtLoadAnomaly, with their count; none, or one scrape's worth, fire nothing."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh")
    paths = 'ndt_anomaly_paths{job="ndt", instance="c:9108"}'
    links = 'ndt_anomaly_links{job="ndt", instance="c:9108"}'
    labels = [{"job": "ndt", "instance": "c:9108", "severity": "warning"}]
    fired_paths = alert_test({paths: "0 0 3x10"}, "2m", "NdtDelayAnomaly", labels)
    fired_links = alert_test({links: "0 0 1x10"}, "1m", "NdtLoadAnomaly", labels)
    for fired, count in ((fired_paths, "3"), (fired_links, "1")):
        annotations = fired["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"]
        annotations["summary"] = annotations["summary"].replace("{{ $value }}", count)
    tests = [fired_paths, alert_test({paths: "0x20"}, "4m", "NdtDelayAnomaly", []),
             alert_test({paths: "0 0 2 0x10"}, "2m", "NdtDelayAnomaly", []),
             fired_links, alert_test({links: "0x20"}, "4m", "NdtLoadAnomaly", []),
             alert_test({links: "0 0 1 0x10"}, "30s", "NdtLoadAnomaly", [])]  # one scrape's worth: pending only
    run_alert_tests(tmp_path, tests)


def test_the_flood_alert_fires_on_frames_dropped_for_five_minutes_only(tmp_path):
    """Frames dropped beyond an edge port's budget for over 5 minutes fire NdtFloodBudgetSpent; a burst
    that stops, or none, fire nothing."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh")
    dropped = 'ndt_frames_not_flooded_total{job="ndt", instance="c:9108"}'
    tests = [alert_test({dropped: "0+10x60"}, "12m", "NdtFloodBudgetSpent",
                        [{"job": "ndt", "instance": "c:9108", "severity": "info"}]),
             alert_test({dropped: "0+10x4 40x60"}, "12m", "NdtFloodBudgetSpent", []),
             alert_test({dropped: "0x60"}, "12m", "NdtFloodBudgetSpent", [])]
    run_alert_tests(tmp_path, tests)


def test_the_meter_alert_fires_per_switch_on_frames_dropped_for_five_minutes_only(tmp_path):
    """A switch whose packet-in meter drops frames for over 5 minutes fires NdtPacketInMeterDropping for
    that switch; one that stopped dropping, or never did, fires nothing."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh")
    flooded = 'ndt_packet_in_meter_dropped_total{job="ndt", instance="c:9108", switch="s1"}'
    quiet = 'ndt_packet_in_meter_dropped_total{job="ndt", instance="c:9108", switch="s2"}'
    tests = [alert_test({flooded: "0+500x60", quiet: "7x60"}, "12m", "NdtPacketInMeterDropping",
                        [{"job": "ndt", "instance": "c:9108", "switch": "s1", "severity": "warning"}]),
             alert_test({flooded: "0+500x4 2000x60"}, "12m", "NdtPacketInMeterDropping", [])]
    run_alert_tests(tmp_path, tests)


def test_every_dashboard_and_alert_expression_returns_data(prometheus):
    assert query(prometheus, 'up{job="ndt"}')[0]["value"][1] == "1"
    empty = [expr for expr in expressions() if not query(prometheus, expr)]
    assert not empty, f"no data for: {empty}"
