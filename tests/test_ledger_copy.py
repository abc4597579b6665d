"""``dicom-adapter ledger copy --to URL``: a box's SQLite ledger into an empty PostgreSQL one.

A real adapter fills a SQLite ledger (instances, a job, events, a node),
the copy goes into a throwaway PostgreSQL database, and the adapter then
runs on the copy: every row is there with its id, and new rows follow on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from ledger.db import make_engine
from ledger.models import Base
from ledger.states import TaskKind
from tests.conftest import RunningAdapter, wait_for, write_config
from tests.dcmtk import storescu
from tests.dicom import make_study
from tests.postgres import Cluster
from tests.test_cli import cli


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as connection:
        found = {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }
    engine.dispose()
    return found


def test_a_ledger_copied_to_postgresql_carries_on_where_it_was(
    start_adapter: Callable[[Path], RunningAdapter],
    postgres_cluster: Cluster,
    tmp_path: Path,
    port: int,
) -> None:
    output = tmp_path / "published"
    path = write_config(
        tmp_path,
        port,
        aes=f"[ae:DICOMADAPTER]\nprocessor = folder\noutput = {output}\ntimeout = 0.5\n",
    )
    running = start_adapter(path)
    assert storescu(port, make_study(tmp_path / "first", 3)).returncode == 0
    wait_for(lambda: [j.state for j in running.adapter.tasks.listing()] == ["succeeded"], 30)
    running.adapter.stop()
    before = counts(running.config.ledger.url)
    assert before["instances"] == 3 and before["tasks"] == 1 and before["nodes"] == 1

    url = postgres_cluster.database()
    copied = cli("ledger", "copy", "--to", url, "--config", str(path))
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.endswith(
        f"copied into {url}, every count checked: set [ledger] url to it\n"
    )
    assert counts(url) == before
    again = cli("ledger", "copy", "--to", url, "--config", str(path))
    assert again.returncode == 1 and "the target ledger is not empty" in again.stderr

    path.write_text(path.read_text().replace("url = sqlite:///ledger.db", f"url = {url}"))
    moved = start_adapter(path)
    assert storescu(port, make_study(tmp_path / "second", 2)).returncode == 0
    wait_for(lambda: len(moved.adapter.tasks.listing(TaskKind.PROCESS)) == 2, timeout=30)
    ids = sorted(row.id for row in moved.rows())
    assert len(ids) == 5 and ids == sorted(set(ids))  # the new rows follow the copied ids
    [first, second] = moved.adapter.tasks.listing(TaskKind.PROCESS)
    assert second.id > first.id
