"""Model files: skops + JSON manifest, verified on load, never pickle."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import detector.model.store as model_store
from detector.core.config import DetectionConfig
from detector.core.errors import ModelError
from detector.features.columns import FEATURE_NAMES
from detector.features.windowing import WindowState
from detector.model.platform import MODEL_FORMAT, PlatformModel
from detector.model.store import list_manifests, load_latest, load_model, next_version, save_model
from detector.model.training import train_platform
from replay.simulator import simulate_vehicle


@pytest.fixture(scope="module")
def trained() -> tuple[PlatformModel, dict]:
    recordings = [simulate_vehicle("cusw", 20.0, 1.7e9 + 100 * i, seed=40 + i) for i in range(2)]
    return train_platform("cusw", recordings, DetectionConfig())


@pytest.fixture(scope="module")
def probe(trained) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of a fresh vehicle to score with both models."""
    model, _ = trained
    frames = simulate_vehicle("cusw", 8.0, seed=77)
    rows = WindowState(1.0).push(frames, np.zeros(len(frames), np.int64), model.baseline)
    assert len(rows) > 50
    return rows.X, rows.can_id


@pytest.fixture
def saved(tmp_path: Path, trained) -> Path:
    model, summary = trained
    return save_model(model, tmp_path / "models", ["jeep", "fiat"], summary)


def test_round_trip_scores_identically(saved: Path, trained, probe) -> None:
    model, summary = trained
    X, can_id = probe
    loaded = load_model(saved)
    np.testing.assert_array_equal(loaded.scores(X, can_id), model.scores(X, can_id))
    assert loaded.threshold == model.threshold
    assert loaded.platform == "cusw" and loaded.version == 1
    for name in ("ids", "period", "byte_min", "byte_max", "payload_hashes", "expected"):
        np.testing.assert_array_equal(
            getattr(loaded.baseline, name), getattr(model.baseline, name), err_msg=name
        )
    assert loaded.baseline.window_s == model.baseline.window_s
    manifest = json.loads(saved.read_text())
    assert manifest["platform"] == "cusw" and manifest["brands"] == ["jeep", "fiat"]
    assert manifest["training"] == summary
    assert manifest["model_file"] == "cusw-v1.skops"
    assert len(manifest["sha256"]) == 64


def test_versions_increment_and_latest_wins(tmp_path: Path, trained) -> None:
    model, summary = trained
    d = tmp_path / "models"
    assert next_version(d, "cusw") == 1
    names = [save_model(model, d, ["jeep"], summary).name for _ in range(3)]
    assert names == ["cusw-v1.json", "cusw-v2.json", "cusw-v3.json"]
    assert next_version(d, "cusw") == 4
    assert [m.version for m in list_manifests(d)["cusw"]] == [1, 2, 3]
    assert load_latest(d)["cusw"].version == 3
    # no temp files left behind
    # (the writers' lock file and the versions given stay: they hold no model)
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == [
        ".canwatch-models.lock", ".canwatch-versions.json"
    ]


def test_flipped_byte_fails_the_sha256_check(saved: Path) -> None:
    skops = saved.with_suffix(".skops")
    blob = bytearray(skops.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    skops.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_model(saved)


def _point_manifest_at(manifest: Path, model_file: str, source: Path) -> None:
    """Rewrite the manifest to name ``model_file``, holding a valid copy of ``source``."""
    data = json.loads(manifest.read_text())
    target = (manifest.parent / model_file).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    data["model_file"] = model_file
    data["sha256"] = model_store.sha256_of(target)  # a matching digest: only the path is wrong
    manifest.write_text(json.dumps(data))


def test_model_file_outside_the_directory_is_refused(saved: Path) -> None:
    skops = saved.with_suffix(".skops")
    _point_manifest_at(saved, "../x.skops", skops)
    with pytest.raises(ModelError, match="outside the model directory"):
        load_model(saved)


def test_absolute_model_file_is_refused(saved: Path, tmp_path: Path) -> None:
    skops = saved.with_suffix(".skops")
    elsewhere = tmp_path / "elsewhere" / "x.skops"
    _point_manifest_at(saved, str(elsewhere), skops)
    with pytest.raises(ModelError, match="outside the model directory"):
        load_model(saved)


def test_manifest_problems_are_model_errors(saved: Path) -> None:
    data = json.loads(saved.read_text())
    saved.write_text(json.dumps({k: v for k, v in data.items() if k != "sha256"}))
    with pytest.raises(ModelError, match="sha256"):
        load_model(saved)
    saved.write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        load_model(saved)
    data["feature_names"] = data["feature_names"][:-1]
    saved.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="another format .* retrain"):
        load_model(saved)
    # a model written before evidence was calibrated on held-out drives has no format
    data = json.loads(json.dumps(data))
    data["feature_names"] = list(FEATURE_NAMES)
    del data["format"]
    saved.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=rf"format 1, .*reads format {MODEL_FORMAT}"):
        load_model(saved)
    # a format-2 model has no relative bounds on its signal couplings
    data["format"] = 2
    saved.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=rf"format 2, .*reads format {MODEL_FORMAT}"):
        load_model(saved)


def test_missing_model_file_is_a_model_error(saved: Path) -> None:
    saved.with_suffix(".skops").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(saved)


def test_no_pickle_anywhere_in_the_store() -> None:
    source = inspect.getsource(model_store)
    assert "pickle" not in source
    assert "joblib" not in source


def test_threads_loading_models_at_once_all_get_them(saved: Path) -> None:
    """Two detectors in one process load their models from two threads; CPython 3.11's
    ast (which skops parses with) is not safe for that (gh-106905), so loads take turns."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: load_model(saved), range(12)))
    assert {m.version for m in loaded} == {1}



def test_a_model_written_before_a_baseline_field_existed_is_a_model_error(saved: Path) -> None:
    """Same format number, one baseline array short (a model cached by an older build):
    refused with a hint to retrain, not a KeyError from deep inside the load."""
    import skops.io as sio

    from detector.model.store import TRUSTED_TYPES, sha256_of

    skops = saved.with_suffix(".skops")
    payload = sio.load(skops, trusted=TRUSTED_TYPES)
    del payload["baseline"]["couple_rel"]
    sio.dump(payload, skops)
    manifest = json.loads(saved.read_text())
    manifest["sha256"] = sha256_of(skops)
    saved.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="not a model this canwatch can serve.*retrain"):
        load_model(saved)
