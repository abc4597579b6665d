"""Each adapter writes its heartbeat into ``nodes``; ``status`` lists the nodes.

On SQLite and on PostgreSQL alike (the table is how several nodes on one
PostgreSQL ledger will see each other).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.nodes import Nodes
from tests.conftest import RunningAdapter, write_config
from tests.test_cli import cli


def test_a_node_heartbeats_under_its_name_and_status_lists_it(
    start_adapter: Callable[[Path], RunningAdapter], ledger_url: str, tmp_path: Path, port: int
) -> None:
    path = write_config(tmp_path, port, ledger=ledger_url)
    path.write_text("[node]\nname = edge-1\n\n" + path.read_text())
    running = start_adapter(path)
    [node] = Nodes(running.ledger).listing()
    assert (node.name, node.pid, node.problems) == ("edge-1", os.getpid(), ())
    assert node.listening == f"127.0.0.1:{port}" and node.heartbeat_at >= node.started_at

    report = cli("status", "--json", "--config", str(path))
    [listed] = json.loads(report.stdout)["nodes"]
    assert (listed["name"], listed["pid"], listed["listening"]) == (
        "edge-1",
        os.getpid(),
        node.listening,
    )
    assert 0 <= listed["heartbeat_age_seconds"] < 30
    text_report = cli("status", "--config", str(path)).stdout
    assert f"  edge-1           pid {os.getpid()}, 127.0.0.1:{port}, heartbeat " in text_report


@pytest.mark.parametrize("name", ["-rf", "a b", "x" * 65, "../etc"])
def test_a_node_name_is_a_plain_word(tmp_path: Path, port: int, name: str) -> None:
    path = write_config(tmp_path, port)
    path.write_text(f"[node]\nname = {name}\n\n" + path.read_text())
    result = cli("config", "check", "--config", str(path))
    assert result.returncode == 2 and "[node] name: must be 1-64 letters" in result.stderr
