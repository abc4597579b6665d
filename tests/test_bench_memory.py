"""bench/memory.py runs end to end on a small instance (a benchmark, so no memory asserts)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "memory.py"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_memory_bench_prints_peak_rss_and_rate_for_an_intact_instance(tmp_path: Path) -> None:
    require_tool("storescu")
    corpus = tmp_path / "corpus"
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--corpus", str(corpus)),
            *("--workdir", str(tmp_path / "work"), "--megabytes", "20"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]  # no |---|
    assert len(lines) == 2, done.stdout
    row = dict(zip(_cells(lines[0]), _cells(lines[1]), strict=True))
    assert row["dataset sha256"] == "same"
    assert float(row["peak RSS MB"]) >= float(row["adapter peak MB"]) > 0
    assert float(row["MB/s"]) > 0
    assert [p.name for p in corpus.iterdir()] == [f"large-{20 << 20}"]  # cached like the others
    assert not list((tmp_path / "work").iterdir())  # the scratch folder removed
