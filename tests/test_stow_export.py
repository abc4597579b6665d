"""The STOW-RS sender against a scripted origin server in its own process.

``tests/peers/fake_stow.py`` answers what each test scripts: one instance
refused, Orthanc's 409 without a Content-Type, 503 with Retry-After, an
answer that is not DICOM JSON, a sign-in refused.  What is checked is each
file's outcome, the requests' shape (bounded, chunked, quoted boundary,
one ``application/dicom`` part per file) and that each file arrives byte
for byte.  End to end against Orthanc: ``tests/test_dicomweb_orthanc.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from config import TlsSettings
from exporters.base import ExportError
from exporters.multipart import content_type
from exporters.stow import StowSender
from exporters.stow_answer import read_answer
from exporters.web_client import WebPeer, retry_after_seconds
from ledger.records import ItemOutcome
from tasks import backoff
from tests.conftest import ROOT, RunningAdapter, free_port, port_open, wait_for, write_config
from tests.dicom import make_large_multiframe, make_study
from tests.test_dimse_scu import records
from tests.test_exports import drop, tasks_for, wait_state
from tests.test_tls import Pki
from tests.test_tls import pki as certificates

DATA_SET_DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700


class FakeStow:
    """One ``fake_stow.py`` process: its base URL, its script, what it received."""

    def __init__(self, folder: Path, port: int, tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: HTTPS with this certificate and key, requiring a client certificate the
        CA signed."""
        self.folder, self.port = folder, port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/dicom-web"
        folder.mkdir(parents=True, exist_ok=True)
        script = ROOT / "tests" / "peers" / "fake_stow.py"
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(port), str(folder), *map(str, tls or ())]
        )
        wait_for(lambda: port_open(port) or self.process.poll() is not None, timeout=20)
        assert self.process.poll() is None

    def script(self, **answer: object) -> None:
        (self.folder / "script.json").write_text(json.dumps(answer))

    def requests(self) -> list[dict]:
        log = self.folder / "requests.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def received(self) -> dict[str, bytes]:
        return {path.stem: path.read_bytes() for path in self.folder.glob("*.dcm")}

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def fake_stow(tmp_path: Path) -> Iterator[FakeStow]:
    server = FakeStow(tmp_path / "server", free_port())
    yield server
    server.stop()


def uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def test_files_arrive_byte_identical_in_bounded_chunked_requests(
    fake_stow: FakeStow, tmp_path: Path
) -> None:
    files = make_study(tmp_path / "study", 7)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sender = StowSender(WebPeer(fake_stow.url, token_file=token, max_parts=3))
    attempt = sender.send(records(files))
    assert attempt.outcomes == [ItemOutcome(n, 0, None) for n in range(1, 8)]
    assert fake_stow.received() == {uid(path): path.read_bytes() for path in files}
    requests = fake_stow.requests()
    assert [len(r["parts"]) for r in requests] == [3, 3, 1]
    for request in requests:
        headers = request["headers"]
        assert headers["accept"] == "application/dicom+json"
        assert headers["authorization"] == "Bearer s3cret-token"
        assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
        boundary = headers["content-type"].split('boundary="')[1].rstrip('"')
        assert headers["content-type"] == content_type(boundary) and len(boundary) <= 70
        assert {part["content_type"] for part in request["parts"]} == {"application/dicom"}


def test_requests_are_bounded_in_bytes_and_hold_an_instance_once(
    fake_stow: FakeStow, tmp_path: Path
) -> None:
    files = make_study(tmp_path / "study", 4)
    size = max(path.stat().st_size for path in files)
    sender = StowSender(WebPeer(fake_stow.url, max_request_size=2 * size))
    twice = records([*files, files[0]])  # the same instance queued twice in one task
    assert [o.error for o in sender.send(twice).outcomes] == [None] * 5
    assert [[p["uid"] for p in r["parts"]] for r in fake_stow.requests()] == [
        [uid(files[0]), uid(files[1])],
        [uid(files[2]), uid(files[3])],
        [uid(files[0])],
    ]


def test_each_refused_instance_fails_alone_with_its_failure_reason(
    fake_stow: FakeStow, tmp_path: Path
) -> None:
    files = make_study(tmp_path / "study", 4)
    refused, full = uid(files[1]), uid(files[2])
    fake_stow.script(refuse={refused: DATA_SET_DOES_NOT_MATCH, full: OUT_OF_RESOURCES})
    outcomes = StowSender(WebPeer(fake_stow.url)).send(records(files)).outcomes
    assert outcomes == [
        ItemOutcome(1, 0, None),
        ItemOutcome(2, DATA_SET_DOES_NOT_MATCH, "destination answered 0xA900", retry=False),
        ItemOutcome(3, OUT_OF_RESOURCES, "destination answered 0xA700", retry=True),
        ItemOutcome(4, 0, None),
    ]
    assert sorted(fake_stow.received()) == sorted([uid(files[0]), uid(files[3])])


def test_orthanc_s_409_without_a_content_type_is_read_as_an_answer(
    fake_stow: FakeStow, tmp_path: Path
) -> None:
    """Orthanc answers a partial success 409, without Content-Type, listing what it stored."""
    files = make_study(tmp_path / "study", 2)
    fake_stow.script(status=409, content_type=None, refuse={uid(files[0]): 0x0110})
    outcomes = StowSender(WebPeer(fake_stow.url)).send(records(files)).outcomes
    assert outcomes == [
        ItemOutcome(1, 0x0110, "destination answered 0x0110", retry=True),
        ItemOutcome(2, 0, None),
    ]


def test_an_answer_that_names_nothing_leaves_every_file_for_another_attempt(
    fake_stow: FakeStow, tmp_path: Path
) -> None:
    files = make_study(tmp_path / "study", 2)
    fake_stow.script(status=200, body="OK", content_type="text/plain")
    outcomes = StowSender(WebPeer(fake_stow.url)).send(records(files)).outcomes
    assert {(o.status, o.retry, o.attempted) for o in outcomes} == {(None, True, True)}
    assert "HTTP 200 without a Store Instances Response" in (outcomes[0].error or "")
    fake_stow.script(status=200, body=json.dumps({"00081190": {"vr": "UR"}}))
    outcomes = StowSender(WebPeer(fake_stow.url)).send(records(files)).outcomes
    assert "names it neither stored nor failed" in (outcomes[0].error or "")
    assert all(o.retry for o in outcomes)


def test_503_ends_the_attempt_and_its_retry_after_delays_the_next(
    fake_stow: FakeStow, tmp_path: Path
) -> None:
    files = make_study(tmp_path / "study", 3)
    fake_stow.script(status=503, body="busy", content_type="text/plain", retry_after="120")
    attempt = StowSender(WebPeer(fake_stow.url, max_parts=2)).send(records(files))
    assert attempt.retry_after_seconds == 120
    first, second, third = attempt.outcomes
    assert first.retry and first.attempted and second.attempted
    assert (
        first.error
        == "not delivered: HTTP 503 Service Unavailable: it is unavailable for now (busy)"
    )
    assert third.retry and not third.attempted  # the request after it was never sent
    assert len(fake_stow.requests()) == 1
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert backoff.retry_at(1, 3, 10, now, attempt.retry_after_seconds) == now + timedelta(
        seconds=120
    )
    assert backoff.retry_at(1, 3, 10, now, 86400) == now + timedelta(hours=1)  # within reason
    assert backoff.retry_at(4, 3, 10, now, 120) is None  # out of retries is out of retries


@pytest.mark.parametrize(
    "status, says",
    [
        (401, "HTTP 401 Unauthorized: sign-in refused: check username and password_file"),
        (404, "HTTP 404 Not Found: nothing there: check url"),
        (415, "HTTP 415 Unsupported Media Type: it does not take multipart/related"),
    ],
)
def test_a_refused_request_fails_the_attempt_for_its_files_not_for_good(
    fake_stow: FakeStow, tmp_path: Path, status: int, says: str
) -> None:
    """A sign-in or a URL to fix is no reason to refuse a file for good."""
    files = make_study(tmp_path / "study", 1)
    fake_stow.script(status=status, body="")
    [outcome] = StowSender(WebPeer(fake_stow.url)).send(records(files)).outcomes
    assert (outcome.status, outcome.retry, outcome.attempted) == (None, True, True)
    assert (outcome.error or "").startswith(f"not delivered: {says}"), outcome.error


def test_a_missing_secret_or_server_leaves_the_files_unattempted(tmp_path: Path) -> None:
    files = make_study(tmp_path / "study", 2)
    nobody = f"http://127.0.0.1:{free_port()}/dicom-web"
    outcomes = StowSender(WebPeer(nobody)).send(records(files)).outcomes
    assert {(o.retry, o.attempted) for o in outcomes} == {(True, False)}
    assert outcomes[0].error == "not attempted: cannot connect: [Errno 111] Connection refused"
    no_secret = WebPeer(nobody, username="u", password_file=tmp_path / "gone")
    [outcome, _] = StowSender(no_secret).send(records(files)).outcomes
    assert (outcome.error or "").startswith(f"not attempted: cannot read the secret in {tmp_path}")
    gone = records([files[0]])[0]
    files[0].unlink()
    [missing] = StowSender(WebPeer(nobody)).send([gone]).outcomes
    assert (missing.error, missing.retry) == (f"file missing: {gone.path}", False)


def test_a_large_file_streams_in_bounded_memory(fake_stow: FakeStow, tmp_path: Path) -> None:
    path = make_large_multiframe(tmp_path / "large.dcm", 64 * 1024 * 1024)
    tracemalloc.start()
    try:
        outcomes = StowSender(WebPeer(fake_stow.url)).send(records([path])).outcomes
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcomes == [ItemOutcome(1, 0, None)]
    assert peak < 2 * 1024 * 1024, peak  # 256 KiB reads (0.9 MiB peak measured), not 64 MiB
    assert fake_stow.received()[uid(path)] == path.read_bytes()


pki = certificates  # test_tls's throwaway CAs and certificates, as a fixture here too


def test_https_is_verified_as_for_a_tls_dicom_destination(tmp_path: Path, pki: Pki) -> None:
    """The server's certificate must chain to ``ca_certificates``; ours is shown when set."""
    tls = (pki["server"], pki["server-key"], pki["ca"])
    server = FakeStow(tmp_path / "server", free_port(), tls)
    try:
        files = make_study(tmp_path / "study", 1)
        ours = TlsSettings(pki["client"], pki["client-key"], pki["ca"])
        sent = StowSender(WebPeer(server.url, tls=ours)).send(records(files)).outcomes
        assert sent == [ItemOutcome(1, 0, None)]
        assert server.received() == {uid(files[0]): files[0].read_bytes()}
        distrusted = TlsSettings(pki["client"], pki["client-key"], pki["other-ca"])
        [outcome] = StowSender(WebPeer(server.url, tls=distrusted)).send(records(files)).outcomes
        assert (outcome.retry, outcome.attempted) == (True, False)
        assert "not attempted: TLS failed" in (outcome.error or "")
        assert "certificate verify failed" in (outcome.error or "")
        anonymous = TlsSettings(None, None, pki["ca"])  # the server requires our certificate
        [outcome] = StowSender(WebPeer(server.url, tls=anonymous)).send(records(files)).outcomes
        assert outcome.retry and outcome.error and outcome.status is None
    finally:
        server.stop()


def test_echo_queries_the_service_and_says_why_not(fake_stow: FakeStow, tmp_path: Path) -> None:
    assert StowSender(WebPeer(fake_stow.url)).echo() == "QIDO-RS answered 200"
    with pytest.raises(ExportError, match="HTTP 404 Not Found: nothing there"):
        StowSender(WebPeer(fake_stow.url + "/nowhere")).echo()
    with pytest.raises(ExportError, match="cannot connect"):
        StowSender(WebPeer(f"http://127.0.0.1:{free_port()}")).echo()


@pytest.mark.parametrize(
    "body, stored, failed",
    [
        (b"not json", None, None),
        (b"[]", None, None),
        (b"{}", {}, {}),
        (  # a FailureReason that is no US number: a processing failure, worth another attempt
            b'{"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2"]},'
            b' "00081197": {"vr": "US", "Value": ["oops"]}}, {"00081155": {"vr": "UI"}}]}}',
            {},
            {"1.2": 0x0110},
        ),
        (
            b'{"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.3"]},'
            b' "00081196": {"vr": "US", "Value": [45056]}}, "junk"]}}',
            {"1.3": 0xB000},
            {},
        ),
    ],
)
def test_an_answer_is_read_field_by_field(
    body: bytes, stored: dict[str, int] | None, failed: dict[str, int] | None
) -> None:
    answer = read_answer(body)
    if stored is None:
        assert answer is None
    else:
        assert answer is not None and (answer.stored, answer.failed) == (stored, failed)


def test_retry_after_is_seconds_or_a_date_within_an_hour() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert retry_after_seconds("30", now) == 30
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert retry_after_seconds("999999", now) == 3600
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None


def test_an_instance_the_destination_refuses_stays_on_disk_and_fails_alone(
    start_adapter: Callable[[Path], RunningAdapter], fake_stow: FakeStow, tmp_path: Path
) -> None:
    """Outbox files to a DICOMweb destination that refuses one: the others are delivered
    and reclaimed, the refused one is ``failed`` with its FailureReason and kept."""
    files = make_study(tmp_path / "results", 3)
    refused = uid(files[1])
    fake_stow.script(refuse={refused: DATA_SET_DOES_NOT_MATCH})
    destination = f"[destination:WEB]\ntype = dicomweb\nurl = {fake_stow.url}\nretention = 0\n"
    storage = "min_free = 0\nreclaim_interval = 0.2"
    running = start_adapter(write_config(tmp_path, free_port(), destination, storage=storage))
    drop(files, tmp_path / "var" / "outbox" / "WEB", "results", settled=True)
    wait_for(lambda: tasks_for(running, "WEB"), timeout=10)
    [task] = tasks_for(running, "WEB")
    task = wait_state(running, task.id, "failed")
    assert (task.submitter, task.item_count, task.failed_count) == ("stow", 3, 1)
    items = {item.sop_instance_uid: item for item in running.adapter.exports.items(task.id)}
    assert (items[refused].state, items[refused].status) == ("failed", DATA_SET_DOES_NOT_MATCH)
    assert items[refused].error == "destination answered 0xA900"
    delivered = [item for uid_, item in items.items() if uid_ != refused]
    assert {(item.state, item.status) for item in delivered} == {("sent", 0)}
    wait_for(lambda: not any(Path(item.path).exists() for item in delivered), timeout=10)
    assert Path(items[refused].path).read_bytes() == files[1].read_bytes()  # kept, as it was
    assert sorted(fake_stow.received()) == sorted(uid(path) for path in (files[0], files[2]))
