"""CAN log readers and writers: round trips, malformed input, real captures."""

from __future__ import annotations

import time
from pathlib import Path

import can
import numpy as np
import pytest

from detector.core.errors import InputError
from detector.core.schema import EXTENDED_FLAG, FLAG_ERROR, FLAG_RTR, FRAME_DTYPE, LABEL_CODE
from replay.readers import FORMATS, detect_format, read_frames
from replay.writers import write_frames

DATA = Path(__file__).parents[2] / "shared" / "data"
UNKNOWN = LABEL_CODE["unknown"]

# format -> (suffix, timestamp precision in s, labels kept, remote frames kept)
WRITABLE = {
    "candump": (".log", 1e-6, "all", True),
    "road": (".csv", 1e-6, "all", False),
    "hcrl": (".csv", 1e-6, "attacked", False),
    "csv": (".csv", 0.0, "none", True),
    "asc": (".asc", 1e-6, "none", True),
    "blf": (".blf", 1e-6, "none", True),
    "trc": (".trc", 1e-6, "none", False),
    "crysys": (".txt", 1e-6, "none", False),
    "cantt": (".csv", 1e-6, "attacked", False),
    "hcrl-txt": (".txt", 1e-6, "none", True),
}


def random_frames(n: int = 600, seed: int = 7, rtr: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.zeros(n, FRAME_DTYPE)
    f["ts"] = 1.6e9 + np.cumsum(rng.random(n) * 0.01)
    ext = rng.random(n) < 0.3
    f["can_id"] = np.where(
        ext, rng.integers(0, 2**29, n) | EXTENDED_FLAG, rng.integers(0, 0x800, n)
    )
    f["dlc"] = np.arange(n) % 9  # every dlc 0..8
    data = rng.integers(0, 256, (n, 8)).astype(np.uint8)
    data[np.arange(8) >= f["dlc"][:, None]] = 0
    f["data"] = data
    f["label"] = np.where(rng.random(n) < 0.2, rng.integers(1, 8, n), 0)
    if rtr:
        remote = rng.random(n) < 0.05
        f["flags"][remote] = FLAG_RTR
        f["data"][remote] = 0
    return f


@pytest.mark.parametrize("fmt", sorted(WRITABLE))
def test_round_trip(tmp_path, fmt):
    suffix, precision, labels, rtr_ok = WRITABLE[fmt]
    frames = random_frames(rtr=rtr_ok)
    path = tmp_path / f"frames{suffix}"
    write_frames(path, frames, fmt)
    assert detect_format(path) == fmt
    back = read_frames(path)
    assert len(back) == len(frames)
    np.testing.assert_array_equal(back["can_id"], frames["can_id"])
    np.testing.assert_array_equal(back["dlc"], frames["dlc"])
    np.testing.assert_array_equal(back["data"], frames["data"])
    np.testing.assert_array_equal(back["flags"], frames["flags"])
    # half a unit of the last written digit, plus float64 rounding at 1.6e9
    np.testing.assert_allclose(back["ts"], frames["ts"], rtol=0, atol=precision / 2 + 5e-7)
    expected = {
        "all": frames["label"],
        "attacked": np.where(frames["label"] != 0, UNKNOWN, 0),
        "none": np.zeros(len(frames)),
    }[labels]
    np.testing.assert_array_equal(back["label"], expected)


@pytest.fixture
def zone(monkeypatch):
    """Set the process's local time zone (TZ), restored after the test."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("fmt", ["asc", "blf", "trc"])
def test_a_log_reads_the_same_times_in_any_time_zone(tmp_path, zone, fmt):
    """An ASC file written in New York read 5 h off in UTC (python-can reads its header
    in the machine's zone): a simulated capture's attack spans then missed its frames."""
    suffix = WRITABLE[fmt][0]
    frames = random_frames(50, rtr=False)
    zone("America/New_York")
    write_frames(tmp_path / f"f{suffix}", frames, fmt)
    for name in ("UTC", "Asia/Tokyo", "America/New_York"):
        zone(name)
        back = read_frames(tmp_path / f"f{suffix}")
        np.testing.assert_allclose(back["ts"], frames["ts"], rtol=0, atol=1e-6, err_msg=name)


def test_candump_without_labels_has_no_label_column(tmp_path):
    frames = random_frames(20)
    frames["label"] = 0
    write_frames(tmp_path / "a.log", frames)
    first = (tmp_path / "a.log").read_text().splitlines()[0]
    assert len(first.split()) == 3


def test_candump_matches_python_can(tmp_path):
    """python-can's own candump output (with R/T direction) reads identically."""
    frames = random_frames(300)
    path = tmp_path / "pc.log"
    with can.CanutilsLogWriter(path) as w:
        for i in range(len(frames)):
            f = frames[i]
            rtr = bool(f["flags"] & FLAG_RTR)
            w.on_message_received(
                can.Message(
                    timestamp=float(f["ts"]),
                    arbitration_id=int(f["can_id"]) & 0x1FFFFFFF,
                    is_extended_id=bool(f["can_id"] & EXTENDED_FLAG),
                    is_remote_frame=rtr,
                    dlc=int(f["dlc"]),
                    data=None if rtr else bytes(f["data"][: f["dlc"]]),
                    is_rx=bool(i % 2),
                )
            )
    ours = read_frames(path)
    theirs = list(can.LogReader(path))
    np.testing.assert_array_equal(ours["ts"], [m.timestamp for m in theirs])
    np.testing.assert_array_equal(ours["can_id"] & 0x1FFFFFFF, [m.arbitration_id for m in theirs])
    np.testing.assert_array_equal(
        ours["dlc"][ours["flags"] == 0], frames["dlc"][frames["flags"] == 0]
    )


def test_python_can_csv_odd_timestamps(tmp_path):
    path = tmp_path / "odd.csv"
    msgs = [
        can.Message(timestamp=ts, arbitration_id=0x10, data=b"\x01")
        for ts in (1e-05, 0.30000000000000004, 1600000000.1234567, 123456789012.25)
    ]
    with can.CSVWriter(path) as w:
        for m in msgs:
            w.on_message_received(m)
    np.testing.assert_array_equal(read_frames(path)["ts"], [m.timestamp for m in msgs])


#: Dataset samples as their authors write them: (file, text, format, ids, dlcs, labels,
#: flags, (row, its 8 data bytes)).
SAMPLES = [
    pytest.param(  # the flag right after the last data byte, headerless
        "hcrl.csv",
        "1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R\n"
        "1478198376.389636,018f,2,fe,5b,T\n"
        "1478198376.389800,0260,0,R\n",
        "hcrl", [0x316, 0x18F, 0x260], [8, 2, 0], [0, UNKNOWN, 0], [0, 0, 0],
        (1, [0xFE, 0x5B, 0, 0, 0, 0, 0, 0]), id="hcrl-shifted-flag",
    ),
    pytest.param(
        "c.txt",
        "1483093132.049669        0380    000    8    30 bb 82 00 9d 53 00 81\n"
        "1483093132.050104        0180    000    6    64 10 7f ff f4 00\n"
        "1483093132.050105        18fef100    000    0\n",
        "crysys", [0x380, 0x180, 0x18FEF100 | EXTENDED_FLAG], [8, 6, 0], [0, 0, 0], [0, 0, 0],
        (1, [0x64, 0x10, 0x7F, 0xFF, 0xF4, 0, 0, 0]), id="crysys",
    ),
    pytest.param(  # can-train-and-test: payloads of any length, 0x ids
        "DoS-1.csv",
        "timestamp,arbitration_id,data_field,attack\n"
        "1672531200.0,0C1,3000000430000004,0\n"
        "1672531200.0002701,0x0C5,000200000000,0\n"
        "1672531200.000502,000,,1\n",
        "cantt", [0x0C1, 0x0C5, 0x000], [8, 6, 0], [0, 0, UNKNOWN], [0, 0, 0],
        (1, [0, 2, 0, 0, 0, 0, 0, 0]), id="can-train-and-test",
    ),
    pytest.param(  # CANini / CAN-MIRGU: a dlc_value column
        "canini.csv",
        "timestamp,arbitration_id,data_field,dlc_value,attack\n"
        "1698233010.284626,372,2F002500EE1E0000,8,0\n"
        "1698233010.285637,436,00000000,4,1\n",
        "cantt", [0x372, 0x436], [8, 4], [0, UNKNOWN], [0, 0],
        (0, [0x2F, 0, 0x25, 0, 0xEE, 0x1E, 0, 0]), id="canini",
    ),
    pytest.param(  # Car-Hacking's normal_run_data.txt, OTIDS: 100 marks a remote frame
        "normal_run_data.txt",
        "Timestamp: 1479121434.850202        ID: 0350    000    DLC: 8    05 28 84 66 6d 00 00 a2\n"
        "Timestamp: 1479121434.850977        ID: 0430    000    DLC: 2    00 0a\n"
        "Timestamp: 1479121434.851000        ID: 0430    100    DLC: 8\n",
        "hcrl-txt", [0x350, 0x430, 0x430], [8, 2, 8], [0, 0, 0], [0, 0, FLAG_RTR],
        (0, [0x05, 0x28, 0x84, 0x66, 0x6D, 0, 0, 0xA2]), id="hcrl-text",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "fmt", "ids", "dlcs", "labels", "flags", "row"), SAMPLES)
def test_dataset_samples_read_as_written(tmp_path, name, text, fmt, ids, dlcs, labels, flags, row):
    path = tmp_path / name
    path.write_text(text)
    assert detect_format(path) == fmt
    f = read_frames(path)
    assert f["can_id"].tolist() == ids and f["dlc"].tolist() == dlcs
    assert f["label"].tolist() == labels and f["flags"].tolist() == flags
    assert f["data"][row[0]].tolist() == row[1]


def test_format_overrides_and_timestamps_kept(tmp_path):
    cd = tmp_path / "c.txt2"
    cd.write_text("(1.5) can0 123#11\n")
    assert read_frames(cd, fmt="candump")["can_id"].tolist() == [0x123]
    f = read_frames(cd)
    write_frames(tmp_path / "x.csv", f, "pcan-csv")
    assert read_frames(tmp_path / "x.csv", fmt="pcan-csv")["dlc"].tolist() == [1]
    ctt = tmp_path / "DoS-1.csv"
    ctt.write_text(SAMPLES[2].values[1])
    assert read_frames(ctt, fmt="can-train-and-test")["can_id"].tolist() == [0x0C1, 0x0C5, 0]
    np.testing.assert_allclose(
        read_frames(ctt)["ts"] - 1672531200.0, [0, 0.0002701, 0.000502], atol=5e-7
    )


def test_formats_listed():
    assert set(FORMATS) >= {
        "candump", "asc", "blf", "trc", "csv", "hcrl", "road", "crysys", "cantt", "hcrl-txt",
    }  # fmt: skip


ROAD_HEAD = "Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label\n"
ROAD_OK = "1.0,20E,4E,20,03,A0,C6,3F,8F,FF,Benign\n"
HCRL_HEAD = (
    "Timestamp,CAN ID,DLC,DATA[0],DATA[1],DATA[2],DATA[3],DATA[4],DATA[5],DATA[6],DATA[7],Flag\n"
)
PCSV_HEAD = "timestamp,arbitration_id,extended,remote,error,dlc,data\n"
CANTT_HEAD = "timestamp,arbitration_id,data_field,attack\n"
HTXT_OK = "Timestamp: 1479121434.850977        ID: 0430    000    DLC: 2    00 0a\n"
CANTT_OK = "1.0,0C1,3000000430000004,0\n"
ASC_HEAD = "date Mon Dec 7 10:00:00.000 am 2026\nbase hex  timestamps absolute\n"
ASC_OK = "   0.010000 1  1A0             Rx   d 2 00 11\n"
FD_OK = "   0.020000 CANFD   1 Rx        1b1  1 0 9 12 " + "00 " * 12 + "\n"
TRC2_HEAD = ";$FILEVERSION=2.1\n;$STARTTIME=45000.5\n;$COLUMNS=N,O,T,B,I,d,R,L,D\n"
TRC2_OK = "      1         0.100 DT  1     0100 Rx -  2    01 02\n"
TRC1_HEAD = ";$FILEVERSION=1.1\n;$STARTTIME=45000.5\n"
TRC1_OK = "     1)      1841.0  Rx         0001  2  00 01\n"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("f.log", "(1.0) can0 123#11\n(1.1) can0 123#ZZ\n", "f.log:2: bad hex in data 'ZZ'"),
        ("f.log", "(1.0) can0 123#11\n\n(1.1) can0 123#112\n", "f.log:3: odd number of hex digits"),
        ("f.log", "(1.0) can0 123#112233445566778899\n", "f.log:1: dlc 9 > 8"),
        ("f.log", "(1.0) can0 123#11\n(x.y) can0 1#\n", "f.log:2: bad timestamp '(x.y)'"),
        ("f.log", "(1.0) can0 123#11\n(1.0) can0 12G#11\n", "f.log:2: bad CAN id '12G'"),
        ("f.log", "(1.0) can0 123#11\n(1.0) can0\n", "f.log:2: expected at least 3 columns, got 2"),
        ("f.log", "(1.0) can0 123#11 maybe\n", "f.log:1: unknown label 'maybe'"),
        (
            "f.csv",
            ROAD_HEAD + ROAD_OK + "2.0,20E,4E,Benign\n",
            "f.csv:3: expected 11 columns, got 4",
        ),
        ("f.csv", ROAD_HEAD + ROAD_OK.replace("A0", "X0"), "f.csv:2: bad hex in data bytes"),
        ("f.csv", ROAD_HEAD + ROAD_OK.replace(",4E,", ",,"), "f.csv:2: empty byte cell"),
        (
            "f.csv",
            HCRL_HEAD + "1.5,0316,8,1,2,3,4,5,6,7,8,R\n1.6,0316,12,R\n",
            "f.csv:3: dlc 12 > 8",
        ),
        ("f.csv", HCRL_HEAD + "1.5,0316,2,1,2,3,4,R\n", "f.csv:2: expected 6 or 12 columns, got 8"),
        ("f.csv", HCRL_HEAD + "1.5,0316,1,01,Q\n", "f.csv:2: bad flag 'Q'"),
        (
            "f.csv",
            PCSV_HEAD + "1.0,0x10,0,0,0,1,AQ==\n1.0,0x10,2,0,0,1,AQ==\n",
            "f.csv:3: extended must be 0 or 1",
        ),
        ("f.csv", PCSV_HEAD + "1.0,0x10,0,0,0,1,A!==\n", "f.csv:2: bad base64 data 'A!=='"),
        ("f.csv", PCSV_HEAD + "1.0,0x10,0,0,0,1\n", "f.csv:2: expected 7 columns, got 6"),
        # the data short of its dlc read as zeros nobody sent, or long as bytes past it
        ("f.csv", PCSV_HEAD + "1.0,0x10,0,0,0,1,AQ==\n1.0,0x10,0,0,0,8,AQI=\n",
         "f.csv:3: dlc 8 but 2 data bytes"),
        ("f.csv", PCSV_HEAD + "1.0,0x10,0,0,0,2,AAECAwQFBgc=\n", "f.csv:2: dlc 2 but 8 data bytes"),
        ("f.txt", "1.5 0380 000 8 30 bb 82\n", "f.txt:1: expected 12 columns (dlc 8), got 7"),
        ("f.csv", CANTT_HEAD + CANTT_OK + "1.1,na,na,1\n", "f.csv:3: bad CAN id 'na'"),
        ("f.csv", CANTT_HEAD + CANTT_OK + "1.1,0C1,30000,0\n", "f.csv:3: odd number of hex"),
        ("f.csv", CANTT_HEAD + "1.1,0C1,300000043000000411,0\n", "f.csv:2: data_field of 9"),
        ("f.csv", CANTT_HEAD + "1.1,0C1,3G,0\n", "f.csv:2: bad hex in data_field '3G'"),
        ("f.csv", CANTT_HEAD + CANTT_OK + "1.1,0C1,30,2\n", "f.csv:3: bad attack label '2'"),
        ("f.csv", CANTT_HEAD + "1.1,0C1,3000,0,0\n", "f.csv:2: dlc_value '0' is not the 2 bytes"),
        ("h.txt", HTXT_OK + HTXT_OK.replace("DLC: 2    00 0a", "DLC: 3    00 0a"),
         "h.txt:2: expected 10 columns (dlc 3), got 9"),
        ("h.txt", HTXT_OK + HTXT_OK.replace("000", "010"), "h.txt:2: bad flags '010'"),
        # python-can reads these with the bytes that are there, or drops the line
        ("f.asc", ASC_HEAD + ASC_OK + ASC_OK.replace("d 2", "d 8"),
         "f.asc:4: not a readable asc file: dlc 8 but 2 data bytes"),
        ("f.asc", ASC_HEAD + FD_OK + FD_OK.replace("9 12 ", "9 16 "),
         "f.asc:4: not a readable asc file: CANFD dlc 9 (12 bytes) but data length 16"),
        ("f.asc", ASC_HEAD + FD_OK.replace("9 12 ", "a 16 "),
         "f.asc:3: not a readable asc file: dlc 16 but 12 data bytes"),
        ("f.trc", TRC2_HEAD + TRC2_OK + TRC2_OK.replace("-  2 ", "-  8 "),
         "f.trc:5: not a readable trc file: dlc 8 but 2 data bytes"),
        ("f.trc", TRC2_HEAD + TRC2_OK.replace("01 02", "01 02 03"),
         "f.trc:4: not a readable trc file: dlc 2 but 3 data bytes"),
        ("f.trc", TRC1_HEAD + TRC1_OK + TRC1_OK.replace("2  00", "3  00"),
         "f.trc:4: not a readable trc file: too few columns for its dlc"),
        ("f.trc", TRC1_HEAD + TRC1_OK.replace("00 01", "00 01 02"),
         "f.trc:3: not a readable trc file: dlc 2 but 3 data bytes"),
        ("h.txt", HTXT_OK + HTXT_OK.replace("0430", "04G0"), "h.txt:2: bad CAN id '04G0'"),
        ("h.txt", HTXT_OK + HTXT_OK.replace("ID:", "Id?"), "h.txt:2: expected 'id:', got 'Id?'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    fmt = "crysys" if name == "f.txt" else None
    with pytest.raises(InputError) as exc:
        read_frames(path, fmt)
    assert str(exc.value).startswith(f"{path.parent}/{message}")


def test_asc_classic_frame_on_a_canfd_line_keeps_its_dlc_above_8(tmp_path):
    """A classic frame on an FD channel may carry DLC 9-15 for its 8 bytes."""
    path = tmp_path / "f.asc"
    path.write_text(ASC_HEAD + FD_OK.replace("9 12 " + "00 " * 12, "f 8 " + "00 " * 8))
    assert len(read_frames(path)) == 1


def test_asc_without_events_line_keeps_its_first_frame(tmp_path):
    """The ``internal events logged`` line is optional; without it python-can's header
    scan took the first frame as the header's end and dropped it."""
    path = tmp_path / "f.asc"
    path.write_text(ASC_HEAD + ASC_OK + ASC_OK.replace("0.010000", "0.020000"))
    frames = read_frames(path)
    assert len(frames) == 2
    assert frames["data"][:, :2].tolist() == [[0x00, 0x11]] * 2
    assert np.diff(frames["ts"]).tolist() == pytest.approx([0.01])


def test_trc_error_frames_are_read_not_dropped(tmp_path):
    """PCAN-View logs a bus error as type ER (its id column blank), TRC 1.0 as ERROR
    after the DLC; python-can drops the first as an unsupported type and cannot read
    a file with the second, so a bus-off attack read as a quiet bus or not at all."""
    path = tmp_path / "f.trc"
    error = "      2         0.150 ER  1 -          Rx -  5    04 00 08 00 00\n"
    path.write_text(TRC2_HEAD + TRC2_OK + error + TRC2_OK.replace("0.100", "0.200"))
    frames = read_frames(path)
    assert frames["flags"].tolist() == [0, FLAG_ERROR, 0]
    assert frames["can_id"].tolist() == [0x100, 0, 0x100]
    assert frames["dlc"].tolist() == [2, 0, 2]
    v1_0 = tmp_path / "v10.trc"  # PEAK's own example; python-can could not read it
    v1_0.write_text(";####\n     1)  1841  0001  8  00 00 00 00 00 00 00 00\n"
                    "     2)  1842  0008  4  ERROR 00 19 08 08\n     4)  1844  0100  3  RTR\n")
    frames = read_frames(v1_0)
    assert frames["flags"].tolist() == [0, FLAG_ERROR, FLAG_RTR]
    assert frames["can_id"].tolist() == [0x001, 0, 0x100]
    # PEAK's 1.1 and 1.3 examples: the line type Error (python-can: unsupported, dropped)
    v1_1 = tmp_path / "v11.trc"
    v1_1.write_text(TRC1_HEAD + TRC1_OK + "     2)      1349.2  Error      0008  4  00 19 08 08\n")
    assert read_frames(v1_1)["flags"].tolist() == [0, FLAG_ERROR]
    v1_3 = tmp_path / "v13.trc"
    v1_3.write_text(";$FILEVERSION=1.3\n;$STARTTIME=45000.5\n"
                    "     1)      1059.900 1  Rx        0300 -  2    00 00\n"
                    "     2)      1349.222 2  Error     0008 -  4    00 19 08 08\n")
    assert read_frames(v1_3, channel="2")["flags"].tolist() == [FLAG_ERROR]


def test_empty_and_unknown_files(tmp_path):
    empty = tmp_path / "e.log"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="e.log: empty file"):
        read_frames(empty)
    junk = tmp_path / "j.csv"
    junk.write_text("hello,world\n")
    with pytest.raises(InputError, match=r"j.csv: unrecognised CAN log format \(tried: .*candump"):
        read_frames(junk)
    with pytest.raises(InputError, match="unknown format 'nope'"):
        read_frames(junk, fmt="nope")


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real captures not found at {DATA}")


@pytest.mark.realdata
@needs_data
@pytest.mark.parametrize(
    "rel, fmt, n, labels",
    [
        ("road/fuzzing_attack_1.csv", "road", 49_342, {"fuzzing": 592}),
        ("road/correlated_signal_attack_2.csv", "road", 69_657, {"spoofing": 2_141}),
        ("road/correlated_signal_attack_2_masquerade.csv", "road", 67_517, {"masquerade": 2_141}),
        ("crysys/benign-48.csv", "crysys", 34_894, {}),
        ("crysys/S-1-1-benign.log", "candump", 17_935, {}),
    ],
)
def test_real_captures(rel, fmt, n, labels):
    path = DATA / rel
    assert detect_format(path) == fmt
    f = read_frames(path)
    assert len(f) == n
    got = {k: int((f["label"] == LABEL_CODE[k]).sum()) for k in LABEL_CODE if k != "benign"}
    assert {k: v for k, v in got.items() if v} == labels


@pytest.mark.realdata
@needs_data
def test_crysys_malicious_labels_mark_the_0x410_attack():
    f = read_frames(DATA / "crysys" / "S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log")
    attacked = f[f["label"] != 0]
    assert len(f) == 17_935 and len(attacked) > 0
    assert set(attacked["can_id"].tolist()) == {0x410}
    assert set(attacked["label"].tolist()) == {UNKNOWN}
    assert 12.09 <= attacked["ts"].min() and attacked["ts"].max() <= 17.992


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes(
        (ROAD_HEAD + ROAD_OK + ROAD_OK.replace("Benign", "Fuzzing")).replace("\n", "\r\n").encode()
    )
    f = read_frames(path)
    assert f["label"].tolist() == [0, LABEL_CODE["fuzzing"]]
    assert f["data"][0, 7] == 0xFF


# -- the compiled fast path for plain candump and python-can CSV -------------------


def general(fmt: str, path: Path) -> np.ndarray:
    """What the vectorized reader makes of ``path``, with the fast path off."""
    from replay.readers import _fast, candump, pycsv

    mod, name = (candump, "candump") if fmt == "candump" else (pycsv, "pycsv")
    fast = getattr(_fast, name)
    try:
        setattr(_fast, name, lambda *a: None)
        out = mod.read(str(path), path.read_bytes())
        return out[0] if isinstance(out, tuple) else out  # (frames, channels)
    finally:
        setattr(_fast, name, fast)


@pytest.mark.parametrize("fmt", ["candump", "csv"])
@pytest.mark.parametrize("ending", ["\n", "\r\n", "none"])
def test_fast_path_reads_exactly_like_the_general_reader(tmp_path, fmt, ending):
    from replay.readers import _fast

    frames = random_frames(3000, seed=11, rtr=False)
    frames["label"] = 0
    frames["ts"][::97] = np.round(frames["ts"][::97])  # whole seconds, no fraction digits
    path = tmp_path / ("x.log" if fmt == "candump" else "x.csv")
    write_frames(path, frames, fmt)
    text = path.read_text()
    if ending == "\r\n":
        text = text.replace("\n", "\r\n")
    elif ending == "none":
        text = text.rstrip("\n")
    path.write_bytes(text.encode())
    data = path.read_bytes()
    fast = _fast.candump(data) if fmt == "candump" else _fast.pycsv(data, _fast_header())
    assert fast is not None, "a plain file must take the fast path"
    np.testing.assert_array_equal(fast, general(fmt, path))
    np.testing.assert_array_equal(read_frames(path, fmt), fast)


def _fast_header() -> bytes:
    from replay.readers.pycsv import HEADER

    return HEADER.encode()


@pytest.mark.parametrize(
    "fmt,text",
    [
        ("candump", "(1.5) can0 123#R\n"),  # remote frame
        ("candump", "(1.5) can0 123#0102 1 fuzzing\n"),  # label columns
        ("candump", " (1.5) can0 123#0102\n"),  # leading space
        ("candump", "(1.5) can0 123#010\n"),  # odd hex: the general reader names the line
        ("csv", "timestamp,arbitration_id,extended,remote,error,dlc,data\n1.5,0x123,0,1,0,2,AQI=\n"),
        ("csv", "timestamp,arbitration_id,extended,remote,error,dlc,data\n1.5,0x123,0,0,0,2,AQ=I\n"),
    ],
)
def test_anything_unusual_leaves_the_fast_path(fmt, text):
    from replay.readers import _fast

    data = text.encode()
    out = _fast.candump(data) if fmt == "candump" else _fast.pycsv(data, _fast_header())
    assert out is None
