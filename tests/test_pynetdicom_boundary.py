"""The pynetdicom boundary: every hook listed, checked, used; a version mismatch is one line.

The hooks run in the SCP's own process, so their use is read from its log:
each hook logs its first use at DEBUG, and the SCP process's records come
to this process through the pipe (caplog).  Real peers drive every path the
hooks serve: DCMTK storescu and echoscu (the direct path), raw PDUs for the
hand-over to pynetdicom, a broken data set, a connection that never asks,
and a peer whose PDUs make pynetdicom's state machine raise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import dimse.pynetdicom_boundary as boundary
from dimse import upper_layer as ul
from dimse.pynetdicom_boundary.registry import PynetdicomMismatch
from private_api import Requirement
from tests.conftest import RunningAdapter, wait_for
from tests.dcmtk import echoscu, storescu
from tests.dicom import make_study
from tests.test_direct_path import CONTEXT, associate, command, instance, store_status

ROOT = Path(__file__).resolve().parent.parent
# Written by hand, apart from the registry: a hook added or removed must be listed here too.
EXPECTED_HOOKS = {
    "wake_on_events",
    "no_zero_sleep",
    "fsm_events",
    "close_left_open",
    "stop_waiting_for_request",
    "read_through",
    "stream_to_files",
    "register_server",
    "share_contexts",
}


def test_every_hook_is_listed_and_explained() -> None:
    assert set(boundary.HOOKS) == EXPECTED_HOOKS
    for hook in boundary.HOOKS.values():
        assert hook.why and hook.requires, hook.name


def test_the_pin_is_the_installed_version_and_pyproject_s() -> None:
    import pynetdicom

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("pynetdicom")]
    assert pins == [f"pynetdicom=={boundary.PINNED_VERSION}"]
    assert pynetdicom.__version__ == boundary.PINNED_VERSION


@pytest.mark.parametrize(
    ("requirement", "problem"),
    [
        (Requirement("pynetdicom.dul:DULServiceProvider.nothing"), "is missing"),
        (Requirement("pynetdicom.nosuchmodule:X"), "is missing"),
        (
            Requirement("pynetdicom.transport:AssociationSocket.recv", params=("self", "n")),
            "takes (self, nr_bytes), not (self, n)",
        ),
        (
            Requirement("pynetdicom.dul:DULServiceProvider.run_reactor", uses="_no_such_flag"),
            "no longer uses _no_such_flag",
        ),
    ],
)
def test_a_requirement_that_is_gone_says_what(requirement: Requirement, problem: str) -> None:
    assert requirement.problem() is not None
    assert requirement.problem().endswith(problem)  # type: ignore[union-attr]


def test_every_requirement_holds_for_the_pinned_version() -> None:
    broken = {
        (hook.name, r.target): r.problem()
        for hook in boundary.HOOKS.values()
        for r in hook.requires
        if r.problem() is not None
    }
    assert broken == {}


def test_a_broken_hook_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom.transport import AssociationSocket

    monkeypatch.delattr(AssociationSocket, "recv")
    with pytest.raises(PynetdicomMismatch) as caught:
        boundary.registry.check_hooks("3.0.4")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "pynetdicom 3.0.4 is installed, the adapter requires pynetdicom==3.0.4: hook "
        "read_through: pynetdicom.transport:AssociationSocket.recv is missing"
    )


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).parent / "dicom-adapter")],
        [sys.executable, str(ROOT / "adapter.py")],
    ],
    ids=["dicom-adapter", "adapter.py"],
)
def test_another_pynetdicom_version_stops_run_with_one_line(
    command: list[str], config_path: Path, tmp_path: Path
) -> None:
    """``run`` against a pynetdicom that claims another version: exit 1, one line, no traceback."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text("import pynetdicom\npynetdicom.__version__ = '3.0.5'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    result = subprocess.run(
        [*command, "run", "--config", str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: pynetdicom 3.0.5 is installed, the adapter requires pynetdicom==3.0.4: its "
        "hooks into pynetdicom internals (dimse/pynetdicom_boundary) are checked against that "
        "version only; install pynetdicom==3.0.4\n"
    )


# -- every hook is used by real associations ---------------------------------------------


@pytest.fixture
def debug_adapter(start_adapter, config_path: Path, caplog: pytest.LogCaptureFixture):
    """An adapter whose SCP process logs DEBUG (it takes the level at start)."""
    caplog.set_level(logging.DEBUG)
    return start_adapter(config_path)


def used_hooks(caplog: pytest.LogCaptureFixture) -> set[str]:
    prefix = "pynetdicom hook used: "
    return {
        r.getMessage().removeprefix(prefix)
        for r in caplog.get_records("setup") + caplog.records  # the server's hooks run at start
        if r.getMessage().startswith(prefix)
    }


def store_handed_over(port: int, uid: str, data: bytes) -> socket.socket:
    """A C-STORE whose command set is split over two PDVs: pynetdicom's path serves it."""
    sock = associate(port)
    message = command(1, uid)
    sock.sendall(
        ul.pdata_many(
            [(CONTEXT, ul.COMMAND, message[:20]), (CONTEXT, ul.COMMAND | ul.LAST, message[20:])]
        )
    )
    sock.sendall(ul.pdata(CONTEXT, ul.LAST, data))
    return sock


def crash_the_state_machine(port: int, uid: str, data: bytes) -> None:
    """A C-STORE on pynetdicom's path, then an A-ASSOCIATE-RQ (Sta6 -> Sta13) and a stream
    of A-RELEASE-RQs that keeps the connection busy until the C-STORE-RSP is sent: Evt9 in
    Sta13, which pynetdicom's state machine raises on."""
    sock = store_handed_over(port, uid, data)
    request = ul.associate_rq(
        "RAWSCU",
        "DICOMADAPTER",
        [(1, "1.2.840.10008.1.1", "1.2.840.10008.1.2")],
        16384,
        ("1.2.3.4", "RAW"),
    )
    with contextlib.suppress(OSError):  # the SCP closed the connection: what this wants
        sock.sendall(request + ul.release_rq() * 50_000)
    sock.close()


def test_every_hook_is_used_by_real_associations(
    debug_adapter: RunningAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = debug_adapter.port
    result = storescu(port, make_study(tmp_path / "study", 2))  # the direct C-STORE path
    assert result.returncode == 0, result.stderr
    assert echoscu(port).returncode == 0  # the direct C-ECHO path
    wait_for(lambda: "association released" in caplog.text, timeout=5)
    assert "close_left_open" not in used_hooks(caplog)  # normal ends are pynetdicom's own
    uid, data = instance(tmp_path, "handed")
    sock = store_handed_over(port, uid, data)
    assert store_status(sock) == 0x0000
    sock.close()
    sock = associate(port)  # a data set broken mid-way: Evt19
    uid, data = instance(tmp_path, "broken")
    sock.sendall(ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(1, uid)))
    sock.sendall(
        ul.pdata(CONTEXT, 0, data[:200]) + ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(3, uid))
    )
    sock.close()
    socket.create_connection(("127.0.0.1", port)).close()  # never asks to associate
    for attempt in range(5):  # a race the peer usually wins at once
        uid, data = instance(tmp_path, f"crash{attempt}")
        crash_the_state_machine(port, uid, data)
        deadline = time.monotonic() + 3
        while "close_left_open" not in used_hooks(caplog) and time.monotonic() < deadline:
            time.sleep(0.05)
        if "close_left_open" in used_hooks(caplog):
            break
    wait_for(lambda: used_hooks(caplog) >= EXPECTED_HOOKS, timeout=10)
    assert used_hooks(caplog) == set(boundary.HOOKS)
