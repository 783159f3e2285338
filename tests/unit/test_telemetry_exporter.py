"""The Prometheus exporter, scraped over real HTTP and parsed with Prometheus' own text parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.exporter import Exporter, Metrics
from telemetry.store import LinkSample


@pytest.fixture
def exporter():
    exp = Exporter(Metrics())
    port = exp.serve(port=0)
    yield exp, f"http://127.0.0.1:{port}/metrics"
    exp.stop()


def scrape(url) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_scrape_names_labels_and_values(exporter):
    exp, url = exporter
    m = exp.metrics
    m.update_links([LinkSample(1.0, "s1", "s2", 12345, 100, 2, 0.25)])
    m.set_link_up("s1", "s2", True)
    m.set_link_up("s2", "s3", False)
    m.set_traffic_bytes({("s1", "s3"): 999})
    m.set_path_delays("predicted", {("s1", "s3"): 0.0012})
    m.set_path_delays("measured", {("s1", "s3"): 0.0015})
    m.inc("routing_changes")
    m.inc("routing_changes")
    m.inc("optimizer_runs")
    m.set_gauge("twin_error_ratio", 0.04)
    m.set_gauge("switches_connected", 3)
    got = scrape(url)
    link = (("dst", "s2"), ("src", "s1"))
    path = (("dst", "s3"), ("src", "s1"))
    assert got[("ndt_link_transmit_bytes_total", link)] == 12345
    assert got[("ndt_link_transmit_packets_total", link)] == 100
    assert got[("ndt_link_transmit_dropped_packets_total", link)] == 2
    assert got[("ndt_link_utilization_ratio", link)] == 0.25
    assert got[("ndt_link_up", (("dst", "s3"), ("src", "s2")))] == 0
    assert got[("ndt_traffic_bytes_total", path)] == 999
    assert got[("ndt_path_delay_seconds", (("dst", "s3"), ("kind", "predicted"), ("src", "s1")))] == 0.0012
    assert got[("ndt_path_delay_seconds", (("dst", "s3"), ("kind", "measured"), ("src", "s1")))] == 0.0015
    assert got[("ndt_routing_changes_total", ())] == 2
    assert got[("ndt_optimizer_runs_total", ())] == 1
    assert got[("ndt_twin_error_ratio", ())] == 0.04
    assert got[("ndt_switches_connected", ())] == 3


def test_updates_show_on_next_scrape(exporter):
    exp, url = exporter
    exp.metrics.update_links([LinkSample(1.0, "a", "b", 1, 1, 0, None)])
    assert ("ndt_link_utilization_ratio", (("dst", "b"), ("src", "a"))) not in scrape(url)
    exp.metrics.update_links([LinkSample(2.0, "a", "b", 500, 2, 0, 0.5)])
    got = scrape(url)
    assert got[("ndt_link_transmit_bytes_total", (("dst", "b"), ("src", "a")))] == 500
    assert got[("ndt_stats_polls_total", ())] == 0


def test_anomaly_metrics_replace_the_suspects_and_count_new_anomalies(exporter):
    exp, url = exporter
    exp.metrics.set_anomalies(3, {("a", "b"): 1.0, ("b", "c"): 0.25}, new=3, load_deviations={("c", "d"): 0.6},
                              new_links=1)
    got = scrape(url)
    assert got[("ndt_anomaly_paths", ())] == 3 and got[("ndt_anomalies_total", ())] == 3
    assert got[("ndt_anomaly_suspect_score", (("dst", "b"), ("src", "a")))] == 1.0
    assert got[("ndt_anomaly_links", ())] == 1 and got[("ndt_link_anomalies_total", ())] == 1
    assert got[("ndt_anomaly_link_load_deviation_ratio", (("dst", "d"), ("src", "c")))] == 0.6
    exp.metrics.set_anomalies(0, {}, new=0)
    got = scrape(url)
    assert got[("ndt_anomaly_paths", ())] == 0 and got[("ndt_anomalies_total", ())] == 3
    assert got[("ndt_anomaly_links", ())] == 0 and got[("ndt_link_anomalies_total", ())] == 1
    assert not [key for key in got if key[0] in ("ndt_anomaly_suspect_score", "ndt_anomaly_link_load_deviation_ratio")]


def test_offered_packets_and_each_windows_loss_are_exported(exporter):
    exp, url = exporter
    exp.metrics.set_offered_packets({("a", "b"): 1200})
    exp.metrics.set_offered_packets({("b", "c"): 30})
    exp.metrics.set_anomalies(0, {}, new=0, losses={("a", "b"): 0.05})
    got = scrape(url)
    assert got[("ndt_link_offered_packets_total", (("dst", "b"), ("src", "a")))] == 1200
    assert got[("ndt_link_offered_packets_total", (("dst", "c"), ("src", "b")))] == 30
    assert got[("ndt_link_loss_ratio", (("dst", "b"), ("src", "a")))] == 0.05
    exp.metrics.set_anomalies(0, {}, new=0)
    assert not [key for key in scrape(url) if key[0] == "ndt_link_loss_ratio"]


def test_loopback_times_are_a_cumulative_histogram_per_switch(exporter):
    exp, url = exporter
    for seconds in (0.0004, 0.0012, 0.0012, 0.25):
        exp.metrics.observe_loopback("s1", seconds)
    exp.metrics.observe_loopback("s2", 0.001)
    got = scrape(url)

    def bucket(switch, bound):
        return got[("ndt_probe_loopback_seconds_bucket", (("le", bound), ("switch", switch)))]

    assert bucket("s1", "0.0003") == 0
    assert bucket("s1", "0.0005") == 1
    assert bucket("s1", "0.001") == 1
    assert bucket("s1", "0.0015") == 3
    assert bucket("s1", "0.1") == 3
    assert bucket("s1", "+Inf") == 4
    assert got[("ndt_probe_loopback_seconds_count", (("switch", "s1"),))] == 4
    assert got[("ndt_probe_loopback_seconds_sum", (("switch", "s1"),))] == pytest.approx(0.2528)
    assert bucket("s2", "0.001") == 1  # a time on a bound falls in that bucket


def test_the_probe_experiment_reads_loopback_quantiles_as_prometheus_would(exporter):
    from experiments.probe_accuracy import histogram_quantile, loopback_histogram, scrape

    exp, url = exporter
    for seconds in [0.0004] * 50 + [0.0009] * 40 + [0.004] * 9 + [0.3]:
        exp.metrics.observe_loopback("s1" if seconds < 0.001 else "s2", seconds)
    cumulative = loopback_histogram(scrape(url))  # both switches summed
    assert cumulative[float("inf")] == 100 and cumulative[0.0005] == 50
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.0005)  # the 50th falls on the bucket's top
    assert histogram_quantile(0.7, cumulative) == pytest.approx(0.00075 + 0.00025 * 20 / 40)
    assert histogram_quantile(0.995, cumulative) == 0.1  # in +Inf: the last finite bound
    assert histogram_quantile(0.5, {}) is None


def test_the_probe_experiment_reads_the_host_edge_as_prometheus_serves_it(exporter):
    from experiments.probe_accuracy import host_edge_gauge, scrape

    exp, url = exporter
    assert host_edge_gauge(scrape(url)) is None  # no report yet: no fit, no gauge
    exp.metrics.set_gauge("probe_host_edge_seconds", 0.00042)
    assert host_edge_gauge(scrape(url)) == pytest.approx(0.00042)


def test_unknown_names_are_rejected():
    m = Metrics()
    with pytest.raises(ValueError, match="unknown counter 'bogus'"):
        m.inc("bogus")
    with pytest.raises(ValueError, match="unknown gauge 'bogus'"):
        m.set_gauge("bogus", 1)
    with pytest.raises(ValueError, match="kind 'guessed'"):
        m.set_path_delays("guessed", {})
