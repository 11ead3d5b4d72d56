"""The model lifecycle: deploy in shadow, promote (refused on a bad record), roll back.

The lifecycle file and the registry are tested on a model directory; the CLI as
a user types it; the service through the embedded broker: a shadow that alerts
more than the serving model shows in the metrics and is refused on promote, and
promote and rollback take effect in a running detector without a restart, with
every offset read once and committed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from detector.cli import main
from detector.core.config import DetectionConfig
from detector.core.errors import ModelError
from detector.model import lifecycle
from detector.model.registry import ModelRegistry, failure_reason
from detector.model.shadow_record import ShadowTally, promotion_verdict, read_tallies, write_tally
from detector.model.store import list_manifests, load_model, save_model
from detector.model.training import train_platform
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport.kafka_io import make_producer
from replay.publisher import publish
from replay.simulator import simulate_vehicle
from tests.test_detect_service import (
    FLEET,
    audited_polls,
    fleet_streams,
    running,
    sample,
    service_config,
    topic_ends,
    wait_for,
)


def versions(d: Path, n: int, cusw_models: Path) -> Path:
    """A model directory holding ``n`` versions of the session's cusw model."""
    live = d / "models"
    shutil.copytree(cusw_models, live)
    model = load_model(list_manifests(live)["cusw"][-1].path)
    for k in range(2, n + 1):
        save_model(model, live, FLEET.brands_of("cusw"), {"note": f"v{k}"})
    return live


def loud_model(out: Path) -> Path:
    """A cusw model fitted on one vehicle for 40 s and not calibrated across drives (no
    per-id tolerance, unit scales): a candidate whose training went wrong. It alerts on
    most benign windows of new vehicles (a shadow that would flood the analysts)."""
    model, summary = train_platform(
        "cusw", [simulate_vehicle("cusw", 40, 1.7e9, seed=7)], DetectionConfig()
    )
    loud = dataclasses.replace(
        model,
        tolerance=np.zeros_like(model.tolerance),
        evidence_scale=np.ones_like(model.evidence_scale),
    )
    return save_model(loud, out, FLEET.brands_of("cusw"), summary)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the lifecycle file -------------------------------------------------------------------


def test_without_a_file_the_newest_serves_and_a_promote_pins_it(tmp_path, cusw_models):
    d = versions(tmp_path, 3, cusw_models)
    state = lifecycle.read_lifecycle(d, "cusw")
    assert (state.serving, state.shadow, state.pinned) == (3, None, False)
    state = lifecycle.promote(d, "cusw", 2)
    assert (state.serving, state.previous, state.pinned) == (2, (3,), True)
    save_model(load_model(d / "cusw-v1.json"), d, ["jeep"], {})  # v4 written: pinned, not served
    assert lifecycle.read_lifecycle(d, "cusw").serving == 2
    state = lifecycle.set_shadow(d, "cusw", 4)
    assert state.shadow == 4
    state = lifecycle.promote(d, "cusw", 4)
    assert (state.serving, state.shadow, state.previous) == (4, None, (3, 2))
    state = lifecycle.rollback(d, "cusw")
    assert (state.serving, state.previous) == (2, (3,))
    actions = [h["action"] for h in lifecycle.read_lifecycle(d, "cusw").history]
    assert actions == ["promote", "shadow", "promote", "rollback"]


def test_lifecycle_errors_name_what_is_wrong(tmp_path, cusw_models):
    d = versions(tmp_path, 1, cusw_models)
    with pytest.raises(ModelError, match=r"no version v7 .* \(it has v1\)"):
        lifecycle.promote(d, "cusw", 7)
    with pytest.raises(ModelError, match="v1 is serving already"):
        lifecycle.set_shadow(d, "cusw", 1)
    with pytest.raises(ModelError, match="nothing to roll back to"):
        lifecycle.rollback(d, "cusw")
    lifecycle.lifecycle_path(d, "cusw").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable lifecycle file"):
        lifecycle.read_lifecycle(d, "cusw")


def test_the_registry_follows_promote_rollback_and_shadow(tmp_path, cusw_models):
    d = versions(tmp_path, 3, cusw_models)
    shadows: list = []
    reg = ModelRegistry(d, on_shadow=lambda p, m: shadows.append(m and m.version))
    reg.refresh()
    assert reg.models["cusw"].version == 3 and not reg.shadows
    lifecycle.promote(d, "cusw", 1)  # an older version is loaded too
    reg.refresh()
    assert reg.models["cusw"].version == 1
    lifecycle.set_shadow(d, "cusw", 2)
    reg.refresh()
    assert reg.shadows["cusw"].version == 2 and shadows == [2]
    lifecycle.rollback(d, "cusw")
    reg.refresh()
    assert reg.models["cusw"].version == 3
    lifecycle.drop_shadow(d, "cusw")
    reg.refresh()
    assert not reg.shadows and shadows == [2, None]
    lifecycle.lifecycle_path(d, "cusw").write_text("[")  # broken: what serves keeps serving
    refused: list = []
    reg.on_refused = lambda p, e: refused.append(str(e))
    reg.refresh()
    reg.refresh()
    assert reg.models["cusw"].version == 3 and len(refused) == 1


def test_whatever_a_file_holds_it_is_refused_and_what_serves_keeps_serving(tmp_path, cusw_models):
    """Each of these raised out of refresh() (UnicodeDecodeError, TypeError, AttributeError)
    and so out of every detector's loop sharing the directory, at its next reload."""
    d = versions(tmp_path, 1, cusw_models)
    good = json.loads((d / "cusw-v1.json").read_text())
    bad = [
        (d / "cusw-v1.skops").read_bytes(),  # a model file copied under a manifest's name
        b"null",
        b"[1, 2]",
        json.dumps(good | {"sha256": None, "version": 5}).encode(),
        json.dumps(good | {"feature_names": None, "version": 6}).encode(),
        json.dumps(good | {"version": True}).encode(),
    ]
    for k, blob in enumerate(bad, start=2):
        (d / f"cusw-v{k}.json").write_bytes(blob)
    refused: list = []
    reg = ModelRegistry(d, on_refused=lambda p, e: refused.append(failure_reason(e)))
    reg.refresh()
    assert reg.models["cusw"].version == 1
    assert refused == ["bad_manifest"] * len(bad)
    for blob in (b"[]", b"\xff\xfe{", b'{"serving": 1, "previous": "12"}'):
        lifecycle.lifecycle_path(d, "cusw").write_bytes(blob)
        ModelRegistry(d).refresh()  # no exception
        with pytest.raises(ModelError, match="lifecycle file"):
            lifecycle.read_lifecycle(d, "cusw")


def test_a_manifest_renamed_by_hand_is_refused_and_a_symlinked_model_file_loads(
    tmp_path, cusw_models
):
    d = versions(tmp_path, 1, cusw_models)
    shutil.copy(d / "cusw-v1.json", d / "cusw-v3.json")  # says v1
    shutil.copy(d / "cusw-v1.json", d / "aee2010-v1.json")  # says cusw
    for name in ("cusw-v3.json", "aee2010-v1.json"):
        with pytest.raises(ModelError, match="under another file name"):
            load_model(d / name)
    store = tmp_path / "artifacts"
    store.mkdir()
    shutil.move(d / "cusw-v1.skops", store / "cusw-v1.skops")
    (d / "cusw-v1.skops").symlink_to(store / "cusw-v1.skops")
    assert load_model(d / "cusw-v1.json").version == 1  # was "points outside the directory"


def test_a_version_number_is_never_given_twice(tmp_path, cusw_models):
    """Deleting the newest version and training again gave a new model the old number:
    detectors kept the old one in memory and a promote judged it on the old one's record."""
    d = versions(tmp_path, 2, cusw_models)
    model = load_model(d / "cusw-v1.json")
    for p in d.glob("cusw-v2.*"):
        p.unlink()
    assert save_model(model, d, ["jeep"], {}).name == "cusw-v3.json"
    lifecycle.promote(d, "cusw", 1)  # v3 served: it is the lifecycle's previous
    for p in [*d.glob("cusw-v3.*"), d / ".canwatch-versions.json"]:
        p.unlink()  # its number stays in the lifecycle file
    assert save_model(model, d, ["jeep"], {}).name == "cusw-v4.json"


def test_models_saved_at_once_into_one_directory_take_distinct_versions(tmp_path, cusw_models):
    d = versions(tmp_path, 1, cusw_models)
    model = load_model(d / "cusw-v1.json")
    with ThreadPoolExecutor(4) as pool:
        names = list(pool.map(lambda _: save_model(model, d, ["jeep"], {}).name, range(4)))
    assert sorted(names) == [f"cusw-v{k}.json" for k in range(2, 6)]
    assert [m.version for m in list_manifests(d)["cusw"]] == [1, 2, 3, 4, 5]
    assert not list(d.glob("*.tmp"))


def corrupt(d: Path, version: int) -> None:
    skops = d / f"cusw-v{version}.skops"
    blob = bytearray(skops.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    skops.write_bytes(bytes(blob))


def test_a_version_that_cannot_serve_is_not_promoted_and_a_starting_detector_falls_back(
    tmp_path, cusw_models, capsys
):
    d = versions(tmp_path, 3, cusw_models)
    lifecycle.promote(d, "cusw", 2)  # serving 2, previous (3,)
    corrupt(d, 3)
    code, out, err = cli(capsys, "models", "rollback", "cusw", "--models", str(d))
    assert code == 2 and "cusw v3 cannot serve" in err and "sha256" in err, (out, err)
    with pytest.raises(ModelError, match="v3 cannot serve"):
        lifecycle.set_shadow(d, "cusw", 3)
    assert lifecycle.read_lifecycle(d, "cusw").serving == 2  # nothing was written

    # a lifecycle pinning a version that no longer loads (or whose files are gone): a
    # detector starting then served nothing for the platform, and said nothing
    lifecycle.promote(d, "cusw", 1)  # serving 1, previous (3, 2)
    corrupt(d, 1)
    refused: list = []
    reg = ModelRegistry(d, on_refused=lambda p, e: refused.append(failure_reason(e)))
    reg.refresh()
    assert reg.models["cusw"].version == 2 and refused == ["checksum"]
    for p in d.glob("cusw-v1.*"):
        p.unlink()
    refused.clear()
    reg = ModelRegistry(d, on_refused=lambda p, e: refused.append(failure_reason(e)))
    reg.refresh()
    assert reg.models["cusw"].version == 2 and refused == ["not_found"]


def test_deploying_a_model_file_instead_of_its_manifest_is_one_line(tmp_path, cusw_models, capsys):
    d = versions(tmp_path, 1, cusw_models)
    code, _, err = cli(capsys, "models", "deploy", str(d / "cusw-v1.skops"), "--shadow",
                       "--models", str(tmp_path / "live"))  # fmt: skip
    assert code == 2 and "give the .json manifest beside it" in err and "Traceback" not in err
    # v1 pinned: the next version does not serve by being written
    lifecycle.write_lifecycle(d, lifecycle.read_lifecycle(d, "cusw"))
    save_model(load_model(d / "cusw-v1.json"), d, ["jeep"], {})
    lifecycle.set_shadow(d, "cusw", 2)
    code, out, _ = cli(capsys, "models", "unshadow", "cusw", "--models", str(d))
    assert code == 0 and "v2 out of shadow" in out
    assert lifecycle.read_lifecycle(d, "cusw").shadow is None


def test_promotion_verdict_compares_would_be_incidents_over_the_same_windows(tmp_path):
    t = ShadowTally("cusw", 4, 3, 1.0, windows=7200, serving_incidents=2, shadow_incidents=9)
    write_tally(tmp_path, t, "host-1")
    write_tally(tmp_path, dataclasses.replace(t, windows=3600, shadow_incidents=0), "host-2")
    total = read_tallies(tmp_path, "cusw", 4, 3)
    assert (total.windows, total.shadow_incidents, total.serving_incidents) == (10800, 9, 4)
    assert total.vehicle_hours == 3.0
    why = promotion_verdict(total, 1.5, 4)
    assert "would have opened 9 incidents where the serving model opened 4" in why
    assert promotion_verdict(total, 2.0, 4) is None  # (9 + 1) / (4 + 1) = 2.0
    assert "no shadow period" in promotion_verdict(read_tallies(tmp_path, "cusw", 5, 3), 2.0, 5)


# -- the CLI ------------------------------------------------------------------------------


def test_models_cli_deploys_lists_promotes_and_rolls_back(tmp_path, cusw_models, capsys):
    d = versions(tmp_path, 1, cusw_models)
    staging = tmp_path / "staging"
    loud_model(staging)
    code, out, _ = cli(capsys, "models", "deploy", str(staging), "--shadow", "--models", str(d))
    assert code == 0 and "deployed cusw-v1.json as v2 in shadow; v1 serves, v2 in shadow" in out
    code, out, _ = cli(capsys, "models", "list", "--models", str(d))
    assert code == 0
    assert "v1    serving" in out and "v2    shadow" in out and "no record yet" in out
    code, _, err = cli(capsys, "models", "promote", "cusw", "v2", "--models", str(d))
    assert code == 2 and err.count("\n") == 1
    assert "refusing to promote cusw v2: v2 has no shadow period" in err
    code, out, _ = cli(capsys, "models", "promote", "cusw", "2", "--force", "--models", str(d))
    assert code == 0 and "promoted v2 (forced); v2 serves" in out
    code, out, _ = cli(capsys, "models", "list", "--json", "--models", str(d))
    listing = json.loads(out)
    assert (listing["serving"], listing["shadow"], listing["previous"]) == (2, None, [1])
    code, out, _ = cli(capsys, "models", "rollback", "cusw", "--models", str(d))
    assert code == 0 and "rolled back from v2; v1 serves" in out
    for argv, message in [
        (["rollback", "cusw"], "nothing to roll back to"),
        (["promote", "cusw", "two"], "version must be a number like 4 or v4, got 'two'"),
        (["promote", "giorgio", "1"], "no model of platform 'giorgio'"),
        (["deploy", str(tmp_path / "nowhere"), "--shadow"], "no such model directory"),
    ]:
        code, _, err = cli(capsys, "models", *argv, "--models", str(d))
        assert code == 2 and message in err and err.count("\n") == 1, err


# -- the service: shadow, promote and rollback while it runs ---------------------------------


def committed(cfg) -> dict[int, int | None]:
    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap, group_id=cfg.kafka.group_id,
        enable_auto_commit=False,
    )  # fmt: skip
    try:
        tps = [TopicPartition(cfg.kafka.telemetry_topic, p) for p in (0, 1)]
        return {tp.partition: consumer.committed(tp) for tp in tps}
    finally:
        consumer.close()


def test_shadow_promote_and_rollback_in_a_running_detector(
    broker, unique_topic, cusw_models, tmp_path, capsys
):
    live = versions(tmp_path, 1, cusw_models)
    loud = loud_model(tmp_path / "staging")
    cfg = service_config(
        broker, unique_topic, live, partitions=2, **{"models.reload_interval_s": 0.5}
    )
    metrics = DetectorMetrics(CollectorRegistry())
    audit = tmp_path / "windows.jsonl"
    detector = Detector(cfg, FLEET, metrics, "det-lifecycle", windows_out=audit)
    role = lambda name, r: sample(metrics, name, brand="jeep", role=r)  # noqa: E731
    sent = records = 0
    commits: list[dict] = []  # the group's committed offsets after each phase

    def send(seed: int) -> None:
        nonlocal sent, records
        streams, _ = fleet_streams(3, 20, {}, seed=seed)
        producer = make_producer(cfg.kafka)
        try:
            stats = publish(producer, cfg.kafka.telemetry_topic, streams, speed=None)
        finally:
            producer.close()
        sent, records = sent + stats.frames, records + stats.records
        wait_for(
            f"{sent} frames consumed",
            lambda: sample(metrics, "canwatch_frames_consumed_total", brand="jeep") >= sent,
        )
        commits.append(committed(cfg))

    with running(detector):
        wait_for("v1 serving", lambda: role("canwatch_model_version", "serving") == 1)
        assert main(["models", "deploy", str(loud), "--shadow", "--models", str(live)]) == 0
        wait_for("v2 in shadow", lambda: role("canwatch_model_version", "shadow") == 2)
        send(700)
        wait_for("the shadow's record", lambda: read_tallies(live, "cusw", 2, 1) is not None)
        serving_windows = role("canwatch_model_windows_total", "serving")
        shadow_windows = role("canwatch_model_windows_total", "shadow")
        assert serving_windows > 0 and shadow_windows == serving_windows
        loud_more = role("canwatch_model_anomalous_windows_total", "shadow")
        assert loud_more > 3 * role("canwatch_model_anomalous_windows_total", "serving")
        assert role("canwatch_model_incidents_total", "shadow") > role(
            "canwatch_model_incidents_total", "serving"
        )
        assert 0 < sample(metrics, "canwatch_shadow_agreement_ratio", brand="jeep") < 1
        capsys.readouterr()
        wait_for(
            "a record showing the shadow's incidents",
            lambda: (read_tallies(live, "cusw", 2, 1).shadow_incidents or 0) > 0,
        )
        code, _, err = cli(capsys, "models", "promote", "cusw", "2", "--models", str(live))
        assert code == 2 and "refusing to promote cusw v2: v2 would have opened" in err
        assert detector.scorer.models["cusw"].version == 1  # the refused shadow never served
        code, _, _ = cli(capsys, "models", "promote", "cusw", "2", "--force", "--models", str(live))
        assert code == 0
        wait_for("v2 serving", lambda: role("canwatch_model_version", "serving") == 2)
        assert (
            metrics.registry.get_sample_value(
                "canwatch_model_version", {"brand": "jeep", "role": "shadow"}
            )
            is None
        )  # promoted: no shadow any more
        send(710)
        assert main(["models", "rollback", "cusw", "--models", str(live)]) == 0
        wait_for("v1 serving again", lambda: role("canwatch_model_version", "serving") == 1)
        send(720)
        ends = topic_ends(broker, cfg.kafka.telemetry_topic, records)
    assert detector.scorer.models["cusw"].version == 1
    assert sample(metrics, "canwatch_frames_consumed_total", brand="jeep") == sent
    commits.append(committed(cfg))
    for p, end in ends.items():  # commits only move forward, never past what was read
        moves = [c[p] or 0 for c in commits]
        assert moves == sorted(moves) and moves[-1] <= end, (p, moves, end)
    read: dict[int, list[int]] = {}
    for poll in audited_polls(audit):
        for p, (lo, hi) in poll["offsets"].items():
            read.setdefault(int(p), []).extend(range(lo, hi + 1))
    for p, end in ends.items():  # each offset in exactly one scored poll: none lost, none twice
        assert sorted(read.get(p, [])) == list(range(end)), p
