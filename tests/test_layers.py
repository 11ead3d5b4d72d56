"""The import layers of pyproject.toml's [tool.importlinter] hold, and `lint-imports`
refuses a tree that breaks them (so `make test` would fail on such an import)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def lint(root: Path) -> subprocess.CompletedProcess:
    # The copy under test must be the `detector` and `replay` grimp finds first.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    for pkg in ("detector", "replay"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    out = lint(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" in out.stdout and "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("detector/features/columns.py", "import detector.service.detector", "reads like its pipeline"),
        ("detector/service/watchdog.py", "import detector.cli", "reads like its pipeline"),
        ("detector/model/pipeline.py", "import detector.transport.kafka_io", "never touches Kafka"),
        ("replay/simulator.py", "import detector.model.platform", "replay"),
        ("detector/service/polling.py", "import pandas", "never loads pandas"),
        ("detector/model/pipeline.py", "import detector.analysis", "never loads pandas"),
    ],
)
def test_an_import_against_the_layers_fails_the_lint(
    tree: Path, module: str, bad_import: str, contract: str
) -> None:
    path = tree / module
    original = path.read_text()
    path.write_text(original + f"\n{bad_import}  # against the layers\n")
    try:
        out = lint(tree)
    finally:
        path.write_text(original)
    assert out.returncode != 0
    # The report names the broken contract, then the offending import with its line.
    broken = " ".join(out.stdout.partition("Broken contracts")[2].split())
    assert contract in broken, out.stdout
    assert f"{module[:-3].replace('/', '.')} -> {bad_import.split()[-1]}" in broken, out.stdout
