"""STOW-RS into the adapter, from dicomweb-client (a DICOMweb client nobody here wrote).

The adapter runs in-process with its HTTP listener on a free loopback port;
dicomweb-client posts real Part 10 files.  What is checked: the PS3.18
response, the ledger rows (and who stored them), and that each stored data
set is byte-identical to what was sent.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from config import check_config
from spool.part10 import PREAMBLE, encode_meta
from tests.conftest import (
    RunningAdapter,
    free_port,
    proc_status,
    require_tool,
    reset_peak,
    write_config,
)
from tests.dicom import dataset_bytes, make_instance, make_study
from tests.test_duplicates import VERSION_UIDS, two_versions
from tests.test_intake import events_of
from tests.test_tls import Pki
from tests.test_tls import pki as certificates
from web.auth import hash_password, write_entry
from web.server import MAX_PER_HOST
from web.stow_service import LOGGED_REFUSALS

AE = "DICOMADAPTER"
ROOT = Path(__file__).resolve().parent.parent
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_MISMATCH = 0xA901
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_UIDS = {
    "study_uid": "1.2.3.4",
    "series_uid": "1.2.3.4.5",
    "sop_instance_uid": "1.2.3.4.5.6",
}


def http_config(tmp_path: Path, http: str = "") -> tuple[Path, int]:
    port = free_port()
    path = write_config(tmp_path, free_port(), f"[http]\nport = {port}\n{http}")
    return path, port


def client(port: int, session: requests.Session | None = None) -> DICOMwebClient:
    return DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb/{AE}", session=session)


def test_a_study_stored_over_stow_rs_is_recorded_byte_identical(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)
    files = make_study(tmp_path / "study", 3)
    datasets = [pydicom.dcmread(f) for f in files]
    response = client(port).store_instances(datasets)
    stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response
    rows = {row.sop_instance_uid: row for row in running.wait_rows(3, "received")}
    for original, dataset in zip(files, datasets, strict=True):
        row = rows[str(dataset.SOPInstanceUID)]
        assert (row.called_ae, row.calling_ae, row.http_user) == (AE, None, None)
        assert row.peer_address.startswith("127.0.0.1:")
        assert dataset_bytes(Path(row.path)) == dataset_bytes(original)
    assert not list((running.spool / ".tmp").rglob("*.part"))


def test_users_sign_in_and_the_ledger_names_who_stored(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    users = tmp_path / "users"
    write_entry(users, "alice", "user", hash_password("correct horse"))
    path, port = http_config(tmp_path, f"users = {users}\n")
    running = start_adapter(path)
    [original] = make_study(tmp_path / "study", 1)
    dataset = pydicom.dcmread(original)

    anonymous = requests.Session()
    with pytest.raises(requests.HTTPError) as refused:
        client(port, anonymous).store_instances([dataset])
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = requests.Session()
    wrong.auth = ("alice", "wrong")
    with pytest.raises(requests.HTTPError) as refused:
        client(port, wrong).store_instances([dataset])
    assert refused.value.response.status_code == 401

    session = requests.Session()
    session.auth = ("alice", "correct horse")
    response = client(port, session).store_instances([dataset])
    assert len(response.ReferencedSOPSequence) == 1
    [row] = running.wait_rows(1, "received")
    assert (row.http_user, row.calling_ae) == ("alice", None)


def test_each_refused_part_is_named_with_its_reason_and_the_rest_is_kept(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)
    good = make_instance(tmp_path / "good.dcm", study_uid="1.2.3.1")
    other = make_instance(tmp_path / "other.dcm", study_uid="1.2.3.2")
    body, content_type = multipart(
        [
            ("application/dicom", good.read_bytes()),
            ("application/dicom", other.read_bytes()),  # not the URL's study
            ("application/dicom", b"not DICOM at all" * 20),
            ("text/plain", b"hello"),
        ]
    )
    url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies/1.2.3.1"
    response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/dicom+json"
    result = pydicom.Dataset.from_json(response.text)
    [stored] = result.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == pydicom.dcmread(good).SOPInstanceUID
    [mismatch] = result.FailedSOPSequence
    assert mismatch.ReferencedSOPInstanceUID == pydicom.dcmread(other).SOPInstanceUID
    assert mismatch.FailureReason == STUDY_MISMATCH
    assert [item.FailureReason for item in result.OtherFailuresSequence] == [CANNOT_UNDERSTAND] * 2
    assert result.RetrieveURL == f"http://127.0.0.1:{port}/dicomweb/{AE}/studies/1.2.3.1"
    [row] = running.wait_rows(1, "received")
    assert dataset_bytes(Path(row.path)) == dataset_bytes(good)
    assert not list((running.spool / ".tmp").rglob("*.part"))


def test_requests_refused_whole_say_why(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path, "max_parts = 2\n")
    running = start_adapter(path)
    instance = make_instance(tmp_path / "one.dcm").read_bytes()
    base = f"http://127.0.0.1:{port}/dicomweb"

    def post(url: str, body: bytes, content_type: str) -> requests.Response:
        return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)

    body, content_type = multipart([("application/dicom", instance)])
    assert post(f"{base}/NOSUCHAE/studies", body, content_type).status_code == 404
    assert post(f"{base}/{AE}/studies", instance, "application/dicom").status_code == 415
    assert post(f"{base}/{AE}/studies", b"", content_type).status_code == 400  # no parts
    assert post(f"{base}/{AE}/studies", b"garbage", content_type).status_code == 400
    truncated = body[: len(body) // 2]
    cut = post(f"{base}/{AE}/studies", truncated, content_type)
    assert cut.status_code == 409  # the one part was cut short: nothing stored
    [cut_part] = pydicom.Dataset.from_json(cut.text).FailedSOPSequence  # named by its meta
    assert cut_part.FailureReason == 0xC000
    assert running.rows() == []
    # Cut off at the third part: the answer still says what the first two became,
    # so that a client knows what a retry must send again.
    first, second = (make_instance(tmp_path / f"{n}.dcm").read_bytes() for n in ("a", "b"))
    three, three_type = multipart(
        [("application/dicom", data) for data in (first, second, instance)]
    )
    too_many = post(f"{base}/{AE}/studies", three, three_type)
    assert too_many.status_code == 413
    assert too_many.headers["Content-Type"] == "application/dicom+json"
    kept = pydicom.Dataset.from_json(too_many.text).ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in kept] == [
        pydicom.dcmread(BytesIO(data)).SOPInstanceUID for data in (first, second)
    ]
    assert len(running.wait_rows(2, "received")) == 2
    assert not list((running.spool / ".tmp").rglob("*.part"))


def multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/related body of ``(Content-Type, bytes)`` parts, and its Content-Type."""
    boundary = base64.b32encode(b"dicom-adapter-test").decode().rstrip("=")
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
        for kind, data in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_http_add_user_and_add_token_let_those_sign_in(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    users, tokens = tmp_path / "users", tmp_path / "tokens"
    path, port = http_config(tmp_path, f"users = {users}\ntokens = {tokens}\n")
    added = cli_input("correct horse\n", "http", "add-user", "bob", "--config", str(path))
    assert added.returncode == 0, added.stderr
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    assert "correct horse" not in users.read_text() and users.read_text().startswith(
        "bob:user:$scrypt$"
    )
    made = cli_input("", "http", "add-token", "pacs", "--role", "admin", "--config", str(path))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token not in tokens.read_text()
    short = cli_input("short\n", "http", "add-user", "eve", "--config", str(path))
    assert short.returncode == 1 and "at least 8 characters" in short.stderr

    running = start_adapter(path)
    files = make_study(tmp_path / "study", 2)
    by_password = requests.Session()
    by_password.auth = ("bob", "correct horse")
    client(port, by_password).store_instances([pydicom.dcmread(files[0])])
    by_token = requests.Session()
    by_token.headers["Authorization"] = f"Bearer {token}"
    client(port, by_token).store_instances([pydicom.dcmread(files[1])])
    rows = running.wait_rows(2, "received")
    assert sorted(row.http_user for row in rows) == ["bob", "pacs"]


def cli_input(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_stow_rs_example_runs_as_written(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    """The README's curl example, run by bash in the config's folder (as after ``make run``)."""
    for tool in ("curl", "sqlite3"):
        require_tool(tool)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## DICOMweb (STOW-RS)") :]
    script = section[section.index("```sh\n") + 6 : section.index("```\n", section.index("```sh"))]
    path, port = http_config(tmp_path)
    text = path.read_text().replace("sqlite:///ledger.db", "sqlite:///var/ledger.db")
    path.write_text(text)
    running = start_adapter(path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    command = Path(sys.executable).parent / "dicom-adapter"
    (tmp_path / ".venv" / "bin" / "dicom-adapter").symlink_to(command)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("8080", str(port))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    [at] = [n for n, line in enumerate(lines) if line.startswith("{")]
    answer = pydicom.Dataset.from_json(lines[at])
    assert len(answer.ReferencedSOPSequence) == 5
    running.wait_rows(5, "received")
    rows = lines[at + 1 :]
    assert len(rows) == 5 and all(row.startswith("received||127.0.0.1:") for row in rows), rows


def test_config_check_refuses_a_listener_off_loopback_without_https_and_sign_in(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, free_port(), "[http]\nhost = 0.0.0.0\nport = 8443\n")
    problems = [str(problem) for problem in check_config(path)]
    assert problems == [
        f"{path} [http] certificate: is required: host = 0.0.0.0 is reachable from the "
        "network, so the listener needs HTTPS (certificate and private_key)",
        f"{path} [http] users: is required (or tokens): host = 0.0.0.0 is reachable from the "
        "network, so nobody may use the listener without signing in",
    ]


def test_a_stalled_body_is_cut_off_and_nothing_of_it_is_kept(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path, "timeout = 1\n")
    running = start_adapter(path)
    body, content_type = multipart(
        [("application/dicom", make_instance(tmp_path / "a.dcm").read_bytes())]
    )
    head = (
        f"POST /dicomweb/{AE}/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(head + body[: len(body) - 100])  # then nothing more: a slow-loris body
        began = time.monotonic()
        answer = slow.recv(65536).decode()
        waited = time.monotonic() - began
    assert answer.startswith("HTTP/1.1 408 "), answer
    assert 0.5 < waited < 5
    assert running.rows() == []
    assert not list((running.spool / ".tmp").rglob("*.part"))


def test_a_connection_without_a_whole_request_head_in_time_is_closed(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path, "timeout = 1\n")
    start_adapter(path)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as silent,
        socket.create_connection(("127.0.0.1", port), timeout=0.2) as trickling,
    ):
        began = time.monotonic()
        trickling.sendall(b"POST /dicomweb/")
        while True:  # a byte of the head every 0.2 s, never the end of it
            try:
                if trickling.recv(1) == b"":
                    break
            except TimeoutError:
                trickling.sendall(b"a")
            assert time.monotonic() - began < 10, "a trickled head kept the connection open"
        assert 0.5 < time.monotonic() - began < 5
        assert silent.recv(1) == b""  # closed, not held open for ever
        assert time.monotonic() - began < 5


def test_one_host_cannot_take_every_connection(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path, "timeout = 60\n")
    running = start_adapter(path)
    with contextlib.ExitStack() as held:
        for _ in range(MAX_PER_HOST):  # from another loopback address: another host
            held.enter_context(_connect_from("127.0.0.2", port))
        with _connect_from("127.0.0.2", port) as one_too_many:
            assert one_too_many.recv(1) == b""  # closed at once
        body, content_type = multipart(
            [("application/dicom", make_instance(tmp_path / "a.dcm").read_bytes())]
        )
        url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"
        answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=10)
        assert answer.status_code == 200
    running.wait_rows(1, "received")


def _connect_from(host: str, port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(host, 0))
    return connection


def test_a_stopped_http_listener_is_a_problem_and_fails_the_liveness_check(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, _ = http_config(tmp_path)
    running = start_adapter(path)
    listener = running.adapter.http
    assert listener is not None and listener.running
    assert running.adapter.problems() == []
    listener.server.should_exit = True  # its thread ends as if uvicorn had died
    deadline = time.monotonic() + 10
    while listener.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.adapter.problems() == ["the HTTP listener has stopped"]
    assert not running.adapter.alive()


def test_a_reload_that_raises_min_free_refuses_stow_rs_at_once(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)
    path.write_text(path.read_text().replace("min_free = 0", "min_free = 99%"))
    assert running.adapter.reload()
    body, content_type = multipart(
        [("application/dicom", make_instance(tmp_path / "a.dcm").read_bytes())]
    )
    url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"
    answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=10)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "60"
    assert running.rows() == []


def test_a_body_of_junk_parts_logs_a_few_lines_and_counts_the_rest(
    start_adapter: Callable[[Path], RunningAdapter],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="web.stow_service")
    path, port = http_config(tmp_path)
    start_adapter(path)
    body, content_type = multipart([("application/dicom", b"junk" * 40)] * 50)
    url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"
    answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == 409
    assert len(pydicom.Dataset.from_json(answer.text).OtherFailuresSequence) == 50
    lines = [r.getMessage() for r in caplog.records if r.name == "web.stow_service"]
    assert sum("STOW-RS part from" in line for line in lines) == LOGGED_REFUSALS
    assert any(line.endswith(": 0 stored, 50 refused") for line in lines)


def test_a_disk_error_while_storing_is_answered_and_leaves_nothing(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)

    def disk_fails(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    running.adapter.http_writer.open_incoming = disk_fails  # type: ignore[method-assign]
    body, content_type = multipart(
        [("application/dicom", make_instance(tmp_path / "a.dcm").read_bytes())]
    )
    url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"
    answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == 500
    [failed] = pydicom.Dataset.from_json(answer.text).FailedSOPSequence
    assert failed.FailureReason == 0x0110  # Processing failure, as a C-STORE would say
    assert failed.ReferencedSOPInstanceUID == pydicom.dcmread(tmp_path / "a.dcm").SOPInstanceUID
    assert running.rows() == []
    assert not list((running.spool / ".tmp").rglob("*.part"))


pki = certificates  # test_tls's throwaway CAs and certificates, as a fixture here too


def test_over_https_with_client_certificates_and_sign_in_end_to_end(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, pki: Pki
) -> None:
    users = tmp_path / "users"
    write_entry(users, "alice", "user", hash_password("correct horse"))
    keys = (
        f"certificate = {pki['server']}\nprivate_key = {pki['server-key']}\n"
        f"ca_certificates = {pki['ca']}\nusers = {users}\n"
    )
    path, port = http_config(tmp_path, keys)
    running = start_adapter(path)
    files = make_study(tmp_path / "study", 2)
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, wins over verify
    session.verify = str(pki["ca"])
    session.cert = (str(pki["client"]), str(pki["client-key"]))
    session.auth = ("alice", "correct horse")
    web = DICOMwebClient(f"https://127.0.0.1:{port}/dicomweb/{AE}", session=session)
    response = web.store_instances([pydicom.dcmread(f) for f in files])
    assert len(response.ReferencedSOPSequence) == 2
    rows = running.wait_rows(2, "received")
    assert {(row.http_user, row.peer_address[:10]) for row in rows} == {("alice", "127.0.0.1:")}
    stored = sorted(dataset_bytes(Path(row.path)) for row in rows)
    assert stored == sorted(dataset_bytes(f) for f in files)

    stranger = requests.Session()  # a certificate from a CA the listener does not trust
    stranger.trust_env = False
    stranger.verify = str(pki["ca"])
    stranger.cert = (str(pki["stranger"]), str(pki["stranger-key"]))
    stranger.auth = session.auth
    body, content_type = multipart([("application/dicom", files[0].read_bytes())])
    # refused in the handshake; under TLS 1.3 the client may see only the connection close
    with pytest.raises(requests.exceptions.ConnectionError):
        stranger.post(
            f"{web.base_url}/studies", data=body, headers={"Content-Type": content_type}, timeout=5
        )
    plain = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"  # not TLS: nothing answers it
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(plain, data=b"", timeout=5)
    assert len(running.rows()) == 2
    session.close()  # else the listener's TLS shutdown waits for it


def test_one_http_user_cannot_replace_what_another_stored_from_the_same_host(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    """duplicates = replace (the default) replaces only from the same source; over
    STOW-RS the source is the HTTP user and host, not the host alone."""
    users = tmp_path / "users"
    for name in ("alice", "bob"):
        write_entry(users, name, "user", hash_password(f"{name}'s password"))
    path, port = http_config(tmp_path, f"users = {users}\n")
    running = start_adapter(path)
    first, second = two_versions(tmp_path)
    third = make_instance(tmp_path / "v3.dcm", patient_id="THIRD", **VERSION_UIDS)

    def store(name: str, file: Path) -> None:
        session = requests.Session()
        session.auth = (name, f"{name}'s password")
        client(port, session).store_instances([pydicom.dcmread(file)])

    store("alice", first)
    [kept] = running.wait_rows(1)
    store("bob", second)  # differs, from another user on the same host: set aside
    rows = running.wait_rows(2)
    assert [(r.state, r.http_user, r.patient_id) for r in rows] == [
        ("received", "alice", "FIRST"),
        ("superseded", "bob", "SECOND"),
    ]
    [why, _moved] = [reason for _, _, reason in events_of(running, rows[1].id)]
    assert "comes from HTTP user bob@127.0.0.1, not from its source HTTP user alice@" in why
    store("alice", third)  # alice's own newer copy replaces hers
    rows = running.wait_rows(3)
    assert [(r.state, r.patient_id) for r in rows] == [
        ("superseded", "FIRST"),
        ("superseded", "SECOND"),
        ("received", "THIRD"),
    ]
    assert rows[0].id == kept.id


def test_a_2_gb_part_near_the_min_free_floor_is_refused_in_bounded_memory(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    if not reset_peak():
        pytest.skip("cannot reset VmHWM (/proc/self/clear_refs)")
    spool = tmp_path / "spool"
    spool.mkdir()
    free = shutil.disk_usage(spool).free
    path, port = http_config(tmp_path)
    # 64 MiB above the floor: the part starts, and stops long before 2 GB.
    text = path.read_text().replace("min_free = 0", f"min_free = {free - 64 * 2**20}")
    path.write_text(text)
    running = start_adapter(path)
    header = make_instance(tmp_path / "head.dcm", rows=2, columns=2).read_bytes()
    header = header[: header.rindex(b"\xe0\x7f\x10\x00")]  # up to its Pixel Data element
    size = 2 * 2**30
    boundary = "huge-part"

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield header + b"\xe0\x7f\x10\x00OB\x00\x00" + (size).to_bytes(4, "little")
        zeros = bytes(2**20)
        for _ in range(size // len(zeros)):
            yield zeros
        yield f"\r\n--{boundary}--\r\n".encode()

    before = proc_status()
    response = requests.post(
        f"http://127.0.0.1:{port}/dicomweb/{AE}/studies",
        data=body(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=600,
    )
    grown = proc_status()["VmHWM"] - before["VmRSS"]
    assert response.status_code == 409, response.text
    [failed] = pydicom.Dataset.from_json(response.text).FailedSOPSequence
    assert failed.FailureReason == 0xA700
    assert grown < 64 * 2**20, f"peak RSS grew {grown / 2**20:.1f} MiB"
    assert running.rows() == []
    assert not list((running.spool / ".tmp").rglob("*.part"))


def test_a_users_file_set_but_not_made_yet_still_keeps_everyone_out(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path, f"users = {tmp_path / 'not-made-yet'}\n")
    running = start_adapter(path)
    instance = make_instance(tmp_path / "a.dcm").read_bytes()
    body, content_type = multipart([("application/dicom", instance)])
    url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"
    answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == 401
    guessed = requests.post(
        url, data=body, headers={"Content-Type": content_type}, auth=("root", "root"), timeout=30
    )
    assert guessed.status_code == 401
    assert running.rows() == []


def test_a_part_whose_meta_names_no_sop_instance_is_refused(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)
    original = make_instance(tmp_path / "a.dcm")
    meta = encode_meta(
        [
            (0x00020001, b"OB", b"\x00\x01"),
            (0x00020002, b"UI", CT_IMAGE_STORAGE.encode()),
            (0x00020010, b"UI", b"1.2.840.10008.1.2.1"),
        ]
    )
    part = bytes(PREAMBLE) + b"DICM" + meta + dataset_bytes(original)
    body, content_type = multipart([("application/dicom", part)])
    url = f"http://127.0.0.1:{port}/dicomweb/{AE}/studies"
    answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == 409
    [failed] = pydicom.Dataset.from_json(answer.text).OtherFailuresSequence
    assert failed.FailureReason == CANNOT_UNDERSTAND
    assert running.rows() == []
