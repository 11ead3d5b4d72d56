"""The demo says at once when one of its parts stops on an error, instead of waiting
out its deadline for incidents that can no longer come."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry
from test_detect_service import service_config

from detector.core.brands import load_fleet
from detector.core.errors import CanwatchError
from detector.demo import DemoError, Parts, follow_incidents
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics


def test_a_detector_that_stops_on_an_error_ends_the_demo_at_once(
    broker, unique_topic, cusw_models, tmp_path
):
    cfg = service_config(broker, unique_topic, cusw_models, 1)
    metrics = DetectorMetrics(CollectorRegistry())
    # its audit trail cannot be opened: the detector's thread ends on FileNotFoundError
    audit = tmp_path / "no such directory" / "audit.jsonl"
    detector = Detector(cfg, load_fleet(), metrics, "demo", windows_out=audit)
    stop = threading.Event()
    parts = Parts(stop)
    parts.start("detector", detector.run, stop, lasting=True)
    published = threading.Thread(target=lambda: None)
    published.start()
    published.join()
    said: list[str] = []
    t0 = time.monotonic()
    try:
        with pytest.raises(DemoError) as err:  # 1,000 frames it will never score
            follow_incidents(cfg, metrics, 1000, published, said.append, None, parts.check)
    finally:
        stop.set()
    assert time.monotonic() - t0 < 60, "not the 300 s deadline"
    assert "the demo's detector stopped: FileNotFoundError" in str(err.value)
    assert "audit.jsonl" in str(err.value)
    assert isinstance(err.value, CanwatchError), "the CLI prints it as one line, exit 2"


def test_parts_name_the_first_that_failed_and_let_healthy_ones_be():
    stop = threading.Event()
    parts = Parts(stop)
    done = parts.start("publisher", lambda: None)
    done.join()
    parts.check()  # a part that ends when its work is done is no error

    def fail() -> None:
        raise ValueError("bad frame")

    parts.start("campaign correlator", fail, lasting=True).join()
    with pytest.raises(DemoError, match="campaign correlator stopped: ValueError: bad frame"):
        parts.check()


def test_a_part_that_ends_quietly_before_the_demo_does_is_named():
    """A detector its watchdog stopped ends without an error, by the shared stop event
    it was given: the demo must not wait for incidents either."""
    stop, own_stop = threading.Event(), threading.Event()
    parts = Parts(stop)
    own_stop.set()
    parts.start("detector", own_stop.wait, lasting=True).join()
    with pytest.raises(DemoError, match="the demo's detector stopped before the demo ended"):
        parts.check()
    stop.set()
    parts.check()  # once the demo is ending, parts that end are expected to


def test_options_the_demo_cannot_run_with_are_one_line_before_anything_starts(
    capsys, tmp_path
):
    """They were tracebacks, attacks cut short ("detected 4/6"), or errors after minutes of
    training (a metrics port in use)."""
    import socket

    from detector.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        cases = [
            (["--duration", "0"], "--duration must be in [32, 3600] s"),
            (["--duration", "nan"], "--duration must be in"),
            (["--duration", "13"], "--duration must be in"),
            (["--speed", "0"], "--speed must be in [0.1, 1000]"),
            (["--metrics", "127.0.0.1:99999"], "port in 0..65535"),
            (["--metrics", taken], f"--metrics {taken}: Address already in use"),
        ]
        models = tmp_path / "models"
        for argv, message in cases:
            assert main(["demo", *argv, "--models", str(models)]) == 2, argv
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err and err.count("\n") == 1, err
            assert not models.exists(), "refused before any model was trained"


def test_demo_models_are_cached_in_the_users_cache_not_the_working_directory(
    monkeypatch, tmp_path
):
    from detector.cli import build_parser
    from detector.demo import default_model_cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_model_cache() == tmp_path / "home" / ".cache" / "canwatch"
    # a relative XDG_CACHE_HOME is invalid by the XDG spec: ignored, not joined to the cwd
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    assert default_model_cache() == tmp_path / "home" / ".cache" / "canwatch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model_cache() == tmp_path / "xdg" / "canwatch"
    args = build_parser().parse_args(["demo"])
    assert args.models == str(tmp_path / "xdg" / "canwatch")
