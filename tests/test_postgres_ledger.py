"""The whole path on a PostgreSQL ledger: receive, record, process, reclaim, ``status``.

One node for now (several nodes on one ledger come with leases).  The
adapter runs on a throwaway PostgreSQL cluster's database, a real storescu
sends a study, a ``folder`` processor publishes it, and ``status --json``
reads it all back from PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ledger.states import TaskKind
from tests.conftest import RunningAdapter, wait_for, write_config
from tests.dcmtk import storescu
from tests.dicom import make_study
from tests.postgres import Cluster
from tests.test_cli import cli


def test_a_study_goes_the_whole_way_on_a_postgresql_ledger(
    start_adapter: Callable[[Path], RunningAdapter],
    postgres_cluster: Cluster,
    tmp_path: Path,
    port: int,
) -> None:
    # With a password (trust authentication ignores it): status must not print it.
    url = postgres_cluster.database().replace("postgres@", "postgres:s3cret@")
    output = tmp_path / "published"
    path = write_config(
        tmp_path,
        port,
        aes=f"[ae:DICOMADAPTER]\nprocessor = folder\noutput = {output}\ntimeout = 0.5\n",
        storage="min_free = 0\nreclaim_interval = 0.2",
        ledger=url,
    )
    running = start_adapter(path)
    assert running.config.ledger.url == url
    files = make_study(tmp_path / "study", 4)
    assert storescu(port, files).returncode == 0
    wait_for(lambda: len(list(output.glob("job-*/*.dcm"))) == 4, timeout=30)
    wait_for(lambda: sorted(row.state for row in running.rows()) == ["reclaimed"] * 4, timeout=20)
    [job] = running.adapter.tasks.listing(TaskKind.PROCESS)
    assert (job.state, job.item_count) == ("succeeded", 4)
    assert not (tmp_path / "ledger.db").exists()  # nothing went to a SQLite file

    report = cli("status", "--json", "--config", str(path))
    status = json.loads(report.stdout)
    assert "s3cret" not in report.stdout + report.stderr
    assert status["ledger"] == url.replace(":s3cret@", ":***@")
    assert status["counts"]["reclaimed"] == 4, report.stderr
    assert status["jobs"]["succeeded"] == 1 and status["health"]["listening"]
