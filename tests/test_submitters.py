"""The ``folder`` and ``webhook`` processors end to end, in-process adapter.

A study goes in over DICOM (the pynetdicom peer); once its quiet period is
over the job is handed to the AE's submitter:

* ``folder``: exactly one ``job-<id>-<key>/`` in ``output`` with every
  instance (the same bytes as the spool copy and as what was sent) and the
  manifest; a thread lists ``output`` the whole time and never sees a
  visible folder that is not complete, and no ``.part`` folder is left;
* ``webhook``: a real HTTP server on 127.0.0.1 (in the test) gets the
  manifest with the job's ``Idempotency-Key``; a server failing twice gets
  three POSTs with the same key and the job succeeds on the third attempt;
  a URL nobody listens on makes the job ``failed`` after its retries.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ledger.models import TaskEvent
from ledger.processing import Processing
from ledger.tasks import Tasks
from tests.conftest import RunningAdapter, free_port, wait_for, write_config
from tests.dicom import dataset_bytes, make_study
from tests.peers.send import send_files

AE = "DICOMADAPTER"
MANIFEST = "manifest.json"


def send_study(running: RunningAdapter, folder: Path, count: int) -> dict[str, Path]:
    """Send a fresh study; return SOP Instance UID -> the file sent."""
    files = make_study(folder, count)
    results = send_files("127.0.0.1", running.port, files, called_ae=AE)
    assert [status for _, status in results] == [0] * count, results
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


def wait_job(running: RunningAdapter, state: str, timeout: float = 20):
    """Wait until the one job is in ``state``; return it."""
    processing = Processing(running.ledger)
    wait_for(lambda: [j.state for j in Tasks(processing.ledger).listing()] == [state], timeout)
    [job] = Tasks(processing.ledger).listing()
    return job


def job_event_reasons(running: RunningAdapter, job_id: int) -> list[str]:
    events = TaskEvent.__table__
    query = select(events.c.reason).where(events.c.task_id == job_id).order_by(events.c.id)
    return [reason for (reason,) in running.ledger.read(query)]


# -- folder ---------------------------------------------------------------------


class OutputWatcher:
    """Lists ``output`` in a loop; keeps every visible job folder's listing it saw."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.seen: set[tuple[str, frozenset[str]]] = set()
        self.hidden: set[str] = set()
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-watcher")

    def __enter__(self) -> OutputWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scans += 1
            try:
                entries = list(os.scandir(self.output))
            except FileNotFoundError:
                time.sleep(0.001)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    self.hidden.add(entry.name)
                    continue
                try:
                    names = frozenset(os.listdir(entry.path))
                except (FileNotFoundError, NotADirectoryError):
                    names = frozenset({"<vanished>"})
                self.seen.add((entry.name, names))


def test_folder_publishes_each_job_once_and_whole(
    tmp_path: Path, port: int, start_adapter: Callable
) -> None:
    output = tmp_path / "out"
    count = 20
    config = write_config(
        tmp_path,
        port,
        f"processor = folder\noutput = {output}\ntimeout = 0.5\nretention = 3600\n",
    )
    running = start_adapter(config)
    with OutputWatcher(output) as watcher:
        sent = send_study(running, tmp_path / "study", count)
        job = wait_job(running, "succeeded")
        time.sleep(0.3)  # a few more scans of the finished output
    print(f"output scanned {watcher.scans} times; hidden names seen: {sorted(watcher.hidden)}")

    name = f"job-{job.id}-{job.idempotency_key}"
    wanted = {f"{sop}.dcm" for sop in sent} | {MANIFEST}
    assert sorted(os.listdir(output)) == [name]  # one folder, no .part left behind
    published = output / name
    assert set(os.listdir(published)) == wanted
    # Never a visible folder with less than everything in it.
    assert watcher.seen, "the watcher never saw the published folder"
    assert watcher.seen == {(name, frozenset(wanted))}, watcher.seen
    assert watcher.hidden <= {f".{name}.part"}, watcher.hidden

    instances = running.ledger.instances()
    assert {i.sop_instance_uid for i in instances} == set(sent)
    assert {i.state for i in instances} == {"submitted"}
    assert {i.job_id for i in instances} == {job.id}
    for instance in instances:
        copy = published / f"{instance.sop_instance_uid}.dcm"
        assert copy.read_bytes() == Path(instance.path).read_bytes(), copy
        assert dataset_bytes(copy) == dataset_bytes(sent[instance.sop_instance_uid]), copy

    manifest = json.loads((published / MANIFEST).read_text())
    assert (published / MANIFEST).read_bytes() == (
        running.config.storage.jobs / str(job.id) / MANIFEST
    ).read_bytes()
    assert manifest["job_id"] == job.id
    assert manifest["idempotency_key"] == job.idempotency_key
    assert manifest["processor"] == "folder"
    assert {e["sop_instance_uid"] for e in manifest["instances"]} == set(sent)
    assert {e["file"] for e in manifest["instances"]} == wanted - {MANIFEST}
    assert job.attempts == 1


# -- webhook --------------------------------------------------------------------


class Hook:
    """A threaded HTTP server that records POSTs and answers from a script of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)  # answered in order; 200 once used up
        self.requests: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = hook.statuses.pop(0) if hook.statuses else 200
                hook.requests.append(
                    {
                        "at": time.monotonic(),
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "status": status,
                    }
                )
                answer = b'{"ok": true}' if status < 300 else b"try again"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jobs"
        self.thread = threading.Thread(target=self.server.serve_forever, name="hook")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def hook() -> Iterator[Callable[[list[int]], Hook]]:
    hooks: list[Hook] = []

    def make(statuses: list[int]) -> Hook:
        hooks.append(Hook(statuses))
        return hooks[-1]

    yield make
    for made in hooks:
        made.close()


def webhook_config(tmp_path: Path, port: int, url: str) -> Path:
    return write_config(
        tmp_path,
        port,
        # A quiet period long enough that a loaded CI machine does not split the
        # study into two groups (rows can lag the sender by a few hundred ms).
        f"processor = webhook\nurl = {url}\ntimeout = 1.5\nretries = 3\nretry_delay = 0.1\n"
        "webhook_timeout = 5\n",
    )


def test_webhook_posts_the_manifest_with_the_idempotency_key(
    tmp_path: Path, port: int, start_adapter: Callable, hook: Callable
) -> None:
    server = hook([])
    running = start_adapter(webhook_config(tmp_path, port, server.url))
    sent = send_study(running, tmp_path / "study", 10)
    job = wait_job(running, "succeeded")

    [request] = server.requests
    assert request["path"] == "/jobs"
    assert request["headers"]["Idempotency-Key"] == job.idempotency_key
    assert request["headers"]["Content-Type"] == "application/json"
    manifest = json.loads(request["body"])
    assert request["body"] == (running.config.storage.jobs / str(job.id) / MANIFEST).read_bytes()
    assert manifest["job_id"] == job.id
    assert manifest["idempotency_key"] == job.idempotency_key
    assert manifest["processor"] == "webhook"
    assert manifest["attempt"] == job.attempts == 1
    assert {e["sop_instance_uid"] for e in manifest["instances"]} == set(sent)
    assert len(manifest["instances"]) == len(sent)
    assert {i.state for i in running.ledger.instances()} == {"submitted"}


def test_webhook_retries_with_the_same_key_until_2xx(
    tmp_path: Path, port: int, start_adapter: Callable, hook: Callable
) -> None:
    server = hook([500, 500])
    running = start_adapter(webhook_config(tmp_path, port, server.url))
    sent = send_study(running, tmp_path / "study", 10)
    job = wait_job(running, "succeeded")

    assert [r["status"] for r in server.requests] == [500, 500, 200]
    assert job.attempts == 3
    keys = {r["headers"]["Idempotency-Key"] for r in server.requests}
    assert keys == {job.idempotency_key}
    documents = [json.loads(r["body"]) for r in server.requests]
    assert [d.pop("attempt") for d in documents] == [1, 2, 3]
    assert documents[0] == documents[1] == documents[2]  # the same job, whatever the attempt
    assert {e["sop_instance_uid"] for e in documents[0]["instances"]} == set(sent)
    # Backoff: retry_delay, then twice that.
    gaps = [b["at"] - a["at"] for a, b in pairwise(server.requests)]
    print(f"gaps between attempts: {[round(g, 3) for g in gaps]}")
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps
    reasons = job_event_reasons(running, job.id)
    assert sum(f"{server.url} answered HTTP 500" in r for r in reasons) == 2, reasons
    assert job.last_error is None
    assert {i.state for i in running.ledger.instances()} == {"submitted"}


def test_webhook_nobody_listening_fails_after_retries(
    tmp_path: Path, port: int, start_adapter: Callable
) -> None:
    url = f"http://127.0.0.1:{free_port()}/jobs"
    running = start_adapter(webhook_config(tmp_path, port, url))
    sent = send_study(running, tmp_path / "study", 10)
    job = wait_job(running, "failed")

    assert job.attempts == 4  # the first try and retries = 3
    assert url in job.last_error, job.last_error
    assert job.finished_at is not None and job.next_attempt_at is None
    reasons = job_event_reasons(running, job.id)
    assert sum("to try again at" in r for r in reasons) == 3, reasons
    assert "delivered: no retries left" in reasons[-1], reasons
    # A failed job keeps its instances claimed, their files on disk.
    instances = running.ledger.instances()
    assert {i.sop_instance_uid for i in instances} == set(sent)
    assert {i.state for i in instances} == {"claimed"}
    assert all(Path(i.path).is_file() for i in instances)


# -- command arguments from the wire ----------------------------------------------


def command_submission(tmp_path: Path, group_key: str):
    """A job of group ``group_key`` (as a PatientID group_by would give it), folder and all."""
    from datetime import UTC, datetime

    from ledger.records import TaskRecord
    from processors.base import Submission

    now = datetime.now(UTC)
    job = TaskRecord(
        1,
        "process",
        AE,
        "command",
        "group",
        group_key,
        None,
        "running",
        1,
        0,
        1,
        None,
        None,
        "k" * 32,
        now,
        now,
        None,
        None,
        "edge-1",
        None,
    )
    job_dir = tmp_path / "jobs" / "1"
    job_dir.mkdir(parents=True)
    return Submission(job, (), job_dir, job_dir / MANIFEST, "1.2.3")


@pytest.mark.parametrize("group_key", ["--output=/etc/x", "-rf", "A\nB"])
def test_a_wire_value_that_could_pass_for_an_option_is_refused(
    tmp_path: Path, group_key: str
) -> None:
    """``{group_key}`` is text from the wire: without a shell it cannot run a command,
    but as ``--output=/etc/x`` it would be read as an option; the job fails instead."""
    import sys

    from processors.base import SubmitError
    from processors.command import CommandSubmitter

    marker = tmp_path / "ran"
    script = f"import pathlib, sys; pathlib.Path({str(marker)!r}).write_text(repr(sys.argv[1:]))"
    command = f"{sys.executable} -c {script!r} {{group_key}}"
    with pytest.raises(SubmitError, match=r"\{group_key\} (starts with '-'|holds a control)"):
        CommandSubmitter(command, 10).submit(command_submission(tmp_path, group_key))
    assert not marker.exists(), "the command must not run"


def test_after_a_double_dash_a_wire_value_is_an_operand_and_passed_as_is(tmp_path: Path) -> None:
    import sys

    from processors.command import CommandSubmitter

    marker = tmp_path / "ran"
    script = f"import pathlib, sys; pathlib.Path({str(marker)!r}).write_text(repr(sys.argv[1:]))"
    command = f"{sys.executable} -c {script!r} -- {{group_key}} --key={{group_key}}"
    CommandSubmitter(command, 10).submit(command_submission(tmp_path, "--output=/etc/x"))
    assert marker.read_text() == repr(["--", "--output=/etc/x", "--key=--output=/etc/x"])
