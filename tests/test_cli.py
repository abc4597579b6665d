"""The dicom-adapter command as a user runs it: real subprocesses, exact output."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cli import main
from ledger.migrate import head_revision
from tests.conftest import ROOT, AdapterProcess
from tests.dcmtk import storescu
from tests.dicom import make_study

HEAD = head_revision()  # the newest ledger revision, named in the output


def cli(
    *args: str, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        input=input,
    )


def test_db_upgrade_then_status_on_an_empty_ledger(config_path: Path) -> None:
    first = cli("db", "upgrade", "--config", str(config_path))
    assert (
        first.returncode == 0
        and first.stdout == f"ledger upgraded from empty to {HEAD} (head {HEAD})\n"
    )
    again = cli("db", "upgrade", "--config", str(config_path))
    assert again.stdout == f"ledger already at {HEAD}\n"
    status = cli("status", "--config", str(config_path))
    assert status.returncode == 1  # nothing listens: unhealthy, for monitoring scripts
    ledger = config_path.parent / "ledger.db"
    lines = status.stdout.splitlines(keepends=True)
    assert lines[2].startswith(f"Spool:  {config_path.parent / 'spool'} (")
    assert lines[2].endswith(" GiB free)\n")
    assert "".join(lines[:2] + lines[3:]) == (
        "Health: UNHEALTHY: not listening\n"
        f"Ledger: sqlite:///{ledger} (revision {HEAD})\n"
        "Last reconcile: never\n\n"
        "Nodes:\n  (none has run on this ledger yet)\n\n"
        "Instances by state:\n"
        "  received            0\n  claimed             0\n  submitted           0\n"
        "  reclaimable         0\n  reclaimed           0\n  rejected            0\n"
        "  superseded          0\n\n"
        "Jobs by state:\n"
        "  pending             0\n  running             0\n  succeeded           0\n"
        "  failed              0\n  discarded           0\n\n"
        "Exports by state:\n"
        "  pending             0\n  running             0\n  succeeded           0\n"
        "  failed              0\n  discarded           0\n\n"
        "Export files by state:\n"
        "  pending             0\n  sent                0\n  failed              0\n"
        "  discarded           0\n\n"
        "Oldest open group: (none)\n\n"
        "Recent studies:\n  (none)\n"
    )


def test_status_before_any_schema_says_what_to_do(config_path: Path) -> None:
    result = cli("status", "--config", str(config_path))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ledger sqlite:///")
    assert result.stderr.endswith("has no schema yet: run 'dicom-adapter db upgrade'\n")


def test_run_receive_status_and_sigterm(adapter_process: AdapterProcess, tmp_path: Path) -> None:
    adapter_process.start()
    sent = make_study(tmp_path / "study", 4)
    assert storescu(adapter_process.port, sent).returncode == 0
    running = cli("status", "--json", "--config", str(adapter_process.config))
    health = json.loads(running.stdout)["health"]
    assert running.returncode == 0 and health["healthy"] and health["listening"]
    assert health["last_reconcile_at"] and health["failed_jobs"] == []
    assert adapter_process.signal(signal.SIGTERM) == 0
    result = cli("status", "--json", "--config", str(adapter_process.config))
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["health"]["listening"] is False
    assert report["counts"]["received"] == 4 and report["revision"] == HEAD
    [study] = report["studies"]
    assert study["called_ae"] == "DICOMADAPTER" and study["instances"] == 4
    assert study["received"] == 4 and study["bytes"] > 0
    text = cli("status", "--config", str(adapter_process.config)).stdout
    assert f"DICOMADAPTER     {study['study_instance_uid']}" in text
    assert "4 instances,      4 received" in text


def test_sigint_exits_130(adapter_process: AdapterProcess) -> None:
    adapter_process.start()
    assert adapter_process.signal(signal.SIGINT) == 130


def test_port_in_use_is_one_error_line(config_path: Path, port: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = cli("run", "--config", str(config_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (DICOM port): Address already in use"
    ]
    # checked before anything was created
    assert not (config_path.parent / "ledger.db").exists()
    assert not (config_path.parent / "spool").exists()


def every_command(group: click.Group, path: tuple[str, ...] = ()) -> list[list[str]]:
    """The group itself and every command and group below it, as argv paths."""
    found = [list(path)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
        else:
            found.append([*path, name])
    return found


@pytest.mark.parametrize("command", every_command(main), ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0
    assert "Usage: adapter.py" in result.stdout
    assert "Example:" in result.stdout


def test_console_script_is_the_same_command() -> None:
    script = Path(sys.executable).parent / "dicom-adapter"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage: dicom-adapter" in result.stdout


@pytest.mark.parametrize("when", ["while starting", "as the port opens"])
def test_sigterm_during_startup_is_not_lost(
    config_path: Path, port: int, tmp_path: Path, when: str
) -> None:
    """A stop right after a start (systemd may do that) ends the service cleanly."""
    from tests.conftest import port_open, wait_for

    log = tmp_path / "adapter.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "adapter.py"), "run", "--config", str(config_path)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        if when == "as the port opens":
            wait_for(lambda: port_open(port), timeout=30, interval=0.001)
        else:  # the adapter has begun starting: the ledger migration is logged first
            wait_for(lambda: "ledger migrated" in log.read_text(), timeout=30, interval=0.001)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        process.kill()


def test_status_on_a_ledger_behind_the_code_says_what_to_do(config_path: Path) -> None:
    import sqlite3

    assert cli("db", "upgrade", "--config", str(config_path)).returncode == 0
    with sqlite3.connect(config_path.parent / "ledger.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0003'")
    result = cli("status", "--config", str(config_path))
    assert result.returncode == 1 and result.stderr.endswith(
        f"is at revision 0003, this version needs {HEAD}: run 'dicom-adapter db upgrade'\n"
    )


def test_group_config_option_reaches_its_commands(config_path: Path, tmp_path: Path) -> None:
    assert cli("db", "upgrade", "--config", str(config_path)).returncode == 0
    result = cli("jobs", "--config", str(config_path), "retry", "42", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "Error: no job 42\n")


def failed_export(config_path: Path, name: str, count: int = 2) -> tuple[int, list[Path]]:
    """A ``failed`` export whose ``count`` outbox files the destination refused (kept)."""
    from exporters.files import spec_for
    from ledger.db import make_engine
    from ledger.exports import Exports
    from ledger.migrate import upgrade
    from ledger.records import ItemOutcome
    from ledger.store import Ledger
    from ledger.tasks import Tasks

    staging = config_path.parent / "var" / "outbox" / "PACS" / ".sending" / name / "study"
    files = make_study(staging, count)
    engine = make_engine(f"sqlite:///{config_path.parent / 'ledger.db'}")
    upgrade(engine)
    exports = Exports(Ledger(engine))
    export_id = exports.create("PACS", "outbox", [spec_for(p, owned=True) for p in files])
    Tasks(exports.ledger).start(export_id)
    refused = [
        ItemOutcome(f.id, 0xC000, "destination answered 0xC000") for f in exports.items(export_id)
    ]
    assert exports.settle(export_id, refused, None).state == "failed"
    engine.dispose()
    return export_id, files


def export_state_and_events(config_path: Path, export_id: int) -> tuple[str, list[str]]:
    import sqlite3

    with sqlite3.connect(config_path.parent / "ledger.db") as db:
        [state] = db.execute("SELECT state FROM exports WHERE id = ?", (export_id,)).fetchone()
        reasons = [
            r
            for (r,) in db.execute(
                "SELECT reason FROM export_events WHERE export_id = ? ORDER BY id", (export_id,)
            )
        ]
    db.close()
    return state, reasons


def test_task_listings_as_json_keep_the_keys_earlier_versions_printed(config_path: Path) -> None:
    from click.testing import CliRunner

    export_id, _ = failed_export(config_path, "o-json")
    listed = {}
    for group in ("tasks", "exports", "jobs"):
        result = CliRunner().invoke(main, [group, "--json", "--config", str(config_path)])
        assert result.exit_code == 0, result.output
        listed[group] = json.loads(result.output)
    assert listed["tasks"] == listed["exports"] and listed["jobs"] == []
    [task] = listed["exports"]
    assert (task["id"], task["kind"], task["noun"], task["state"]) == (
        export_id,
        "export",
        "export",
        "failed",
    )
    # An earlier version's export keys, as the ledger's exports view has them.
    assert (task["destination"], task["job_id"], task["file_count"]) == ("PACS", None, 2)
    assert (task["failed_count"], task["attempts"], task["origin"]) == (2, 1, "outbox")


def test_exports_discard_asks_first_keeps_the_files_and_says_so(config_path: Path) -> None:
    from click.testing import CliRunner

    export_id, files = failed_export(config_path, "o-1")
    arguments = ["exports", "discard", str(export_id), "--config", str(config_path)]
    declined = CliRunner().invoke(main, arguments, input="n\n")
    assert declined.exit_code == 1
    assert declined.output == (
        f"Discard export {export_id} to PACS: 2 undelivered files will not be sent "
        "(their files kept on disk)? [y/N]: n\nAborted!\n"
    )
    assert export_state_and_events(config_path, export_id)[0] == "failed"

    done = CliRunner().invoke(main, arguments, input="y\n")
    assert done.exit_code == 0, done.output
    assert done.output.endswith(
        f"export {export_id} discarded (2 undelivered files, files kept on disk)\n"
    )
    state, reasons = export_state_and_events(config_path, export_id)
    assert state == "discarded"
    assert reasons[-1] == (
        "2 undelivered files given up: dicom-adapter exports discard (files kept on disk)"
    )
    assert all(p.is_file() for p in files)
    status = cli("status", "--json", "--config", str(config_path))
    assert json.loads(status.stdout)["health"]["undelivered_files"] == 0

    again = CliRunner().invoke(main, [*arguments, "--yes"])
    assert again.exit_code == 1
    assert again.output == (
        f"Error: export {export_id}: cannot move an export in state 'discarded' to 'discarded'\n"
    )
    missing = CliRunner().invoke(
        main, ["exports", "discard", "99", "--yes", "--config", str(config_path)]
    )
    assert (missing.exit_code, missing.output) == (1, "Error: no export 99\n")


def test_exports_discard_delete_files_removes_only_its_own_undelivered_files(
    config_path: Path,
) -> None:
    from click.testing import CliRunner

    export_id, files = failed_export(config_path, "o-2", count=3)
    staging = files[0].parent.parent
    status = cli("status", "--json", "--config", str(config_path))
    assert json.loads(status.stdout)["health"]["undelivered_files"] == 3
    result = CliRunner().invoke(
        main,
        [
            "exports",
            "discard",
            str(export_id),
            "--yes",
            "--delete-files",
            "--config",
            str(config_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        result.output
        == f"deleted 3 files\nexport {export_id} discarded (3 undelivered files, files deleted)\n"
    )
    assert not any(p.exists() for p in files)
    assert not staging.exists() and staging.parent.is_dir()  # .sending/ itself stays
    state, reasons = export_state_and_events(config_path, export_id)
    assert state == "discarded"
    assert reasons[-1] == "its undelivered files were deleted (exports discard)"
