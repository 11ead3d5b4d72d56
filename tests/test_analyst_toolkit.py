"""The analyst's toolkit: ``read_capture`` and ``score_capture`` from the ``detector``
package, ``canwatch evaluate --plot``, and pandas kept off the service's path."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from detector.core.schema import EXTENDED_FLAG, FLAG_RTR, ID_MASK_EXTENDED, LABEL_CODE, LABELS
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )


#: Records who imports pandas or matplotlib first: the innermost frame outside importlib.
SPY = """
import sys, traceback
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in ("pandas", "matplotlib") and name not in seen:
            stack = [f.filename for f in traceback.extract_stack()[:-1]]
            seen[name] = [f for f in stack if not f.startswith("<frozen")][-1]
sys.meta_path.insert(0, Spy())
"""
SERVICE = "import detector, detector.service.detector, detector.cli.detect\n"


def test_pandas_stays_off_the_service_path_and_the_toolkit_loads_it() -> None:
    """canwatch's service modules import neither pandas nor matplotlib. scikit-learn
    (loaded for the models) imports pandas itself when it is installed
    (sklearn/utils/fixes.py); that is the only way it gets in. ``from detector import
    read_capture`` then loads the toolkit, and pandas with it, on first use."""
    out = _python(
        SPY
        + SERVICE
        + "assert 'matplotlib' not in seen, seen\n"
        + "assert set(seen) <= {'pandas'}, seen\n"
        + "for name, where in seen.items():\n"
        + "    assert '/sklearn/' in where, (name, where)\n"
        + "assert 'detector.analysis' not in sys.modules\n"
        + "from detector import read_capture, score_capture\n"
        + "assert 'pandas' in sys.modules and 'detector.analysis' in sys.modules\n"
        + "assert callable(read_capture) and callable(score_capture)\n"
        + "assert {'read_capture', 'score_capture'} <= set(dir(detector))\n"
        + "try:\n"
        + "    detector.no_such_name\n"
        + "except AttributeError as exc:\n"
        + "    assert 'no_such_name' in str(exc)\n"
        + "else:\n"
        + "    raise SystemExit('no AttributeError')\n"
    )
    assert out.returncode == 0, out.stderr


def test_the_service_runs_without_pandas_or_matplotlib() -> None:
    """With both made unimportable, the service's modules load and score frames."""
    out = _python(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('pandas', 'matplotlib'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        + SERVICE
        + "from detector.cli import build_parser\n"
        "build_parser(['detect']).parse_args(['detect', '--models', 'm'])\n"
        "from detector.model.training import train_platform\n"
        "from detector.model.pipeline import Scorer\n"
        "from detector.core.brands import load_fleet\n"
        "from detector.core.config import DetectionConfig\n"
        "from replay.simulator import simulate_drives\n"
        "drives, _ = simulate_drives('cusw', 1, 2, 20.0, 1.7e9, 1)\n"
        "model, _ = train_platform('cusw', drives, DetectionConfig())\n"
        "scored = Scorer({'cusw': model}, load_fleet(), 1.0).push([('v', 'jeep', drives[0])])\n"
        "assert scored and len(scored[0].scores) > 0\n"
        "assert 'pandas' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------- read_capture


@pytest.fixture(scope="module")
def labelled_frames() -> np.ndarray:
    """Three seconds of a simulated Jeep with a spoofing attack (labelled frames) and a few
    remote and extended frames, as the readers give them back."""
    frames = simulate_vehicle("cusw", 3.0, 1.7e9, seed=11)
    frames, _ = inject(frames, AttackSpec("spoofing", 1.0, 1.5), seed=1)
    frames["can_id"][5:15] = (frames["can_id"][5:15] + 0x18FEF100) | EXTENDED_FLAG
    frames["flags"][20:25] = FLAG_RTR
    frames["data"][20:25] = 0
    return frames


#: format -> (suffix, labels kept, timestamp precision in s)
FORMATS = {
    "candump": (".log", True, 1e-6),
    "road": (".csv", True, 1e-6),
    "hcrl": (".csv", True, 1e-6),
    "asc": (".asc", False, 1e-6),
    "blf": (".blf", False, 1e-6),
    "csv": (".csv", False, 1e-6),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_read_capture_gives_one_row_per_frame(tmp_path, labelled_frames, fmt) -> None:
    from detector import read_capture

    suffix, labelled, precision = FORMATS[fmt]
    frames = labelled_frames
    if fmt == "road":  # ROAD has 11-bit ids only
        frames = frames[(frames["can_id"] & EXTENDED_FLAG) == 0]
    if fmt in ("road", "hcrl"):  # and, like HCRL, no remote frames
        frames = frames[(frames["flags"] & FLAG_RTR) == 0]
    path = tmp_path / f"capture{suffix}"
    write_frames(path, frames, fmt)

    df = read_capture(path)
    assert list(df.columns[:5]) == ["timestamp", "can_id", "extended", "dlc", "data"]
    assert len(df) == len(frames)
    np.testing.assert_allclose(df["timestamp"], frames["ts"], rtol=0, atol=precision)
    np.testing.assert_array_equal(df["can_id"], frames["can_id"] & ID_MASK_EXTENDED)
    np.testing.assert_array_equal(df["extended"], (frames["can_id"] & EXTENDED_FLAG) != 0)
    np.testing.assert_array_equal(df["dlc"], frames["dlc"])
    remote = (frames["flags"] & FLAG_RTR) != 0
    expected = [
        b"" if r else bytes(d[:n])
        for d, n, r in zip(frames["data"], frames["dlc"], remote, strict=True)
    ]
    assert df["data"].tolist() == expected
    assert ("label" in df.columns) == labelled
    if labelled:
        spoofed = frames["label"] == LABEL_CODE["spoofing"]
        assert spoofed.sum() > 10
        kind = "unknown" if fmt == "hcrl" else "spoofing"  # HCRL says only attacked or not
        assert (df["label"][spoofed] == kind).all() and (df["label"][~spoofed] == "benign").all()
        assert list(df["label"].cat.categories) == list(LABELS)


def test_read_capture_forced_format_and_bad_input(tmp_path, labelled_frames) -> None:
    from detector import read_capture
    from detector.core.errors import InputError

    path = tmp_path / "capture.txt"  # a suffix that names no format
    write_frames(path, labelled_frames, "candump")
    assert len(read_capture(path, format="candump")) == len(labelled_frames)
    assert len(read_capture(path)) == len(labelled_frames)  # sniffed
    bad = tmp_path / "bad.log"
    bad.write_text("(1700000000.000000) can0 123#0011\n(1700000000.1) can0 NOT#A#FRAME\n")
    with pytest.raises(InputError, match="bad.log:2"):
        read_capture(bad)
    with pytest.raises(InputError, match="unknown format 'pdf'"):
        read_capture(path, format="pdf")


# --------------------------------------------------------------------- score_capture


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A simulated Jeep fleet (dos on vehicle 0, suspension on vehicle 1, per fleet.json),
    and a model trained on the two others."""
    out = tmp_path_factory.mktemp("fleet")
    argv = ["simulate", "--brands", "jeep", "--vehicles", "4", "--duration", "40"]
    argv += ["--seed", "3", "--out", str(out)]
    argv += ["--attack", "dos:start=10,duration=5", "--attack", "suspension:start=25,duration=6"]
    assert main(argv) == 0
    meta = json.loads((out / "fleet.json").read_text())
    kind_of = {a["vehicle"]: a["kind"] for a in meta["attacks"]}
    benign = [str(out / v["file"]) for v in meta["vehicles"] if v["vehicle"] not in kind_of]
    models = out / "models"
    assert main(["train", "--brand", "jeep", "--out", str(models), *benign]) == 0
    return out, models, kind_of


def _evaluate_windows(files: list[Path], models: Path, tmp_path: Path) -> list[dict]:
    w = tmp_path / "W.csv"
    argv = ["evaluate", "--models", str(models), "--brand", "jeep", "--windows-out", str(w)]
    assert main([*argv, *map(str, files)]) == 0
    with open(w, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_score_capture_agrees_with_evaluate(fleet, tmp_path, capsys) -> None:
    from detector import score_capture
    from detector.analysis import WINDOW_COLUMNS

    out, models, kind_of = fleet
    victims = sorted(out / f"{v}.log" for v in kind_of)
    evaluated = _evaluate_windows(victims, models, tmp_path)
    capsys.readouterr()
    for path in victims:
        kind = kind_of[path.stem]
        w = score_capture(path, models, "jeep")
        assert tuple(w.columns) == WINDOW_COLUMNS
        mine = [r for r in evaluated if r["file"] == str(path)]
        assert len(w) == len(mine) >= 35
        assert (w["vehicle"] == path.stem).all()
        # the same windows, the very same scores and labels as evaluate's --windows-out
        assert [f"{t:.3f}" for t in w["window_start"]] == [r["window_start"] for r in mine]
        assert [repr(s) for s in w["score"]] == [r["score"] for r in mine]
        assert [a if a != "benign" else "" for a in w["label"]] == [r["attack"] for r in mine]
        assert set(w["label"]) == {"benign", kind}  # suspension only from fleet.json's spans
        assert (w["alert"] == (w["score"] >= 1.0)).all()

        attacked = w[w["label"] == kind]
        assert attacked["alert"].mean() >= 0.8, attacked
        hot = w[w["alert"]]
        assert hot["top_id"].notna().all() and hot["top_feature"].notna().all()
        assert hot["evidence"].str.len().gt(0).all()
        target = next(a for a in json.loads((out / "fleet.json").read_text())["attacks"]
                      if a["vehicle"] == path.stem)  # fmt: skip
        assert (attacked[attacked["alert"]]["top_id"] == target["can_id_hex"]).mean() >= 0.8
        # what set the score: a flood's rate, a silenced id's silence (its first window, cut
        # short mid-window, may show irregular timing instead)
        usual = attacked[attacked["alert"]]["top_feature"].mode()[0]
        assert usual == {"dos": "rate", "suspension": "silence"}[kind], attacked["top_feature"]

        # every incident's windows carry its id; the windows outside incidents none
        incidents = w.attrs["incidents"]
        assert incidents and {i["status"] for i in incidents} == {"closed"}
        for inc in incidents:
            inside = (w["window_start"] >= inc["first_seen"] - 5e-4) & (
                w["window_start"] < inc["last_seen"] - 5e-4
            )
            assert (w.loc[inside, "incident_id"] == inc["incident_id"]).all()
            assert inside.sum() >= inc["windows"]
        assert w["incident_id"].notna().sum() == sum(
            ((w["window_start"] >= i["first_seen"] - 5e-4) & (w["window_start"] < i["last_seen"] - 5e-4)).sum()
            for i in incidents
        )  # fmt: skip
        assert w.attrs["model"] == {"platform": "cusw", "version": 1}


def test_score_capture_of_a_dataframe(fleet) -> None:
    """read_capture's frame, edited in pandas, scores like the file; several vehicles in one
    frame are scored each as its own vehicle."""
    import pandas as pd

    from detector import read_capture, score_capture
    from detector.model.store import latest_model

    out, models, kind_of = fleet
    dos = next(v for v, k in kind_of.items() if k == "dos")
    path = out / f"{dos}.log"
    by_file = score_capture(path, models, "jeep")
    df = read_capture(path)
    assert (df["label"] == "dos").sum() > 1000
    model = latest_model(models, "cusw")  # a loaded model does as well as its directory
    by_frame = score_capture(df, model, "jeep", vehicle=dos)
    pd.testing.assert_frame_equal(by_frame, by_file)

    other = sorted(set(kind_of) - {dos})[0]
    both = pd.concat(
        [df.assign(vehicle=dos), read_capture(out / f"{other}.log").assign(vehicle=other)]
    )
    w = score_capture(both, models, "jeep")
    assert list(dict.fromkeys(w["vehicle"])) == [dos, other]
    pd.testing.assert_frame_equal(
        w[w["vehicle"] == dos].reset_index(drop=True), by_file, check_categorical=True
    )
    with pytest.raises(ValueError, match="lacks column.*data"):
        score_capture(df.drop(columns="data"), models, "jeep")


# ------------------------------------------------------------------- evaluate --plot


def test_evaluate_plot_writes_a_png(fleet, tmp_path, capsys) -> None:
    out, models, kind_of = fleet
    victims = sorted(out / f"{v}.log" for v in kind_of)
    png = tmp_path / "scores.png"
    argv = ["evaluate", "--models", str(models), "--brand", "jeep", "--plot", str(png)]
    assert main([*argv, *map(str, victims)]) == 0
    capsys.readouterr()
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    from PIL import Image

    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        width, height = img.size
    assert width > 1000 and height > 500  # two panels of scores and the ROC beside them


def test_cross_validate_plots_each_file_as_its_fold_scored_it(fleet, tmp_path, capsys) -> None:
    out, _, kind_of = fleet
    files = sorted(out.glob("*.log"))[:3]
    svg = tmp_path / "folds.svg"
    argv = ["evaluate", "--cross-validate", "--group-by", "file", "--brand", "jeep"]
    assert main([*argv, "--plot", str(svg), *map(str, files)]) == 0
    capsys.readouterr()
    text = svg.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "trained without its group" in text  # the title says how the files were scored
    for f in files:
        assert f.name in text


def test_evaluate_plot_draws_scores_threshold_attacks_incidents_and_roc(fleet) -> None:
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Polygon, Rectangle

    from detector.core.brands import load_fleet
    from detector.core.config import load_config
    from detector.evaluation.evaluate import score_frames, spans_for
    from detector.evaluation.plots import evaluation_figure
    from detector.model.store import latest_model
    from replay.readers import read_frames

    out, models, kind_of = fleet
    model, cfg = latest_model(models, "cusw"), load_config(None)
    evs = []
    for v in sorted(kind_of):
        path = out / f"{v}.log"
        ev = score_frames(
            read_frames(path), "jeep", v, model, load_fleet(), model.baseline.window_s,
            cfg.incidents, spans_for(out / "fleet.json", v),
        )  # fmt: skip
        evs.append((path.name, ev))
    fig = evaluation_figure(evs, "a title")
    panels, roc = fig.axes[: len(evs)], fig.axes[len(evs)]
    assert len(fig.axes) == len(evs) + 1
    for ax, (name, ev) in zip(panels, evs, strict=True):
        assert ax.get_yscale() == "log" and ax.get_title(loc="left").startswith(name)
        lines = ax.get_lines()
        assert any(list(ln.get_ydata()) == [1.0, 1.0] for ln in lines)  # the threshold
        scores = max(lines, key=lambda ln: len(ln.get_xdata()))
        assert len(scores.get_xdata()) == len(ev.score) + 1  # a step per window, and its end
        shaded = [p for p in ax.patches if isinstance(p, Rectangle | Polygon)]
        shaded += [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(shaded) == len(ev.attack_spans) == 1
        bars = [ln for ln in lines if ln.get_linewidth() == 4]  # one per incident
        assert len(bars) == len(ev.incidents) >= 1
    assert "AUC" in " ".join(t.get_text() for t in roc.get_legend().get_texts())
    assert roc.get_xlabel().startswith("benign windows flagged")


def test_evaluate_plot_refuses_an_unknown_suffix(fleet, tmp_path, capsys) -> None:
    out, models, kind_of = fleet
    argv = ["evaluate", "--models", str(models), "--brand", "jeep", "--plot"]
    rc = main([*argv, str(tmp_path / "scores.bmp"), str(out / f"{sorted(kind_of)[0]}.log")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("canwatch evaluate: error: --plot must name a .png") and "\n" not in err
    assert not (tmp_path / "scores.bmp").exists()
