"""bench/stow.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "stow.py"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_stow_bench_prints_both_senders_with_the_ratio_to_dimse_and_the_drain(
    tmp_path: Path,
) -> None:
    # Small instances only, and not curl: each sender starts an adapter of its own (about
    # 3 s), and a file that beats the watch on its new series folder waits for the 2 s settle.
    require_tool("storescu")
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "corpus")),
            *("--workdir", str(tmp_path / "work"), "--ct", "0", "--small", "5", "--repeat", "1"),
            *("--batch", "2", "--senders", "dimse,stow"),  # three requests, one connection
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]  # no |---|
    header = _cells(lines[0])
    assert header[:3] == ["corpus", "sender", "batch"]
    assert {"inst/s", "vs dimse", "client encode s", "drain ms"} <= set(header)
    rows = [dict(zip(header, _cells(line), strict=True)) for line in lines[1:]]
    assert [(r["corpus"], r["sender"], r["batch"], r["instances"]) for r in rows] == [
        ("small", "dimse", "", "5"),
        ("small", "stow", "2", "5"),
    ]
    for row in rows:
        assert (row["vs dimse"] != "") == (row["sender"] != "dimse"), row
        assert (row["client encode s"] != "") == (row["sender"] == "stow"), row
        assert float(row["inst/s"]) > 0 and row["drain ms"] != ""
    assert "before the timing" in done.stdout  # says what the client's time holds
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
