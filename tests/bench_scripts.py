"""Running a bench script end to end on a tiny corpus, and reading the tables it prints.

Each ``tests/test_bench_*.py`` runs its script as a user would (a process of
its own, ``--corpus`` and ``--workdir`` under the test's folder) and checks
the Markdown table it prints, never the speed.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, tmp_path: Path, *args: str, timeout: float = 120) -> str:
    """Run ``bench/<script>`` with ``args``; its standard output (it must exit 0)."""
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / script), "--corpus", str(tmp_path / "corpus")),
            *("--workdir", str(tmp_path / "work"), *args),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def table_lines(output: str) -> list[str]:
    """The rows of the Markdown tables in ``output``, header rows included, no ``|---|``."""
    return [line for line in output.splitlines() if line.startswith("| ")]


def cells(line: str) -> list[str]:
    """One table row's cells, stripped."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
