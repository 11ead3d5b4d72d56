"""``canwatch detect`` of this checkout as a measured subprocess.

Its CPU (user+sys, all threads) is sampled from ``/proc/<pid>/stat`` every
TRACE_S while the bench waits on it, and its /metrics read every SCRAPE_S:
a scrape sees what it waits for up to SCRAPE_S late, and an idle detector
still polls Kafka (~0.1 CPU-s a second), so the trace lets start-up and work
be cut where they end, not where a scrape noticed.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.common import ROOT
from bench.common.procs import cpu_seconds, stop
from bench.common.rig import DLQ, INCIDENTS
from detector.transport.broker import free_port

CANWATCH = Path(sys.executable).parent / "canwatch"
if not CANWATCH.exists():
    CANWATCH = ROOT / ".venv" / "bin" / "canwatch"
#: How often the bench reads detect's /metrics to see the backlog drained. Each read
#: costs detect ~14 ms of CPU (~200 kB of exposition), counted in its figure:
#: 1 s keeps that near what a 1 s Prometheus scrape would cost.
SCRAPE_S = 1.0
TRACE_S = 0.02  # CPU samples of canwatch detect (from /proc: costs it nothing)
ASSIGNED = b"assigned partitions"  # the log line that ends detect's start-up
BUSY_CORES = 0.5  # CPU rate above which detect counts as busy (idle polling: ~0.1)

Samples = dict[str, dict[tuple, float]]  # metric -> {sorted label pairs: value}


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(
        v for k, v in samples.get(name, {}).items() if labels.items() <= dict(k).items()
    )


class DetectProc:
    """``canwatch detect`` on one topic with a fresh group; stopped with SIGTERM by PID.

    Incidents go to ``rig.INCIDENTS``, dead letters to ``rig.DLQ``; ``extra_toml`` is
    appended to its config file; ``profile`` runs it under cProfile; ``root``: the
    checkout whose code runs (default this one)."""

    def __init__(
        self,
        work: Path,
        bootstrap: str,
        topic: str,
        model_dir: Path,
        mpr: int | None = None,
        profile: Path | None = None,
        extra_toml: str = "",
        root: Path = ROOT,
    ) -> None:
        tag = f"{topic}-{time.time_ns()}"
        toml = work / f"detect-{tag}.toml"
        lines = ["[kafka]", f'telemetry_topic = "{topic}"', f'incident_topic = "{INCIDENTS}"',
                 f'dlq_topic = "{DLQ}"'] + ([f"max_poll_records = {mpr}"] if mpr else [])  # fmt: skip
        toml.write_text("\n".join(lines) + "\n" + extra_toml, encoding="utf-8")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.group = f"bench-detect-{tag}"
        cmd = [str(CANWATCH), "detect", "--config", str(toml), "--bootstrap", bootstrap,
               "--models", str(model_dir), "--group", self.group,
               "--metrics", f"127.0.0.1:{port}", "--detector-id", "bench"]  # fmt: skip
        if profile is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd]
        self.cmd = cmd
        self.log = work / f"detect-{tag}.log"
        # this checkout's detector/ (or ``root``'s, for an A/B against another commit),
        # whatever the environment's install points at
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANWATCH_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.t0 = time.perf_counter()
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env
            )
        self.samples: Samples = {}
        self.trace: list[tuple[float, float]] = []  # (monotonic s, process CPU s)
        self.assigned_cpu: float | None = None  # CPU when the log said "assigned partitions"
        self.assigned_at: int | None = None  # ... and that sample's index in ``trace``
        self._log_seen = 0

    def poll_metrics(self) -> Samples:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"canwatch detect exited with {self.proc.returncode}: {tail}")
        try:
            self.samples = scrape(self.url)
        except OSError:
            self.samples = {}  # not listening yet
        return self.samples

    def wait(self, done: Callable[[Samples], bool], timeout_s: float, every: float = SCRAPE_S) -> Samples:
        """Scrape /metrics every ``every`` s until ``done(samples)``; meanwhile sample the
        process CPU every TRACE_S and note it when the start-up log line appears."""
        deadline = time.monotonic() + timeout_s
        next_scrape = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            before = self.trace[-1][1] if self.trace else 0.0
            with contextlib.suppress(OSError):  # exited: poll_metrics says so
                self.trace.append((now, cpu_seconds(self.proc.pid)))
            if self.assigned_cpu is None and self._assigned():
                self.assigned_cpu = before  # the last sample before the line was written
                self.assigned_at = max(len(self.trace) - 2, 0)
            if now >= next_scrape:
                next_scrape = now + every
                s = self.poll_metrics()
                if s and done(s):
                    return s
            time.sleep(TRACE_S)
        raise RuntimeError(f"canwatch detect: timed out after {timeout_s:g} s ({self.log})")

    def _assigned(self) -> bool:
        with open(self.log, "rb") as f:
            f.seek(self._log_seen)
            new = f.read()
        found = ASSIGNED in new
        self._log_seen += max(len(new) - len(ASSIGNED), 0)  # a line may be half written
        return found

    def busy_cpu(self) -> float:
        """Process CPU when it last worked at BUSY_CORES or more (over ~0.1 s): the end
        of the backlog, without the idle polling until a scrape noticed it. Looked for
        after start-up only (its busy moments are not the backlog's)."""
        t = [x for x, _ in self.trace]
        cpu = [c for _, c in self.trace]
        first = self.assigned_at or 0
        for i in range(len(t) - 1, first, -1):
            j = max(bisect.bisect_right(t, t[i] - 0.1) - 1, 0)
            if t[i] > t[j] and (cpu[i] - cpu[j]) / (t[i] - t[j]) >= BUSY_CORES:
                return cpu[i]
        return cpu[-1] if cpu else 0.0

    def stop(self) -> None:
        stop(self.proc)
