"""bench/run.py runs end to end on a tiny corpus (a benchmark, so no speed asserts)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench_scripts import cells, run_bench, table_lines
from tests.conftest import require_tool
from tests.postgres import require_postgres

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "run.py"


def _bench(tmp_path: Path, receivers: str) -> list[dict[str, str]]:
    """Run the bench on 5 CT and 10 small instances, once each; its table's rows."""
    output = run_bench(
        "run.py",
        tmp_path,
        *("--ct", "5", "--small", "10", "--repeat", "1", "--receivers", receivers),
        timeout=180,
    )
    lines = table_lines(output)
    header = cells(lines[0])
    assert header[:3] == ["corpus", "assocs", "receiver"]
    assert header[-3:] == ["lag ms median", "lag ms p99", "drain ms"]
    assert not list((tmp_path / "work").iterdir())  # every scratch folder removed
    return [dict(zip(header, cells(line), strict=True)) for line in lines[1:]]


def test_receive_bench_prints_both_modes_with_ratios_and_lag(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("storescp")
    rows = _bench(tmp_path, "storescp,minimal,adapter")
    assert {"adapter/storescp", "adapter/minimal", "adapter/orthanc"} <= set(rows[0])
    assert {(r["corpus"], r["assocs"], r["receiver"]) for r in rows} == {
        (corpus, assocs, receiver)
        for corpus in ("ct", "small")
        for assocs in ("1", "4")
        for receiver in ("storescp", "minimal", "adapter")
    }
    for row in rows:
        is_adapter = row["receiver"] == "adapter"
        for column in ("adapter/storescp", "adapter/minimal", "lag ms median", "lag ms p99"):
            assert (row[column] != "") == is_adapter, row
        assert row["adapter/orthanc"] == ""  # left out
        assert float(row["inst/s"]) > 0 and float(row["MB/s"]) >= 0


def test_receive_bench_measures_the_adapter_on_a_postgresql_ledger(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("storescp")
    require_postgres()
    rows = _bench(tmp_path, "storescp,adapter-pg")  # the SQLite adapter: the test above
    assert [(r["corpus"], r["assocs"], r["receiver"]) for r in rows] == [
        (corpus, assocs, receiver)
        for corpus in ("ct", "small")
        for assocs in ("1", "4")
        for receiver in ("storescp", "adapter-pg")
    ]
    for row in rows:
        is_adapter = row["receiver"] != "storescp"
        for column in ("adapter/storescp", "lag ms median", "lag ms p99", "drain ms"):
            assert (row[column] != "") == is_adapter, row
        assert row["adapter/minimal"] == ""  # left out


def _load_run(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/run.py as a module (it is a script, not in a package)."""
    spec = importlib.util.spec_from_file_location("bench_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_missing_orthanc_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("storescu")
    run = _load_run(monkeypatch)
    monkeypatch.setattr(run.orthanc, "find_binary", lambda: None)
    argv = ["run.py", "--corpus", str(tmp_path), "--receivers", "orthanc,adapter"]
    monkeypatch.setattr(sys, "argv", argv)
    assert run.main() == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: Orthanc not found") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # failed before building any corpus


def test_missing_postgresql_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("storescu")
    run = _load_run(monkeypatch)
    monkeypatch.setattr(run.pgcluster, "available", lambda: False)
    argv = ["run.py", "--corpus", str(tmp_path), "--receivers", "adapter,adapter-pg"]
    monkeypatch.setattr(sys, "argv", argv)
    assert run.main() == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: PostgreSQL is not installed") and err.count("\n") == 1
    assert "leave adapter-pg out with --receivers" in err
    assert not list(tmp_path.iterdir())  # failed before building any corpus
