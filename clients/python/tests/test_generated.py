"""The checked-in stubs are exactly what generate.py makes from proto/credits/v1 today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHECKED_IN = HERE / "src" / "credit_sidecar" / "pb"


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_checked_in_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(HERE / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = tmp_path / "pb"
    assert _files(fresh) == _files(CHECKED_IN), "files added or removed: run python clients/python/generate.py"
    stale = [str(p) for p in sorted(_files(fresh)) if not filecmp.cmp(fresh / p, CHECKED_IN / p, shallow=False)]
    assert not stale, f"stale stubs {stale}: run python clients/python/generate.py"
