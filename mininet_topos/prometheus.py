"""A Prometheus server (Debian ``prometheus``) scraping the live controller while the loop runs.

Its configuration and time-series database stay in ``directory`` afterwards, so the run can be
browsed later with the command :func:`browse_command` returns. Scrapes every second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mininet_topos.network import EmulationError

ALERTS = Path(__file__).resolve().parents[1] / "telemetry" / "dashboards" / "ndt-alerts.yml"


def browse_command(directory: Path, port: int) -> str:
    binary = shutil.which("prometheus") or "prometheus"
    return (f"{binary} --config.file={directory / 'prometheus.yml'} --storage.tsdb.path={directory / 'tsdb'} "
            f"--web.listen-address=127.0.0.1:{port}")


class PrometheusServer:
    """``with PrometheusServer(directory, port, target) as prom:`` scrape ``target`` (host:port) as job ``ndt``."""

    def __init__(self, directory: Path, port: int, target: str):
        if shutil.which("prometheus") is None:
            raise EmulationError("prometheus not found: run scripts/install-system-deps.sh (or pass --no-prometheus)")
        self.directory, self.port, self.target = Path(directory), port, target
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def __enter__(self) -> PrometheusServer:
        import yaml

        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.directory / "tsdb", ignore_errors=True)
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(ALERTS)],
                  "scrape_configs": [{"job_name": "ndt", "static_configs": [{"targets": [self.target]}]}]}
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(self.directory / "prometheus.log", "w")
        self.proc = subprocess.Popen(browse_command(self.directory, self.port).split(), stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise EmulationError(f"prometheus did not start on port {self.port}; see {self.directory / 'prometheus.log'}")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list:
        """The instant-query result vector of a PromQL expression."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())["data"]["result"]
