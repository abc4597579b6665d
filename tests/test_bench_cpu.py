"""bench/cpu.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "cpu.py"


def test_cpu_bench_splits_the_adapters_cpu_and_profiles_its_scp(tmp_path: Path) -> None:
    require_tool("storescu")
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "corpus")),
            *("--workdir", str(tmp_path / "work"), "--count", "100", "--repeat", "1"),
            *("--receivers", "adapter", "--profile", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| adapter |")
    ]
    parts = {part: float(ms) for _, part, ms in rows if not part.startswith("**")}
    assert "SCP process (receive, check, write, fsync, answer)" in parts
    assert {"storescu", "watcher (watchdog threads)"} <= set(parts)
    assert any(part.startswith("intake: ") for part in parts)
    assert all(ms >= 0 for ms in parts.values())
    profile = done.stdout.split("functions in most GIL-holding samples")[1]
    assert profile.count("| `") == 5
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
