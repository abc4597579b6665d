"""The status pages over HTTP: who may read, what patient data shows, and the actions' guards.

The browser drives the page in tests/test_status_page.py; here plain HTTP
requests check the rules each route keeps, on a real adapter.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from sqlalchemy.exc import OperationalError
from starlette.requests import Request

from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.states import TaskState
from ledger.store import Ledger
from ledger.tasks import Tasks
from tests.conftest import RunningAdapter, free_port, wait_for, write_config
from tests.dicom import make_study
from tests.test_exports_ledger import REFUSED, attempt, queue
from tests.test_stow import client, http_config
from web.access import Access, Refused
from web.auth import Authenticator, AuthFileError, hash_password, write_entry

PATIENT = "PAT-PAGES-4711"


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic("alice", "alice's password")
USER = basic("bob", "bob's password")


def users_file(tmp_path: Path) -> Path:
    users = tmp_path / "users"
    write_entry(users, "alice", "admin", hash_password("alice's password"))
    write_entry(users, "bob", "user", hash_password("bob's password"))
    return users


def store_study(port: int, tmp_path: Path, headers: dict[str, str] | None = None) -> str:
    """Two instances of one study over STOW-RS; its Study Instance UID."""
    import pydicom

    files = make_study(tmp_path / "study", 2, patient_id=PATIENT)
    session = requests.Session()
    session.headers.update(headers or {})
    client(port, session).store_instances([pydicom.dcmread(f) for f in files])
    return str(pydicom.dcmread(files[0]).StudyInstanceUID)


def test_anonymous_readers_on_loopback_see_the_page_without_patient_data(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path, "show_phi = true\n")
    running = start_adapter(path)
    uid = store_study(port, tmp_path)
    running.wait_rows(2, "received")
    base = f"http://127.0.0.1:{port}"
    page = requests.get(f"{base}/", timeout=30)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert 'data-ae="DICOMADAPTER"' in page.text
    assert re.search(r'data-state="received">2<', page.text)
    assert "Patient data: hidden" in page.text and "anonymous, read-only" in page.text
    assert PATIENT not in page.text  # show_phi is for signed-in users only
    assert "/actions/" not in page.text
    study = requests.get(f"{base}/studies/{uid}", timeout=30)
    assert study.status_code == 200 and study.text.count("<tr>") >= 3
    assert PATIENT not in study.text
    assert requests.get(f"{base}/studies/1.2.3.999", timeout=30).status_code == 404
    assert requests.get(f"{base}/studies/..%2F..%2Fetc", timeout=30).status_code == 404
    health = requests.get(f"{base}/healthz", timeout=30)
    assert (health.status_code, health.json()["healthy"]) == (200, True)
    metrics = requests.get(f"{base}/metrics", timeout=30)
    assert metrics.status_code == 200 and "dicom_adapter_node{" in metrics.text


def test_signed_in_users_see_patient_ids_only_with_show_phi(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    users = users_file(tmp_path)
    path, port = http_config(tmp_path, f"users = {users}\nshow_phi = true\n")
    running = start_adapter(path)
    uid = store_study(port, tmp_path, USER)
    running.wait_rows(2, "received")
    base = f"http://127.0.0.1:{port}"
    page = requests.get(f"{base}/", headers=USER, timeout=30)
    assert PATIENT in page.text and "Patient data: shown" in page.text
    assert PATIENT in requests.get(f"{base}/studies/{uid}", headers=USER, timeout=30).text
    assert PATIENT not in requests.get(f"{base}/", timeout=30).text  # anonymous
    wrong = requests.get(f"{base}/", headers=basic("bob", "guess"), timeout=30)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")


def test_anonymous_pages_never_asks_everyone_to_sign_in(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    users = users_file(tmp_path)
    path, port = http_config(tmp_path, f"users = {users}\nanonymous_pages = never\n")
    start_adapter(path)
    base = f"http://127.0.0.1:{port}"
    assert requests.get(f"{base}/", timeout=30).status_code == 401
    assert requests.get(f"{base}/metrics", timeout=30).status_code == 401
    assert requests.get(f"{base}/", headers=USER, timeout=30).status_code == 200
    assert requests.get(f"{base}/healthz", timeout=30).status_code == 200  # for load balancers


@pytest.mark.parametrize(
    ("anonymous_pages", "client_host", "allowed"),
    [
        ("loopback", "127.0.0.1", True),
        ("loopback", "::1", True),
        ("loopback", "10.1.2.3", False),
        ("anywhere", "10.1.2.3", True),
        ("never", "127.0.0.1", False),
    ],
)
def test_who_reads_anonymously(
    tmp_path: Path, anonymous_pages: str, client_host: str, allowed: bool
) -> None:
    access = Access(Authenticator(users_file(tmp_path), None), anonymous_pages)
    scope = {"type": "http", "headers": [], "client": (client_host, 5000)}
    if allowed:
        assert asyncio.run(access.reader(Request(scope))) is None
    else:
        with pytest.raises(Refused) as refused:
            asyncio.run(access.reader(Request(scope)))
        assert refused.value.status == 401


def failed_export_ledger(tmp_path: Path) -> tuple[str, int, list[int]]:
    """A SQLite ledger holding one failed export with two refused files, before any adapter."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(url)
    upgrade(engine)
    exports = Exports(Ledger(engine))
    export_id = queue(exports, 2)
    attempt(exports, export_id, [REFUSED, REFUSED])
    items = [item.id for item in exports.items(export_id)]
    engine.dispose()
    return url, export_id, items


def test_actions_need_an_admin_a_confirmation_and_the_page_s_token(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    url, export_id, items = failed_export_ledger(tmp_path)
    users = users_file(tmp_path)
    path, port = http_config(tmp_path, f"users = {users}\n")
    path.write_text(path.read_text().replace("sqlite:///ledger.db", url))
    running = start_adapter(path)
    base = f"http://127.0.0.1:{port}"
    retry = f"{base}/actions/tasks/{export_id}/retry"
    assert requests.get(retry, timeout=30).status_code == 401  # anonymous
    assert requests.get(retry, headers=USER, timeout=30).status_code == 403  # not an admin
    page = requests.get(f"{base}/", headers=ADMIN, timeout=30)
    assert f'href="/actions/tasks/{export_id}/retry"' in page.text
    assert f'href="/actions/files/{items[0]}/discard"' in page.text
    confirm = requests.get(retry, headers=ADMIN, timeout=30)
    assert confirm.status_code == 200 and "Retry export" in confirm.text
    [token] = re.findall(r'name="csrf" value="([0-9a-f]+)"', confirm.text)
    forged = requests.post(retry, data={"csrf": "0" * 64}, headers=ADMIN, timeout=30)
    assert forged.status_code == 403
    assert Tasks(running.ledger).get(export_id).state == TaskState.FAILED
    discard = f"{base}/actions/files/{items[0]}/discard"
    assert requests.post(discard, data={"csrf": token}, headers=ADMIN, timeout=30).status_code == (
        403  # a token is for one action only
    )
    discard_page = requests.get(discard, headers=ADMIN, timeout=30)
    [discard_token] = re.findall(r'name="csrf" value="([0-9a-f]+)"', discard_page.text)
    done = requests.post(
        discard, data={"csrf": discard_token}, headers=ADMIN, timeout=30, allow_redirects=False
    )
    assert (done.status_code, done.headers["location"]) == (303, "/")
    assert [item.state for item in Exports(running.ledger).items(export_id)] == [
        "discarded",
        "failed",
    ]
    unknown = f"{base}/actions/tasks/999/retry"
    assert requests.get(unknown, headers=ADMIN, timeout=30).status_code == 404
    assert (
        requests.get(
            f"{base}/actions/tasks/{export_id}/explode", headers=ADMIN, timeout=30
        ).status_code
        == 404
    )


def test_healthz_says_unhealthy_when_the_ledger_does_not_answer(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)

    def down() -> dict[str, str]:
        raise OSError("could not connect to server: Connection refused")

    running.adapter.ledger.service_state = down  # type: ignore[method-assign]
    answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
    assert answer.status_code == 503
    assert answer.json() == {
        "healthy": False,
        "problems": ["health unknown: could not connect to server: Connection refused"],
    }


def test_patient_ids_in_job_text_are_blanked_out_for_viewers_without_phi(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    """A job grouped by Patient ID names the patient in its events, and a failing command
    may print it: the timeline and the errors blank it out unless PHI may be shown."""
    users = users_file(tmp_path)
    aes = (
        "[ae:DICOMADAPTER]\nprocessor = command\ngroup_by = 0010,0020\ntimeout = 0.5\n"
        "retries = 0\ncommand = /bin/sh -c 'echo cannot submit for patient {group_key} >&2; "
        "exit 1'\n"
    )
    port = free_port()
    path = write_config(
        tmp_path, free_port(), f"[http]\nport = {port}\nusers = {users}\nshow_phi = true\n", aes=aes
    )
    running = start_adapter(path)
    uid = store_study(port, tmp_path, USER)
    wait_for(lambda: Tasks(running.ledger).listing(state=TaskState.FAILED), timeout=30)
    base = f"http://127.0.0.1:{port}"
    for url in (f"{base}/", f"{base}/studies/{uid}"):
        anonymous = requests.get(url, timeout=30).text
        assert PATIENT not in anonymous and "[patient data]" in anonymous
        assert PATIENT in requests.get(url, headers=USER, timeout=30).text  # show_phi, signed in


def test_the_pages_answer_503_in_one_line_when_the_ledger_does_not_answer(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    path, port = http_config(tmp_path)
    running = start_adapter(path)

    def down(*_args: object) -> None:
        raise OperationalError("SELECT", {}, Exception("could not connect to server"))

    running.adapter.ledger.read = down  # type: ignore[method-assign]
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/studies/1.2.3", timeout=30)
    finally:
        del running.adapter.ledger.read  # the service's own ticks read it too
    assert (answer.status_code, answer.text) == (
        503,
        "the ledger does not answer: try again shortly\n",
    )


def test_a_user_name_longer_than_the_ledger_keeps_is_refused(tmp_path: Path) -> None:
    """instances.http_user holds 64 characters: longer names would share a source."""
    with pytest.raises(AuthFileError, match="longer than 64 characters"):
        write_entry(tmp_path / "users", "a" * 65, "user", hash_password("x"))
    (tmp_path / "hand-made").write_text(f"{'b' * 65}:user:{hash_password('x')}\n")
    with pytest.raises(AuthFileError, match=r"line 1: .*at most 64 characters"):
        Authenticator(tmp_path / "hand-made", None)
