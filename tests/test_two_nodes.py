"""Two adapter nodes, real processes, on one PostgreSQL ledger and one spool folder.

Each node has its own port, name, log and job folders; they share the
ledger and the spool, as two boxes behind a load balancer would (here on
one machine).  A node killed in the middle of a job loses the job to the
other once its lease lapses: the other runs it again and finishes it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import text

from config import load_config
from ledger.db import make_engine
from tests.conftest import AdapterProcess, free_port, wait_for, write_config
from tests.dcmtk import storescu
from tests.dicom import make_study
from tests.peers.flaky_scp import FlakyStorageSCP
from tests.postgres import Cluster
from tests.test_cli import cli

LEASE = 2  # seconds: a killed node's job goes to the other after this
# The job's command: the first attempt hangs (the node running it is killed), any later
# attempt succeeds at once.  Each run is recorded with its attempt and process.
COMMAND = """\
import json, os, sys, time
from pathlib import Path
here = Path(sys.argv[1])
attempt = json.loads(Path(sys.argv[2]).read_text())["attempt"]
with open(here / "runs.jsonl", "a") as runs:
    runs.write(json.dumps({"attempt": attempt, "pid": os.getpid()}) + "\\n")
if attempt == 1:
    time.sleep(120)
"""


def command_ae(hook: Path) -> str:
    command = shlex.join([sys.executable, str(hook), str(hook.parent)]) + " {manifest}"
    return (
        f"[ae:DICOMADAPTER]\nprocessor = command\ncommand = {command}\ntimeout = 0.5\n"
        "retries = 3\nretry_delay = 0.5\n"
    )


def node_config(
    folder: Path,
    name: str,
    port: int,
    ledger: str,
    spool: Path,
    aes: str,
    extra: str,
    reclaim_interval: float,
) -> Path:
    path = write_config(
        folder,
        port,
        extra,
        aes=aes,
        storage=f"min_free = 0\nreclaim_interval = {reclaim_interval}\nspool = {spool}",
        ledger=ledger,
    )
    text_ = path.read_text().replace("spool = spool\n", "")
    path.write_text(f"[node]\nname = {name}\nlease = {LEASE}\n\n" + text_)
    return path


def two_nodes(
    tmp_path: Path, ledger: str, aes: str, extra: str = "", reclaim_interval: float = 3600
) -> dict[str, AdapterProcess]:
    """Nodes edge-a and edge-b: one ledger, one spool, each its own port, log and jobs."""
    spool = tmp_path / "shared" / "spool"
    nodes = {}
    for name in ("edge-a", "edge-b"):
        folder = tmp_path / name
        folder.mkdir()
        port = free_port()
        config = node_config(folder, name, port, ledger, spool, aes, extra, reclaim_interval)
        nodes[name] = AdapterProcess(config, port, folder / "adapter.log")
    return nodes


def stop(nodes: dict[str, AdapterProcess]) -> None:
    for node in nodes.values():
        if node.process is not None and node.process.poll() is None:
            node.signal(signal.SIGTERM)


def test_three_studies_one_split_across_the_nodes_make_three_whole_jobs(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    ledger = postgres_cluster.database()
    output = tmp_path / "published"
    aes = f"[ae:DICOMADAPTER]\nprocessor = folder\noutput = {output}\ntimeout = 1\n"
    nodes = two_nodes(tmp_path, ledger, aes, reclaim_interval=0.5)  # retention 0: at once
    engine = make_engine(ledger)
    studies = [make_study(tmp_path / f"study-{n}", 4) for n in range(3)]
    try:
        for node in nodes.values():
            node.start()
        a, b = nodes["edge-a"].port, nodes["edge-b"].port
        assert storescu(a, studies[0]).returncode == 0
        assert storescu(b, studies[1]).returncode == 0
        assert storescu(a, studies[2][:2]).returncode == 0  # one study split over both
        assert storescu(b, studies[2][2:]).returncode == 0

        def jobs() -> list[tuple]:
            with engine.connect() as connection:
                query = "SELECT state, item_count FROM tasks WHERE kind = 'process' ORDER BY id"
                return [tuple(row) for row in connection.execute(text(query))]

        wait_for(lambda: jobs() == [("succeeded", 4)] * 3, timeout=30)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT count(*), count(DISTINCT path), count(DISTINCT job_id) FROM instances")
            ).one()
        assert tuple(rows) == (12, 12, 3)
        published = sorted(output.glob("job-*"))
        assert [len(list(folder.glob("*.dcm"))) for folder in published] == [4, 4, 4]

        # Both nodes reclaim every half second: each file is deleted once, by one of
        # them, and each node's job folders go (whichever node deleted the files).
        def reclaimed() -> list[tuple]:
            query = (
                "SELECT count(*), count(DISTINCT instance_id) FROM events"
                " WHERE to_state = 'reclaimed'"
            )
            with engine.connect() as connection:
                return [tuple(connection.execute(text(query)).one())]

        wait_for(lambda: reclaimed() == [(12, 12)], timeout=30)
        spool = tmp_path / "shared" / "spool"
        assert [p for p in spool.rglob("*.dcm") if ".tmp" not in p.parts] == []
        for node in nodes.values():
            jobs_root = load_config(node.config).storage.jobs
            wait_for(lambda root=jobs_root: not any(p.is_dir() for p in root.iterdir()), 10)
            assert "Traceback" not in node.log.read_text()
    finally:
        stop(nodes)
        engine.dispose()


def test_a_node_killed_mid_job_loses_it_to_the_other_which_finishes_it(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    ledger = postgres_cluster.database()
    hook = tmp_path / "shared" / "hook.py"
    hook.parent.mkdir()
    hook.write_text(COMMAND)
    nodes = two_nodes(tmp_path, ledger, command_ae(hook))
    engine = make_engine(ledger)

    def query(sql: str) -> list[tuple]:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]

    runs = hook.parent / "runs.jsonl"
    try:
        for node in nodes.values():
            node.start()
        assert storescu(nodes["edge-a"].port, make_study(tmp_path / "study", 3)).returncode == 0
        wait_for(runs.exists, timeout=30)
        [first] = [json.loads(line) for line in runs.read_text().splitlines()]
        [(job_id, holder, state)] = query("SELECT id, node, state FROM tasks")
        assert (first["attempt"], state) == (1, "running")
        other = "edge-b" if holder == "edge-a" else "edge-a"

        nodes[holder].kill()  # the node running the job dies, and its command with it
        os.kill(first["pid"], signal.SIGKILL)

        wait_for(lambda: query("SELECT state FROM tasks") == [("succeeded",)], timeout=LEASE + 20)
        [(node, attempts)] = query("SELECT node, attempts FROM tasks")
        assert (node, attempts) == (other, 2)
        later = [json.loads(line)["attempt"] for line in runs.read_text().splitlines()]
        assert later == [1, 2]
        reasons = [r for (r,) in query(f"SELECT reason FROM task_events WHERE task_id = {job_id}")]
        assert any(f"the lease of node {holder} lapsed" in r for r in reasons), reasons
        # One row per instance, all handed over by the one job.
        assert query("SELECT count(*), count(DISTINCT path) FROM instances") == [(3, 3)]
        assert query("SELECT DISTINCT state, job_id FROM instances") == [("submitted", job_id)]
    finally:
        stop(nodes)
        engine.dispose()


def test_a_node_killed_mid_export_loses_it_to_the_other_which_sends_it(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    ledger = postgres_cluster.database()
    files = make_study(tmp_path / "results", 6)
    with FlakyStorageSCP(delay=0.5) as pacs:  # half a second a file: time to kill the sender
        destination = (
            f"[destination:PACS]\nae_title = FLAKYSCP\nhost = 127.0.0.1\nport = {pacs.port}\n"
        )
        nodes = two_nodes(tmp_path, ledger, "[ae:DICOMADAPTER]\n", destination)
        engine = make_engine(ledger)

        def tasks() -> list[tuple]:
            with engine.connect() as connection:
                return [tuple(r) for r in connection.execute(text("SELECT state, node FROM tasks"))]

        try:
            for node in nodes.values():
                node.start()
            queued = cli(
                "send", "--dest", "PACS", *map(str, files), "--config", str(nodes["edge-a"].config)
            )
            assert queued.returncode == 0, queued.stderr
            wait_for(lambda: len(pacs.stores()) >= 1, timeout=20)
            [(state, holder)] = tasks()
            assert state == "running"
            other = "edge-b" if holder == "edge-a" else "edge-a"
            nodes[holder].kill()  # mid-export: some files sent, the rest not yet
            assert len(pacs.received()) < len(files)

            wait_for(lambda: tasks() == [("succeeded", other)], timeout=LEASE + 20)
            assert pacs.received() == {str(dcmread(f).SOPInstanceUID) for f in files}
        finally:
            stop(nodes)
            engine.dispose()
