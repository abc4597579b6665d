"""bench/export.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "export.py"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_export_bench_prints_both_senders_and_the_ratio(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("storescp")
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "corpus")),
            *("--workdir", str(tmp_path / "work"), "--ct", "5", "--small", "10", "--repeat", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]  # no |---|
    header = _cells(lines[0])
    assert header[:2] == ["corpus", "sender"]
    assert {"inst/s", "MB/s", "vs storescu"} <= set(header)
    rows = [dict(zip(header, _cells(line), strict=True)) for line in lines[1:]]
    assert [(r["corpus"], r["sender"], r["instances"]) for r in rows] == [
        ("ct", "storescu", "5"),
        ("ct", "adapter", "5"),
        ("small", "storescu", "10"),
        ("small", "adapter", "10"),
    ]
    for row in rows:
        assert (row["vs storescu"] != "") == (row["sender"] == "adapter"), row
        assert float(row["inst/s"]) > 0
    assert "running -> succeeded" in done.stdout  # says how the adapter was timed
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
