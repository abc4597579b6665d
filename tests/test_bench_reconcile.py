"""bench/reconcile_scale.py runs end to end on a small spool (a benchmark, so no speed asserts)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "reconcile_scale.py"


def test_reconcile_scale_prints_the_table_for_a_small_spool(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    options = ["--files", "1200", "--orphans", "30", "--folder", str(folder)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Reconcile at 1,200 recorded files and 30 orphans")
    table = "\n".join(lines)
    assert "| `find` over the spool (reference) |" in table
    for name in ("first pass", "second pass"):
        assert f"| reconcile, {name} |" in table and "30 orphans reported" in table
    # Three passes reported each orphan; intake's queue holds it once.
    assert "| paths in intake's queue after three passes | 30 |" in table
    assert len(list((folder / "spool").rglob("*.dcm"))) == 1230
