"""bench/stow.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

from pathlib import Path

from tests.bench_scripts import cells, run_bench, table_lines
from tests.conftest import require_tool


def test_stow_bench_prints_both_senders_with_the_ratio_to_dimse_and_the_drain(
    tmp_path: Path,
) -> None:
    # Small instances only, and not curl: each sender starts an adapter of its own (about
    # 3 s), and a file that beats the watch on its new series folder waits for the 2 s settle.
    require_tool("storescu")
    output = run_bench(
        "stow.py",
        tmp_path,
        *("--ct", "0", "--small", "5", "--repeat", "1"),
        *("--batch", "2", "--senders", "dimse,stow"),  # three requests, one connection
    )
    lines = table_lines(output)
    header = cells(lines[0])
    assert header[:3] == ["corpus", "sender", "batch"]
    assert {"inst/s", "vs dimse", "client encode s", "drain ms"} <= set(header)
    rows = [dict(zip(header, cells(line), strict=True)) for line in lines[1:]]
    assert [(r["corpus"], r["sender"], r["batch"], r["instances"]) for r in rows] == [
        ("small", "dimse", "", "5"),
        ("small", "stow", "2", "5"),
    ]
    for row in rows:
        assert (row["vs dimse"] != "") == (row["sender"] != "dimse"), row
        assert (row["client encode s"] != "") == (row["sender"] == "stow"), row
        assert float(row["inst/s"]) > 0 and row["drain ms"] != ""
    assert "before the timing" in output  # says what the client's time holds
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
