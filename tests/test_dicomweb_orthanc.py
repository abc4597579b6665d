"""DICOMweb both ways with Orthanc and its DICOMweb plugin (``tests/peers/orthanc.py``).

1. The adapter exports to Orthanc over STOW-RS (``send --wait``, and a
   ``forward`` AE while Orthanc is down, then up), and Orthanc's
   ``/instances`` holds every instance, byte for byte; ``echo`` queries it.
2. Orthanc pushes a study to the adapter's STOW-RS listener with its
   DICOMweb client (``POST /dicom-web/servers/{id}/stow``): chunked, its
   own 73-character unquoted boundary, signed in; the ledger has the rows.

Both sides sign in: Orthanc's ``RegisteredUsers``, the adapter's users
file.  Without Orthanc and its plugin the tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import read_file_meta_info

from tests.conftest import RunningAdapter, free_port, wait_for, write_config
from tests.dicom import dataset_bytes, make_study
from tests.peers import orthanc as orthanc_peer
from tests.peers.orthanc import Orthanc
from tests.peers.send import send_files
from tests.test_exports import cli, tasks_for, wait_state
from web.auth import hash_password, write_entry

AE = "DICOMADAPTER"


def require_orthanc() -> None:
    """Skip without Orthanc and its DICOMweb plugin, but fail under CI=true."""
    if orthanc_peer.available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(orthanc_peer.MISSING)
    pytest.skip(orthanc_peer.MISSING)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Make an Orthanc on fresh ports (started unless asked not to); all stop at the end."""
    require_orthanc()
    made: list[Orthanc] = []

    def make(servers: dict[str, dict[str, Any]] | None = None, start: bool = True) -> Orthanc:
        peer = Orthanc(tmp_path / f"orthanc-{len(made)}", free_port(), free_port(), servers)
        made.append(peer)
        if start:
            peer.start()
        return peer

    yield make
    for peer in made:
        peer.stop()


def destination(name: str, peer: Orthanc, password: str, keys: str = "") -> str:
    """A ``type = dicomweb`` destination for ``peer``, signing in as its user."""
    return (
        f"[destination:{name}]\ntype = dicomweb\nurl = {peer.dicomweb_url}\n"
        f"username = {peer.auth[0]}\npassword_file = {password}\n{keys}"
    )


def password_file(folder: Path, name: str, password: str) -> Path:
    path = folder / name
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def test_send_wait_exports_a_study_to_orthanc_byte_identical_and_echo_checks_it(
    start_adapter: Callable[[Path], RunningAdapter],
    orthanc: Callable[..., Orthanc],
    tmp_path: Path,
) -> None:
    peer = orthanc()
    good = password_file(tmp_path, "orthanc.password", peer.auth[1])
    wrong = password_file(tmp_path, "wrong.password", "not-it")
    config = write_config(
        tmp_path,
        free_port(),
        destination("ORTHANC", peer, str(good), "max_parts = 2\n")
        + destination("WRONG", peer, str(wrong)),
    )
    start_adapter(config)
    originals = make_study(tmp_path / "study", 5)

    sent = cli("send", "--dest", "ORTHANC", "--wait", str(tmp_path / "study"), config=config)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines()[-1].endswith("succeeded: 5 of 5 files sent")
    stored = peer.instances()
    by_uid = {str(_uid(path)): path for path in originals}
    assert sorted(stored) == sorted(by_uid)
    for uid, orthanc_id in stored.items():
        assert peer.request("GET", f"/instances/{orthanc_id}/file") == by_uid[uid].read_bytes()

    echo = cli("echo", "ORTHANC", config=config)
    assert echo.returncode == 0, echo.stderr
    assert re.fullmatch(
        rf"ORTHANC \({re.escape(peer.dicomweb_url)}\): QIDO-RS answered 200 in \d+ ms\n",
        echo.stdout,
    )
    refused = cli("echo", "WRONG", config=config)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"Error: WRONG ({peer.dicomweb_url}): HTTP 401 Unauthorized: "
        "sign-in refused: check username and password_file, or token_file\n"
    )


def test_a_forwarded_study_waits_for_orthanc_to_come_up_then_arrives(
    start_adapter: Callable[[Path], RunningAdapter],
    orthanc: Callable[..., Orthanc],
    tmp_path: Path,
) -> None:
    peer = orthanc(start=False)  # down: its port refuses connections
    password = password_file(tmp_path, "orthanc.password", peer.auth[1])
    port = free_port()
    config = write_config(
        tmp_path,
        port,
        destination("ORTHANC", peer, str(password), "retries = 5\nretry_delay = 0.5\n"),
        aes=f"[ae:{AE}]\nprocessor = forward\ndestinations = ORTHANC\ntimeout = 0.3",
    )
    running = start_adapter(config)
    originals = make_study(tmp_path / "study", 3)
    assert [status for _, status in send_files("127.0.0.1", port, originals, called_ae=AE)] == [
        0
    ] * 3

    wait_for(
        lambda: any(t.attempts >= 1 and t.state == "pending" for t in tasks_for(running, "ORTHANC"))
    )
    [task] = tasks_for(running, "ORTHANC")
    assert task.submitter == "stow" and task.origin == "forward"
    assert "cannot connect" in (task.last_error or "")
    peer.start()
    task = wait_state(running, task.id, "succeeded", timeout=30)
    assert task.attempts >= 2 and task.last_error is None
    stored = peer.instances()
    assert sorted(stored) == sorted(str(_uid(path)) for path in originals)
    for path in originals:
        orthanc_id = stored[str(_uid(path))]
        copy = tmp_path / "from-orthanc.dcm"
        copy.write_bytes(peer.request("GET", f"/instances/{orthanc_id}/file"))
        assert dataset_bytes(copy) == dataset_bytes(path)


def test_orthanc_pushes_a_study_to_the_adapter_over_stow_rs(
    start_adapter: Callable[[Path], RunningAdapter],
    orthanc: Callable[..., Orthanc],
    tmp_path: Path,
) -> None:
    users = tmp_path / "users"
    write_entry(users, "orthanc-push", "user", hash_password("push secret"))
    http_port = free_port()
    config = write_config(tmp_path, free_port(), f"[http]\nport = {http_port}\nusers = {users}\n")
    running = start_adapter(config)
    adapter = {
        "Url": f"http://127.0.0.1:{http_port}/dicomweb/{AE}/",
        "Username": "orthanc-push",
        "Password": "push secret",
    }
    peer = orthanc({"adapter": adapter})
    originals = make_study(tmp_path / "study", 4)
    studies = {peer.upload(path)["ParentStudy"] for path in originals}

    pushed = peer.request(
        "POST", "/dicom-web/servers/adapter/stow", json.dumps({"Resources": list(studies)}).encode()
    )
    assert json.loads(pushed)["InstancesCount"] == "4"
    rows = {row.sop_instance_uid: row for row in running.wait_rows(4, "received")}
    for path in originals:
        row = rows[str(_uid(path))]
        assert (row.called_ae, row.http_user, row.calling_ae) == (AE, "orthanc-push", None)
        assert dataset_bytes(Path(row.path)) == dataset_bytes(path)


def _uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
