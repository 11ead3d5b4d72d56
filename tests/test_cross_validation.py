"""Cross-drive evaluation: incident accounting, grouping, and
``canwatch evaluate --cross-validate`` end to end through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detector.cli import main
from detector.core.errors import CanwatchError
from detector.core.schema import LABEL_CODE, make_frames
from detector.evaluation.cross_validation import (
    drive_numbers,
    groups_by_drive,
    groups_by_file,
    groups_from_map,
    leave_one_group_out,
    read_group_map,
)
from detector.evaluation.evaluate import (
    WINDOW_COLUMNS,
    Evaluation,
    attack_episodes,
    attack_report,
    false_incidents,
    file_report,
    is_true_incident,
    pooled_report,
    window_labels,
)
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

# ------------------------------------------------------------ incident accounting

W = 1.0
ATTACK_START, ATTACK_END = 10.0, 14.5  # first and last attack frame


def _incident(first_seen: float, last_seen: float) -> dict:
    return {"incident_id": f"i{first_seen:g}", "first_seen": first_seen, "last_seen": last_seen}


def _evaluation(incidents: list[dict], start: float = ATTACK_START) -> Evaluation:
    """20 one-second windows; windows 10..14 hold a fuzzing attack and score 2, the rest 0.5
    save those that ``incidents`` cover, which score 1.5 (flagged)."""
    t = np.arange(20, dtype=float)
    attack = np.where((t >= 10) & (t < 15), LABEL_CODE["fuzzing"], 0).astype(np.int8)
    score = np.where(attack > 0, 2.0, 0.5)
    for i in incidents:
        score[(t >= i["first_seen"]) & (t < i["last_seen"]) & (attack == 0)] = 1.5
    return Evaluation("v", t, score, attack, incidents, {"fuzzing": (start, ATTACK_END)}, W)


def test_incident_opening_three_windows_before_the_attack_is_false() -> None:
    early = _incident(7.0, 15.0)  # opens in window 7, runs into the attack
    assert not is_true_incident(early, ATTACK_START, ATTACK_END, W)
    ev = _evaluation([early])
    r = file_report(ev)
    assert r["incidents"] == 1 and r["incidents_overlapping_attacks"] == 1
    assert r["false_incidents"] == 1 and r["true_incidents"] == 0
    a = r["attacks"]["fuzzing"]
    assert a["incidents_overlapping"] == 1 and a["early_incidents"] == 1
    assert a["true_incidents"] == 0
    # the attack hides behind the false alarm: never detected by an incident, although
    # its windows are flagged
    assert a["detected"] is False and a["time_to_detect_s"] is None
    assert a["first_flagged_window_s"] == pytest.approx(1.0)
    assert a["recall"] == 1.0
    assert r["time_to_detect_s"] is None


def test_incident_opening_exactly_one_window_before_the_attack_is_true() -> None:
    on_time = _incident(9.0, 15.0)
    assert is_true_incident(on_time, ATTACK_START, ATTACK_END, W)
    # window starts are compared: an attack 0.8 ms into window 10 makes window 9 open more
    # than a window before its first frame (its traffic is all benign), with no slack
    assert not is_true_incident(_incident(9.0, 15.0), ATTACK_START + 0.0008, ATTACK_END, W)
    r = file_report(_evaluation([on_time]))
    assert r["false_incidents"] == 0 and r["true_incidents"] == 1
    a = r["attacks"]["fuzzing"]
    assert a["detected"] is True and a["early_incidents"] == 0
    # detected by the attack's own first window, flagged inside the incident: window 9
    # was benign traffic
    assert a["time_to_detect_s"] == 1.0
    assert a["benign_flagged_windows"] == 1  # window 9 is benign and flagged


def test_the_early_limit_is_one_window_of_time_before_the_first_frame() -> None:
    """An attack starting mid-window: window 9 starts 1.3 windows before its first frame."""
    assert not is_true_incident(_incident(9.0, 15.0), 10.3, ATTACK_END, W)
    assert is_true_incident(_incident(10.0, 15.0), 10.3, ATTACK_END, W)
    assert is_true_incident(_incident(12.0, 13.0), 10.3, ATTACK_END, W)


def test_each_intrusion_of_a_capture_is_an_episode_to_detect() -> None:
    """Two fuzzing intrusions (10-14.5 s and 30-33 s, as HCRL's captures hold 300) are two
    episodes. An incident opened in the benign stretch between them is false however it
    runs into the second, which it does not detect; on the first-to-last span it was
    'true' and the second 'detected'."""
    ts = np.r_[np.arange(0, 40, 0.01), np.arange(10, 14.5, 0.002), np.arange(30, 33, 0.002)]
    frames = make_frames(ts, np.zeros(len(ts), np.uint32), np.zeros((len(ts), 8), np.uint8))
    frames["label"][4000:] = LABEL_CODE["fuzzing"]
    episodes = attack_episodes(frames, W)
    assert episodes == {"fuzzing": [(10.0, pytest.approx(14.498)), (30.0, pytest.approx(32.998))]}
    t = np.arange(40, dtype=float)
    attack = np.where(((t >= 10) & (t < 15)) | ((t >= 30) & (t < 33)), LABEL_CODE["fuzzing"], 0)
    score = np.where(attack > 0, 2.0, 0.5)
    first, gap = _incident(10.0, 15.0), _incident(25.0, 33.0)
    ev = Evaluation("v", t, score, attack.astype(np.int8), [first, gap],
                    {"fuzzing": (10.0, 32.998)}, W, episodes)  # fmt: skip
    assert false_incidents(ev) == [gap]
    a = file_report(ev)["attacks"]["fuzzing"]
    assert (a["episodes"], a["episodes_detected"], a["detected"]) == (2, 1, False)
    assert a["true_incidents"] == 1 and a["time_to_detect_s"] is None
    ev.incidents = [first, _incident(30.0, 33.0)]
    a = file_report(ev)["attacks"]["fuzzing"]
    assert (a["episodes_detected"], a["time_to_detect_s"]) == (2, 1.0)
    assert not false_incidents(ev)


def test_a_slow_attack_is_one_episode_however_far_apart_its_frames() -> None:
    """A spoof of one frame every 2.5 s (10-30 s) pauses longer than two windows between
    frames, but not longer than four of its own spacings: one attack, not nine. Its
    windows between two of its frames are not benign traffic (12 of 31 were)."""
    ts = np.r_[np.arange(0, 40, 0.1), np.arange(10, 30.1, 2.5)]
    frames = make_frames(ts, np.zeros(len(ts), np.uint32), np.zeros((len(ts), 8), np.uint8))
    frames["label"][400:] = LABEL_CODE["spoofing"]
    episodes = attack_episodes(frames, W)
    assert episodes == {"spoofing": [(10.0, 30.0)]}
    t = np.arange(40, dtype=float)
    attack = window_labels(frames, t.astype(np.int64), W)[0]
    ev = Evaluation("v", t, np.full(40, 0.5), attack, [], {"spoofing": (10.0, 30.0)}, W, episodes)
    assert int((attack > 0).sum()) == 9
    r = file_report(ev)
    assert r["benign_windows"] == 40 - 21  # windows 10 to 30 are the attack's
    assert r["benign_hours"] == pytest.approx(19 / 3600, abs=1e-6)


def test_a_window_that_ends_as_the_attack_begins_does_not_overlap_it() -> None:
    """An incident of window 9 alone, [9, 10), closes as the attack's first frame (10.0)
    comes: it is false, and detects nothing."""
    before = _incident(9.0, 10.0)
    assert not is_true_incident(before, ATTACK_START, ATTACK_END, W)
    ev = _evaluation([before])
    ev.score[10:15] = 0.5  # the attack's own windows unflagged
    r = file_report(ev)
    assert r["false_incidents"] == 1 and r["attacks"]["fuzzing"]["detected"] is False


def test_an_incident_that_merely_spans_an_episode_does_not_detect_it() -> None:
    """Episodes at 10-14.5 s and 17-18.5 s; one incident from 10 to 20 (still open: it
    closes after quiet windows) with no window of the second episode flagged."""
    t = np.arange(25, dtype=float)
    attack = np.where(((t >= 10) & (t < 15)) | ((t >= 17) & (t < 19)), LABEL_CODE["fuzzing"], 0)
    score = np.where((t >= 10) & (t < 15), 2.0, 0.5)
    episodes = {"fuzzing": [(10.0, 14.5), (17.0, 18.5)]}
    ev = Evaluation("v", t, score, attack.astype(np.int8), [_incident(10.0, 20.0)],
                    {"fuzzing": (10.0, 18.5)}, W, episodes)  # fmt: skip
    a = file_report(ev)["attacks"]["fuzzing"]
    assert (a["episodes"], a["episodes_detected"], a["detected"]) == (2, 1, False)
    ev.score[17] = 1.5
    a = file_report(ev)["attacks"]["fuzzing"]
    assert (a["episodes_detected"], a["time_to_detect_s"]) == (2, 1.0)


def test_incidents_away_from_the_attack_are_false_and_counted_per_benign_hour() -> None:
    ev = _evaluation([_incident(2.0, 4.0), _incident(10.0, 15.0), _incident(16.0, 17.0)])
    assert [i["first_seen"] for i in false_incidents(ev)] == [2.0, 16.0]
    r = file_report(ev)
    assert r["benign_windows"] == 15
    assert r["benign_hours"] == pytest.approx(15 / 3600, abs=1e-6)
    assert r["false_incidents"] == 2
    assert r["false_incidents_per_hour"] == pytest.approx(2 / (15 / 3600), rel=1e-4)
    assert r["benign_flagged_windows"] == 3  # windows 2, 3 and 16
    assert r["benign_flagged_fraction"] == pytest.approx(3 / 15, abs=1e-4)
    a = attack_report(ev, "fuzzing")
    # next to the attack's AUC: the benign figures of the windows it is scored against
    assert a["roc_auc"] == 1.0
    for key in ("benign_flagged_fraction", "false_incidents", "false_incidents_per_hour"):
        assert a[key] == r[key], key
    assert a["time_to_detect_s"] == 1.0


def test_pooled_figures_sum_counts_and_pool_windows() -> None:
    a = _evaluation([_incident(7.0, 15.0)])  # early: false, attack undetected
    b = _evaluation([_incident(10.0, 15.0), _incident(2.0, 3.0)])
    p = pooled_report([a, b])
    ra, rb = file_report(a), file_report(b)
    for key in ("windows", "attacked_windows", "benign_windows", "benign_flagged_windows"):
        assert p[key] == ra[key] + rb[key], key
    assert p["false_incidents"] == ra["false_incidents"] + rb["false_incidents"] == 2
    assert p["false_incidents_per_hour"] == pytest.approx(2 / (30 / 3600), rel=1e-4)
    assert p["attacks_total"] == 2 and p["attacks_detected"] == 1
    assert p["time_to_detect_s"] is None  # worst of a detected and a missed attack: never
    assert p["time_to_detect_median_s"] == 1.0
    assert p["attacks"]["fuzzing"]["detected"] == 1


# ------------------------------------------------------------ grouping


def test_group_map_reading_and_matching(tmp_path: Path) -> None:
    m = tmp_path / "groups.csv"
    m.write_text("file,group\n/elsewhere/a.csv,d1\n\nb.csv , d2 \nc.csv,d1\n")
    mapping = read_group_map(m)
    assert mapping == {"a.csv": "d1", "b.csv": "d2", "c.csv": "d1"}
    files = ["/x/a.csv", "/x/b.csv", "/y/c.csv"]
    assert groups_from_map(files, mapping, str(m)) == ["d1", "d2", "d1"]
    assert drive_numbers(["d1", "d2", "d1"]) == [0, 1, 0]
    folds = leave_one_group_out(["d1", "d2", "d1"])
    assert [(f.group, f.train, f.held_out) for f in folds] == [
        ("d1", (1,), (0, 2)),
        ("d2", (0, 2), (1,)),
    ]
    assert groups_by_file(files) == ["a.csv", "b.csv", "c.csv"]
    with pytest.raises(CanwatchError, match="share the base name a.csv"):
        groups_from_map(["/x/a.csv", "/y/a.csv"], mapping, str(m))
    assert groups_by_file(["/x/a.csv", "/y/a.csv"]) == ["/x/a.csv", "/y/a.csv"]


def test_auto_groups_keep_a_capture_and_its_masquerade_twin_together() -> None:
    a = simulate_vehicle("cusw", 12.0, START_TS, seed=21)
    twin, _ = inject(a, AttackSpec.parse("masquerade:start=4,duration=4"), seed=1)
    b = simulate_vehicle("cusw", 12.0, START_TS, seed=22)
    assert groups_by_drive([a, b, twin]) == ["drive-1", "drive-2", "drive-1"]


# ------------------------------------------------------------ the command line

START_TS = 1.7e9
DURATION_S = 30.0


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three simulated drives as ROAD-style CSV (labels kept): a capture with a DoS and
    its masquerade twin (the same drive), a fuzzed drive, and a benign one."""
    out = tmp_path_factory.mktemp("drives")
    a = simulate_vehicle("cusw", DURATION_S, START_TS, seed=31)
    recordings = {
        "a_dos": inject(a, AttackSpec.parse("dos:start=10,duration=5"), seed=1)[0],
        "a_masquerade": inject(a, AttackSpec.parse("masquerade:start=18,duration=5"), seed=2)[0],
        "b_fuzzing": inject(
            simulate_vehicle("cusw", DURATION_S, START_TS, seed=32),
            AttackSpec.parse("fuzzing:start=12,duration=5"),
            seed=3,
        )[0],
        "c_benign": simulate_vehicle("cusw", DURATION_S, START_TS, seed=33),
    }
    paths = {}
    for name, frames in recordings.items():
        paths[name] = out / f"{name}.csv"
        write_frames(paths[name], frames, "road")
    return paths


def _group_map(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("file,group\n" + "".join(f"{f},{g}\n" for f, g in rows))
    return path


def _windows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _auc(rows: list[dict]) -> float:
    rows = [r for r in rows if r["counted"] == "1"]  # not in an attack episode's gaps
    return roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])


def _once(rows: list[dict], twins: set[str]) -> list[dict]:
    """The rows as pooling counts them: a benign window of two twin files (the same
    frames) once, at its higher score."""
    kept, shared = [], {}
    for r in rows:
        if r["counted"] == "0":
            continue
        if r["label"] == "0" and r["file"] in twins:
            key = r["window_start"]
            if key not in shared or float(r["score"]) > float(shared[key]["score"]):
                shared[key] = r
        else:
            kept.append(r)
    return kept + list(shared.values())


def test_cross_validate_with_a_group_map(drives: dict[str, Path], tmp_path: Path, capsys) -> None:
    groups = {
        "a_dos": "car-a",
        "a_masquerade": "car-a",
        "b_fuzzing": "car-b",
        "c_benign": "car-c",
    }
    gmap = _group_map(tmp_path / "groups.csv", [(p.name, groups[n]) for n, p in drives.items()])
    files = [str(p) for p in drives.values()]
    report_json, windows_csv, models = tmp_path / "R.json", tmp_path / "W.csv", tmp_path / "m"
    rc = main(
        [
            "evaluate",
            "--cross-validate",
            "--brand",
            "jeep",
            "--groups",
            str(gmap),
            "--report",
            str(report_json),
            "--windows-out",
            str(windows_csv),
            "--models-out",
            str(models),
            *files,
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("cross-drive figures:"), table
    assert "pooled (4 files)" in table

    report = json.loads(report_json.read_text())
    assert report["protocol"] == "leave-one-group-out" and report["grouping"] == "map"
    members = {
        g: [str(drives[n]) for n in drives if groups[n] == g]
        for g in dict.fromkeys(groups.values())
    }
    assert report["groups"] == members
    assert [f["group"] for f in report["folds"]] == ["car-a", "car-b", "car-c"]
    for n, fold in enumerate(report["folds"], start=1):
        held = fold["held_out"]
        assert held == members[fold["group"]]
        # trained on exactly the other groups' files: never on the held-out drive
        assert not set(fold["trained_on"]) & set(held)
        assert sorted(fold["trained_on"] + held) == sorted(files)
        assert fold["trained_on_groups"] == [g for g in members if g != fold["group"]]
        assert fold["training"]["files"] == [Path(f).name for f in fold["trained_on"]]
        assert set(fold["training"]["groups"].values()) == set(fold["trained_on_groups"])
        manifest = json.loads(Path(fold["model"]["manifest"]).read_text())
        assert Path(fold["model"]["manifest"]).parent == models / f"fold-{n}"
        assert manifest["sha256"] == fold["model"]["sha256"]
        assert manifest["training"]["files"] == fold["training"]["files"]
    # training calibrates across the map's groups: the twins are one drive
    assert [f["training"]["drives"] for f in report["folds"]] == [2, 2, 2]
    assert [f["training"]["recordings"] for f in report["folds"]] == [2, 3, 3]

    # every file held out once, its figures next to its windows
    rows = _windows(windows_csv)
    assert list(rows[0]) == list(WINDOW_COLUMNS)
    assert list(report["files"]) == files
    kinds = {"a_dos": "dos", "a_masquerade": "masquerade", "b_fuzzing": "fuzzing"}
    for name, path in drives.items():
        r = report["files"][str(path)]
        mine = [w for w in rows if w["file"] == str(path)]
        assert r["group"] == groups[name]
        assert r["windows"] == sum(w["counted"] == "1" for w in mine) >= DURATION_S - 5
        assert r["attacked_windows"] == sum(w["label"] == "1" for w in mine)
        flagged = sum(w["label"] == "0" and float(w["score"]) >= 1.0 for w in mine)
        assert r["benign_flagged_windows"] == flagged
        assert set(r["attacks"]) == ({kinds[name]} if name in kinds else set())
        if name in kinds:
            assert r["roc_auc"] == pytest.approx(_auc(mine))
        assert r["false_incidents"] + r["true_incidents"] == r["incidents"]
        assert r["false_incidents_per_hour"] == pytest.approx(
            r["false_incidents"] / r["benign_hours"], rel=1e-3
        )
    # a DoS on a drive the model never saw is still caught, by a true incident
    dos = report["files"][str(drives["a_dos"])]["attacks"]["dos"]
    assert dos["roc_auc"] >= 0.95 and dos["detected"], dos

    pooled, per_file = report["pooled"], list(report["files"].values())
    assert pooled["recordings"] == 4
    for key in ("attacked_windows", "incidents"):
        assert pooled[key] == sum(r[key] for r in per_file), key
    # a_dos and a_masquerade are one drive: a benign window both hold counts once
    once = _once(rows, {str(drives["a_dos"]), str(drives["a_masquerade"])})
    benign = sum(r["label"] == "0" for r in once)
    assert pooled["benign_windows"] == benign < sum(r["benign_windows"] for r in per_file)
    assert pooled["benign_flagged_windows"] == sum(
        r["label"] == "0" and float(r["score"]) >= 1.0 for r in once
    )
    assert pooled["false_incidents"] <= sum(r["false_incidents"] for r in per_file)
    assert pooled["roc_auc"] == pytest.approx(_auc(once))  # over the windows counted once
    assert pooled["benign_hours"] == pytest.approx(benign / 3600.0, abs=1e-5)
    assert pooled["benign_flagged_fraction"] == pytest.approx(
        pooled["benign_flagged_windows"] / pooled["benign_windows"], abs=1e-4
    )
    ttds = [a["time_to_detect_s"] for r in per_file for a in r["attacks"].values()]
    assert pooled["attacks_total"] == 3 == len(ttds)
    assert pooled["attacks_detected"] == sum(t is not None for t in ttds)
    assert pooled["time_to_detect_s"] == (None if None in ttds else max(ttds))
    assert set(pooled["attacks"]) == {"dos", "fuzzing", "masquerade"}
    for kind, a in pooled["attacks"].items():
        assert a["attacks"] == 1
        assert a["benign_windows"] == pooled["benign_windows"]
        assert a["attacked_windows"] == sum(
            r["attacks"][kind]["attacked_windows"] for r in per_file if kind in r["attacks"]
        )

    # the fold's kept model, evaluated on a file it was trained on, says so
    rc = main(["evaluate", "--models", str(models / "fold-1"), "--brand", "jeep", files[2]])
    assert rc == 0
    assert "in this model's training data: not a quality figure" in capsys.readouterr().out


def test_cross_validate_groups_twins_automatically(
    drives: dict[str, Path], tmp_path: Path, capsys
) -> None:
    files = [str(drives[n]) for n in ("a_dos", "b_fuzzing", "a_masquerade")]
    report_json = tmp_path / "R.json"
    rc = main(
        ["evaluate", "--cross-validate", "--brand", "jeep", "--report", str(report_json), *files]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("cross-drive figures:") and "by auto" in out.splitlines()[0]
    report = json.loads(report_json.read_text())
    assert report["grouping"] == "auto"
    assert [(f["held_out"], f["trained_on"]) for f in report["folds"]] == [
        ([files[0], files[2]], [files[1]]),
        ([files[1]], [files[0], files[2]]),
    ]


def test_train_with_a_group_map(drives: dict[str, Path], tmp_path: Path, capsys) -> None:
    files = [drives[n] for n in ("a_dos", "a_masquerade", "b_fuzzing")]
    gmap = _group_map(
        tmp_path / "g.csv", [(files[0].name, "x"), (files[1].name, "x"), (files[2].name, "y")]
    )
    rc = main(
        [
            "train",
            "--brand",
            "jeep",
            "--groups",
            str(gmap),
            "--out",
            str(tmp_path / "m"),
            *map(str, files),
        ]
    )
    assert rc == 0
    assert "2 drives" in capsys.readouterr().out
    training = json.loads((tmp_path / "m" / "cusw-v1.json").read_text())["training"]
    assert training["drives"] == 2
    assert training["groups"] == {files[0].name: "x", files[1].name: "x", files[2].name: "y"}
    assert training["calibration"] == "leave-one-drive-out"


# ------------------------------------------------------------ bad input

MAP_ERRORS = {
    "missing": ("file,group\na_dos.csv,d1\nb_fuzzing.csv,d2\n", "no group for {c}"),
    "header": ("name,drive\na_dos.csv,d1\n", "{map}:1: expected the header 'file,group'"),
    "conflict": (
        "file,group\na_dos.csv,d1\nb_fuzzing.csv,d2\nc_benign.csv,d2\na_dos.csv,d3\n",
        "{map}:5: a_dos.csv is already in group 'd1'",
    ),
    "short row": ("file,group\na_dos.csv\n", "{map}:2: expected 'file,group'"),
    "one group": (
        "file,group\na_dos.csv,d\nb_fuzzing.csv,d\nc_benign.csv,d\n",
        "cross-validation needs at least 2 groups, got 1 ('d' holds all 3 files)",
    ),
}


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", list(MAP_ERRORS))
def test_bad_group_map(drives: dict[str, Path], tmp_path: Path, capsys, case: str) -> None:
    text, expected = MAP_ERRORS[case]
    gmap = tmp_path / "g.csv"
    gmap.write_text(text)
    files = [str(drives[n]) for n in ("a_dos", "b_fuzzing", "c_benign")]
    commands = [["evaluate", "--cross-validate"], ["train", "--out", str(tmp_path / "m")]]
    if case == "one group":
        commands.pop()  # one drive is a valid training set
    for command in commands:
        line = _one_line_error(capsys, [*command, "--brand", "jeep", "--groups", str(gmap), *files])
        assert line.startswith(f"canwatch {command[0]}: error:"), line
        assert expected.format(map=gmap, c=files[2]) in line, line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--cross-validate", "--models", "m"], "--models does not apply with --cross-validate"),
        ([], "--models DIR is required"),
        (["--models", "m", "--groups", "g.csv"], "--groups applies only with --cross-validate"),
        (
            ["--cross-validate", "--group-by", "car"],
            "--group-by must be one of auto, file, got 'car'",
        ),
        (["--cross-validate", "--groups", "nowhere.csv"], "nowhere.csv: no such file"),
        (["--cross-validate", "--group-by", "file"], "needs at least 2 groups, got 1"),
    ],
)
def test_bad_cross_validate_flags(
    drives: dict[str, Path], tmp_path: Path, capsys, flags: list[str], expected: str
) -> None:
    line = _one_line_error(capsys, ["evaluate", "--brand", "jeep", *flags, str(drives["a_dos"])])
    assert line.startswith("canwatch evaluate: error:") and expected in line, line


def test_twins_alone_are_one_group(drives: dict[str, Path], capsys) -> None:
    twins = [str(drives["a_dos"]), str(drives["a_masquerade"])]
    line = _one_line_error(capsys, ["evaluate", "--cross-validate", "--brand", "jeep", *twins])
    assert "needs at least 2 groups, got 1 ('drive-1' holds all 2 files)" in line, line


def test_a_fold_without_enough_training_data(
    drives: dict[str, Path], tmp_path: Path, capsys
) -> None:
    short = tmp_path / "short.csv"
    write_frames(short, simulate_vehicle("cusw", 3.0, START_TS, seed=34), "road")
    argv = ["evaluate", "--cross-validate", "--brand", "jeep", "--group-by", "file"]
    line = _one_line_error(capsys, [*argv, str(drives["c_benign"]), str(short)])
    # what training says after the prefix is training's own message (too little data)
    prefix = "canwatch evaluate: error: fold 1 (group 'c_benign.csv' held out): "
    assert line.startswith(prefix) and len(line) > len(prefix) + 10, line


def test_a_file_given_twice(drives: dict[str, Path], capsys) -> None:
    f = str(drives["b_fuzzing"])
    line = _one_line_error(capsys, ["evaluate", "--cross-validate", "--brand", "jeep", f, f])
    assert line == f"canwatch evaluate: error: {f} is given twice", line


def test_no_fold_trains_on_a_twin_of_what_it_holds_out() -> None:
    """Each file its own group (or a map that splits a drive): the fold holding out a
    capture would train on its edited twin, so its figures would be measured on traffic
    that was in training. Refused, naming both."""
    from detector.core.errors import CanwatchError
    from detector.evaluation.cross_validation import check_no_twin_in_training

    files = ["a.log", "a_masq.log", "b.log"]
    drives = ["drive-1", "drive-1", "drive-2"]
    check_no_twin_in_training(leave_one_group_out(drives), files, drives)
    with pytest.raises(CanwatchError, match="fold 1 would train on a_masq.log, which shares"):
        check_no_twin_in_training(leave_one_group_out(groups_by_file(files)), files, drives)


def test_can_fd_logs_group_into_drives() -> None:
    """The default grouping compares 8-byte payloads: CAN FD frames as their lanes (it
    raised on 64-byte payloads)."""
    a = simulate_vehicle("stla", 20.0, 1.7e9, seed=1)
    b = simulate_vehicle("stla", 20.0, 1.8e9, seed=2)
    twin = a.copy()
    twin["data"][:100] ^= 1
    assert groups_by_drive([a, twin, b]) == ["drive-1", "drive-1", "drive-2"]
