"""A platform's DBC names the messages and signals in incident evidence
(``detector.core.dbc``), read through cantools from real opendbc files and hand-written
ones."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.core.dbc import opendbc_dir, resolve_dbc, signal_book
from detector.core.fd import lane_ids
from detector.features.columns import N_FEATURES, F, Rows
from detector.incidents.evidence import describe
from detector.model.pipeline import ScoredRows
from detector.model.platform import N_EVIDENCE
from replay.profiles import load_profile, signal_mask

#: A CAN FD message whose signal lies in its second lane, and an extended id.
HAND_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 416 BODY_FD: 64 ECU
 SG_ WHEEL_SPEED : 80|16@1+ (0.01,0) [0|655.35] "km/h" ECU
 SG_ CRC : 7|8@0+ (1,0) [0|255] "" ECU

BO_ 2566844672 ENGINE_TEMPS: 8 ECU
 SG_ COOLANT_TEMP : 40|8@1+ (1,-40) [-40|215] "degC" ECU
"""


@pytest.mark.parametrize("platform", ["cusw", "pacifica", "giorgio", "aee2010", "omega"])
def test_signal_bytes_are_where_the_simulator_packs_them(platform: str) -> None:
    """Both byte orders: every DBC signal the simulator sends occupies the bits the
    book says (its masks are worked out apart from the simulator's packing)."""
    book = signal_book(str(resolve_dbc(load_fleet().platform_dbc[platform])))
    checked = 0
    for msg in load_profile(platform).messages:
        if not msg.documented or msg.fd:
            continue
        _, _, signals = book.messages[msg.frame_id]
        masks = dict(signals)
        for sig in msg.signals:
            np.testing.assert_array_equal(masks[sig.name][:8], signal_mask(sig), err_msg=sig.name)
            checked += 1
    assert checked >= 20


def test_a_dbc_is_found_by_path_or_by_its_opendbc_name(tmp_path: Path) -> None:
    own = tmp_path / "own.dbc"
    own.write_text(HAND_DBC)
    assert resolve_dbc(str(own)) == own
    assert resolve_dbc("chrysler_cusw.dbc") == opendbc_dir() / "chrysler_cusw.dbc"
    assert resolve_dbc("") is None and resolve_dbc("no_such_car.dbc") is None


def far_row(can_id: int, byte: int, value: int) -> ScoredRows:
    """One row whose byte ``byte`` read ``value``, outside its learned range 10-20."""
    X = np.zeros((1, N_FEATURES))
    X[0, F["out_of_range"]] = 1.0
    rows = Rows(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([can_id], np.uint32),
                np.array([50]), np.zeros(1, np.int8), X,
                far=np.array([byte | (value << 3) | (10 << 11) | (20 << 19)]))  # fmt: skip
    zeros = np.zeros(1)
    return ScoredRows("p", 1, rows, zeros, np.zeros((1, N_EVIDENCE)), ["v"], ["b"], zeros)


def test_evidence_names_the_message_and_signal_of_a_byte(tmp_path: Path) -> None:
    """An extended id's byte, and an FD lane's (bytes 8-15: its byte 2 is the frame's
    byte 10), are named by the carmaker's own DBC."""
    own = tmp_path / "own.dbc"
    own.write_text(HAND_DBC)
    sc = far_row(0x98FEF100, 5, 250)
    sc.dbc = str(own)
    assert describe(sc, 0, "out_of_range", 1.0) == (
        "0x18FEF100x (ENGINE_TEMPS): payload byte outside its learned range in 100% of "
        "frames; byte 5 [COOLANT_TEMP] read 250 (0xFA), learned range 10-20"
    )
    lane = far_row(int(lane_ids(0x1A0, 1)), 2, 99)
    lane.dbc = str(own)
    text = describe(lane, 0, "out_of_range", 1.0)
    assert text.startswith("0x1A0 FD bytes 8-15 (BODY_FD): ")
    assert "byte 2 [WHEEL_SPEED] read 99" in text


def test_a_dbc_that_cannot_be_read_leaves_the_evidence_unnamed(tmp_path: Path, caplog) -> None:
    broken = tmp_path / "broken.dbc"
    broken.write_bytes(b"BO_ 416 \xff\xfe not a DBC at all")
    sc = far_row(0x1A0, 3, 99)
    plain = describe(sc, 0, "out_of_range", 1.0)
    sc.dbc = str(broken)
    with caplog.at_level(logging.WARNING, logger="detector.core.dbc"):
        assert describe(sc, 0, "out_of_range", 1.0) == plain
    assert "cannot be read" in caplog.text
