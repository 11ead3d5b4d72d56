"""Reader throughput: canwatch's readers vs python-can's ``can.LogReader``.

Builds one file of N random frames per format with ``replay.writers`` in a temp
dir, reads each with ``replay.readers.read_frames`` (median of R runs) and,
where python-can can read the format, iterates ``can.LogReader`` over it too.
Prints a Markdown table; ``--json OUT`` also writes the numbers.

    .venv/bin/python bench/readers.py [--frames 1000000] [--repeat 3] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/readers.py`)
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import can
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import listed, positive_int, say
from bench.common.report import machine_line, markdown_table, write_results
from detector.core.schema import EXTENDED_FLAG, FRAME_DTYPE
from replay.readers import read_frames
from replay.writers import write_frames

#: format -> (suffix, python-can reads it)
FILES = {
    "candump": (".log", True),
    "csv": (".csv", True),
    "road": (".csv", False),
    "hcrl": (".csv", False),
    "crysys": (".txt", False),
    "cantt": (".csv", False),
    "hcrl-txt": (".txt", False),
    "asc": (".asc", True),
    "trc": (".trc", True),
    "blf": (".blf", True),
}


def make_frames(n: int, seed: int = 1) -> np.ndarray:
    """Bus-like traffic: 60 standard ids plus some extended, mostly dlc 8."""
    rng = np.random.default_rng(seed)
    f = np.zeros(n, FRAME_DTYPE)
    f["ts"] = 1.7e9 + np.cumsum(rng.exponential(0.0005, n))
    ids = rng.choice(np.arange(0x100, 0x100 + 60), n)
    ext = rng.random(n) < 0.05
    f["can_id"] = np.where(ext, (ids << 16) | EXTENDED_FLAG, ids)
    f["dlc"] = np.where(rng.random(n) < 0.8, 8, rng.integers(0, 9, n))
    data = rng.integers(0, 256, (n, 8)).astype(np.uint8)
    data[np.arange(8) >= f["dlc"][:, None]] = 0
    f["data"] = data
    return f


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def python_can_count(path: Path) -> int:
    with can.LogReader(path) as reader:
        return sum(1 for _ in reader)


def bench(n: int, repeat: int, pc_repeat: int, formats: list[str]) -> list[dict]:
    frames = make_frames(n)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            suffix, pc_ok = FILES[fmt]
            path = Path(tmp) / f"bench_{fmt}{suffix}"
            t0 = time.perf_counter()
            write_frames(path, frames, fmt)
            write_s = time.perf_counter() - t0
            assert len(read_frames(path, fmt)) == n
            ours = median_time(lambda p=path, f=fmt: read_frames(p, f), repeat)
            row = {
                "format": fmt, "frames": n, "file_mb": round(path.stat().st_size / 1e6, 1),
                "write_s": round(write_s, 2), "canwatch_s": round(ours, 4),
                "canwatch_fps": round(n / ours), "python_can_s": None, "python_can_fps": None,
            }  # fmt: skip
            if pc_ok:
                theirs = median_time(lambda p=path: python_can_count(p), pc_repeat)
                row["python_can_s"] = round(theirs, 3)
                row["python_can_fps"] = round(n / theirs)
            results.append(row)
            say(f"  {fmt}: {row['canwatch_fps']:,} frames/s")
    return results


def markdown(rows: list[dict]) -> str:
    body = []
    for r in rows:
        pc = r["python_can_fps"]
        body.append((r["format"], r["file_mb"], r["write_s"], f"{r['canwatch_fps']:,}",
                     f"{pc:,}" if pc else "n/a", f"{r['canwatch_fps'] / pc:.1f}x" if pc else "-"))  # fmt: skip
    headers = ("format", "file MB", "write s", "canwatch frames/s", "python-can frames/s", "speed-up")
    return markdown_table(headers, body) + f"\n\n{machine_line()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=positive_int, default=1_000_000)
    ap.add_argument("--repeat", type=positive_int, default=3,
                    help="runs per canwatch reader (median)")
    ap.add_argument("--pc-repeat", type=int, default=3, help="runs per python-can reader")
    ap.add_argument("--formats", type=listed(str, FILES), default=",".join(FILES),
                    help="comma-separated subset")  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    rows = bench(args.frames, args.repeat, args.pc_repeat, args.formats)
    print(markdown(rows))
    write_results(args.json, {"frames": args.frames, "results": rows}, [
        (f"{r['format']} frames/s, canwatch (python-can)",
         f"{r['canwatch_fps']:,}" + (f" ({r['python_can_fps']:,})" if r["python_can_fps"] else ""))
        for r in rows if r["format"] in ("candump", "csv")
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
