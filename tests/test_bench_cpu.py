"""bench/cpu.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

from pathlib import Path

from tests.bench_scripts import cells, run_bench, table_lines
from tests.conftest import require_tool


def test_cpu_bench_splits_the_adapters_cpu_and_profiles_its_scp(tmp_path: Path) -> None:
    require_tool("storescu")
    output = run_bench(
        "cpu.py",
        tmp_path,
        *("--count", "100", "--repeat", "1", "--receivers", "adapter", "--profile", "5"),
        timeout=180,
    )
    rows = [cells(line) for line in table_lines(output) if line.startswith("| adapter |")]
    parts = {part: float(ms) for _, part, ms in rows if not part.startswith("**")}
    assert "SCP process (receive, check, write, fsync, answer)" in parts
    assert {"storescu", "watcher (watchdog threads)"} <= set(parts)
    assert any(part.startswith("intake: ") for part in parts)
    assert all(ms >= 0 for ms in parts.values())
    profile = output.split("functions in most GIL-holding samples")[1]
    assert profile.count("| `") == 5
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
