"""Run a real Prometheus (Debian's /usr/bin/prometheus) on loopback for tests.

    with PrometheusServer(["127.0.0.1:9108"], rule_files=[ALERTS]) as prom:
        prom.wait_for("count_over_time(canwatch_up[1m]) >= 2")
        prom.query('sum(rate(canwatch_frames_consumed_total[1m]))')

Also loads ``dashboards/build.py`` (``load_dashboard_builder``) so tests can
evaluate every dashboard panel query with ``panel_queries``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

from detector.transport.broker import free_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "dashboards"
ALERTS = DASHBOARDS / "prometheus" / "alerts.yml"
PROMETHEUS = os.environ.get("CANWATCH_PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("CANWATCH_PROMTOOL", "/usr/bin/promtool")


def find_binary(path: str) -> str | None:
    """``path`` if executable, else the same name on PATH, else None."""
    if os.access(path, os.X_OK):
        return path
    return shutil.which(Path(path).name)


def load_dashboard_builder() -> ModuleType:
    """dashboards/build.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "canwatch_dashboards_build", DASHBOARDS / "build.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_config(
    targets: list[str], rule_files: list[Path], scrape_interval: str, job: str = "canwatch"
) -> str:
    # JSON is valid YAML, so no YAML library is needed to write the config.
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    return json.dumps(config, indent=2)


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """A throw-away Prometheus scraping ``targets`` (job "canwatch"), on 127.0.0.1."""

    def __init__(
        self,
        targets: list[str],
        rule_files: list[Path] | None = None,
        scrape_interval: str = "1s",
        binary: str = PROMETHEUS,
        ready_timeout_s: float = 30.0,
    ) -> None:
        self.targets, self.rule_files = targets, list(rule_files or [])
        self.scrape_interval, self.binary = scrape_interval, binary
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="canwatch-prom-")
        tmp = Path(self._tmp.name)
        config = tmp / "prometheus.yml"
        config.write_text(render_config(self.targets, self.rule_files, self.scrape_interval))
        self.port = free_port()
        self._log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.proc.returncode}: {self.log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {self.ready_timeout_s} s: {self.log()}")

    def stop(self) -> None:
        """Stop our own process (by its PID) and remove the temp directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log(self) -> str:
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "prometheus.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    # -- HTTP API ------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (vector/matrix) or a one-element scalar."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def targets_health(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns data (a condition, not a fixed sleep).

        Prometheus 2.x hands static targets to the scrapers only after its
        discovery manager's first 5 s tick, so the first sample takes ~6 s.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"no data for {expr!r} after {timeout_s} s; targets: {self.targets_health()}"
                )
            time.sleep(0.2)
