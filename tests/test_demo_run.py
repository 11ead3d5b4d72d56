"""``canwatch demo`` run the way a user runs it: a process, first run (no cached
models, so it trains them), a fleet smaller than the default so that the suite
stays short, the scorecard checked from its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CANWATCH = Path(sys.executable).parent / "canwatch"


def test_demo_catches_every_family_with_no_false_incident_and_one_campaign(tmp_path):
    report = tmp_path / "card.json"
    models = tmp_path / "models"
    argv = [
        str(CANWATCH), "demo", "--models", str(models), "--vehicles", "12",
        "--duration", "32", "--metrics", "127.0.0.1:0", "--report", str(report),
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trained cusw" in done.stdout  # a first run: it trained, nothing was cached
    card = json.loads(report.read_text())
    families = {a["kind"] for a in card["attacks"] if not a["campaign"]}
    assert families == {"dos", "fuzzing", "spoofing", "masquerade", "suspension", "replay"}
    assert all(a["detected"] and a["time_to_detect_s"] <= 2.0 for a in card["attacks"]), card
    assert card["false_incidents"] == 0, card["false_incident_ids"]
    assert card["campaign"]["found"] and card["campaign"]["unrelated"] == 0
    (camp,) = card["campaign"]["campaigns"]
    assert camp["vehicles"] == card["campaign"]["expected_vehicles"]
    assert "detected 6/6 attack families, 0 false incidents" in done.stdout
    # the embedded broker's data directory went with it
    assert not list(tmp_path.glob("canwatch-tansu-*"))
