"""bench/claims.py runs end to end on a tiny ledger (a benchmark, so no speed asserts)."""

import subprocess
import sys
from pathlib import Path

from tests.postgres import require_postgres

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "claims.py"


def test_claims_bench_prints_each_ledger_and_locking_with_no_double_claim(tmp_path: Path) -> None:
    require_postgres()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--groups", "30", "--claimers", "2", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("| sqlite", "one writer (SQLite)", "2"),
        ("| postgresql", "row locks", "2"),
        ("| postgresql", "one writer lock", "2"),
    ]
    for row in rows:
        assert float(row[3].replace(",", "")) > 0
        assert row[4] == "30"  # each group claimed by one claimer, found taken by the other
        assert row[5] == "none |"
