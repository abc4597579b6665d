"""bench/page_scale.py runs end to end on a tiny ledger (a benchmark, so no speed asserts)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "page_scale.py"
TINY = ["--instances", "2000", "--requests", "2", "--warmup", "1", "--repeat", "1"]
REQUESTS = ("`GET /`", "`GET /studies/<uid>`", "`GET /healthz`")
READS = (
    "`health()`",
    "- of which: C-ECHO to itself",
    "`Processing.oldest_open_group`",
    "`Ledger.recent_studies(10)`",
    "`Dashboard.received_per_minute`",
    "`Dashboard.counts_by_ae`",
    "`Dashboard.failed_tasks`",
    "`Dashboard.undelivered`",
    "`Dashboard.quarantined`",
    "`Dashboard.study`",
)


def _rows(stdout: str) -> dict[str, list[str]]:
    """The tables' rows as {first cell: the other cells}, headers included."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("| ")
    ]
    return {name: cells for name, *cells in rows}


def test_page_bench_times_the_pages_of_a_running_adapter_and_each_read(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--folder", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Status page at 2,000 instances, SQLite ")
    rows = _rows(done.stdout)
    for request in REQUESTS:
        [cells] = [cells for name, cells in rows.items() if name.startswith(request)]
        assert all(cells[:3]), request  # median, p95, max
        assert cells[3] in ("200", "503") if request == "`GET /healthz`" else cells[3] == "200"
    for read in READS:
        assert any(name.startswith(read) for name in rows), read
    assert "failed exports: 1," in done.stdout  # an undelivered file for the page to list
    assert "rejected 1" in done.stdout  # and a quarantined one
    log = (folder / "adapter.log").read_text()
    assert "HTTP listening on" in log and "stopping: SIGTERM" in log
