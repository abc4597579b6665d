"""bench/ledger_scale.py runs end to end on a tiny ledger (a benchmark, so no speed asserts)."""

import importlib.util
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres import require_postgres

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "ledger_scale.py"
TINY = ["--instances", "2000", "--per-study", "50", "--repeat", "1"]
MEASURES = (
    "ingest",
    "later moves",
    "connect and `SELECT 1`",
    "`dicom-adapter status`",
    "`dicom-adapter status --json`",
    "`SELECT * FROM studies`",
    "cookbook: stuck studies",
    "rows: instances, events",
    "ledger size on disk",
)


def _table(tmp_path: Path, *options: str) -> dict[str, list[str]]:
    """Run the bench; its table as {measure: [cell per backend]}, the header under ``""``."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *options],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Ledger at 2,000 instances")
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in lines
        if line.startswith("| ")
    ]
    table = {name: cells for name, *cells in rows}
    table[""] = table.pop("measure")
    for measure in MEASURES:
        assert any(name.startswith(measure) for name in table), measure
    return table


def test_ledger_scale_prints_the_table_for_a_small_sqlite_ledger(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    table = _table(tmp_path, "--backend", "sqlite", "--folder", str(folder))
    assert len(table[""]) == 1 and table[""][0].startswith("SQLite ")
    with sqlite3.connect(folder / "ledger.db") as connection:
        counts = dict(connection.execute("SELECT state, count(*) FROM instances GROUP BY state"))
        events = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    connection.close()
    assert sum(counts.values()) == 2000
    assert set(counts) == {"received", "claimed", "submitted", "reclaimable", "reclaimed"}
    assert events > 2000  # a received event per row, then one per later move
    assert table["rows: instances, events"] == [f"2,000, {events:,}"]


def test_ledger_scale_puts_postgresql_beside_sqlite(tmp_path: Path) -> None:
    require_postgres()
    table = _table(tmp_path)  # --backend both is the default (make bench-ledger)
    sqlite, postgresql = table[""]
    assert sqlite.startswith("SQLite ") and postgresql.startswith("PostgreSQL ")
    rows = table["rows: instances, events"]
    assert rows[0] == rows[1] and rows[0].startswith("2,000, ")  # the same ledger on both
    assert table["ledger size on disk"][1].endswith("(pg_database_size)")
    for name, cells in table.items():
        assert all(cell for cell in cells), name


def test_missing_postgresql_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("bench_ledger_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_ledger_scale", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.pgcluster, "available", lambda: False)
    folder = tmp_path / "bench"
    with pytest.raises(SystemExit) as exited:
        module.main([*TINY, "--folder", str(folder)])
    assert str(exited.value).startswith("Error: PostgreSQL is not installed")
    assert "--backend sqlite" in str(exited.value)
    assert not folder.exists()  # failed before building anything
