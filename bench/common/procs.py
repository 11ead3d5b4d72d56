"""CPU and RSS accounting of processes and threads (Linux /proc), and JSON child processes.

A measured part runs in a child process of its own where it must not see
what the parent has imported, allocated or compiled; it answers with one JSON
line on stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()  # the name in () may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process, all threads, children excluded."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds of a live process."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            cpu = _stat_cpu(task / "stat")
            if int(task.name) == pid:
                main += cpu
            else:
                other += cpu
    return main, other


def rss(pid: int | str = "self") -> int:
    """Resident set size in bytes (``/proc/<pid>/statm``: the same count as VmRSS)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def malloc_trim() -> bool:
    """Hand glibc's free heap back to the system: RSS then shows what is still held."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def stop(proc: subprocess.Popen | None, timeout_s: float = 60.0) -> None:
    """SIGTERM by PID (the service's clean shutdown), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def run_json(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a child to its end; its last stdout line is its JSON answer."""
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} ... failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
