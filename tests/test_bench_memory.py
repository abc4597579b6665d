"""bench/memory.py runs end to end on a small instance (a benchmark, so no memory asserts)."""

from pathlib import Path

from tests.bench_scripts import cells, run_bench, table_lines
from tests.conftest import require_tool


def test_memory_bench_prints_peak_rss_and_rate_for_an_intact_instance(tmp_path: Path) -> None:
    require_tool("storescu")
    corpus = tmp_path / "corpus"
    output = run_bench(
        "memory.py",
        tmp_path,
        *("--megabytes", "20"),
    )
    lines = table_lines(output)
    assert len(lines) == 2, output
    row = dict(zip(cells(lines[0]), cells(lines[1]), strict=True))
    assert row["dataset sha256"] == "same"
    assert float(row["peak RSS MB"]) >= float(row["adapter peak MB"]) > 0
    assert float(row["MB/s"]) > 0
    assert [p.name for p in corpus.iterdir()] == [f"large-{20 << 20}"]  # cached like the others
    assert not list((tmp_path / "work").iterdir())  # the scratch folder removed
