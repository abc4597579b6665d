"""bench/ledger_scale.py runs end to end on a tiny ledger (a benchmark, so no speed asserts)."""

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "ledger_scale.py"


def test_ledger_scale_prints_the_table_for_a_small_ledger(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    options = ["--instances", "2000", "--per-study", "50", "--repeat", "1", "--folder", str(folder)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Ledger at 2,000 instances")
    assert "| measure | figure |" in lines
    table = "\n".join(lines)
    for name in ("ingest", "`dicom-adapter status`", "`dicom-adapter status --json`"):
        assert f"| {name}" in table
    assert "| `SELECT * FROM studies` |" in table
    assert "| ledger file size |" in table
    with sqlite3.connect(folder / "ledger.db") as connection:
        counts = dict(connection.execute("SELECT state, count(*) FROM instances GROUP BY state"))
        events = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    connection.close()
    assert sum(counts.values()) == 2000
    assert set(counts) == {"received", "claimed", "submitted", "reclaimable", "reclaimed"}
    assert events > 2000  # a received event per row, then one per later move
