"""bench/export.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

from pathlib import Path

from tests.bench_scripts import cells, run_bench, table_lines
from tests.conftest import require_tool


def test_export_bench_prints_both_senders_and_the_ratio(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("storescp")
    output = run_bench(
        "export.py",
        tmp_path,
        *("--ct", "5", "--small", "10", "--repeat", "1"),
    )
    lines = table_lines(output)
    header = cells(lines[0])
    assert header[:2] == ["corpus", "sender"]
    assert {"inst/s", "MB/s", "vs storescu"} <= set(header)
    rows = [dict(zip(header, cells(line), strict=True)) for line in lines[1:]]
    assert [(r["corpus"], r["sender"], r["instances"]) for r in rows] == [
        ("ct", "storescu", "5"),
        ("ct", "adapter", "5"),
        ("small", "storescu", "10"),
        ("small", "adapter", "10"),
    ]
    for row in rows:
        assert (row["vs storescu"] != "") == (row["sender"] == "adapter"), row
        assert float(row["inst/s"]) > 0
    assert "running -> succeeded" in output  # says how the adapter was timed
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
