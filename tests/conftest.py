"""Shared fixtures: real configs, real ports, a real adapter in-process or as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapter import Adapter
from config import Config, load_config
from ledger.db import make_engine
from ledger.records import NewInstance
from ledger.store import Ledger

ROOT = Path(__file__).resolve().parent.parent
# The moves of a task (a job or an export: one lifecycle) whose three attempts all fail.
THREE_ATTEMPTS_THEN_FAILED = [
    (None, "pending"),
    ("pending", "running"),
    ("running", "pending"),
    ("pending", "running"),
    ("running", "pending"),
    ("pending", "running"),
    ("running", "failed"),
]


def require_tool(name: str) -> str:
    """The tool's path; skip without it, but fail under CI=true (CI must install it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package dcmtk)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def new_instance(path: str, called_ae: str, sop: str, study: str) -> NewInstance:
    """A row to record by hand in a ledger-level test: a study grouped by its UID."""
    return NewInstance(
        path=path,
        called_ae=called_ae,
        size=1,
        sha256="0" * 64,
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=None,
        sop_class_uid=None,
        transfer_syntax_uid=None,
        patient_id=None,
        calling_ae=None,
        peer_address=None,
        group_key=study,
    )


def side_by_side(count: int, work: Callable[[int], None]) -> None:
    """``work(0..count-1)`` on as many threads, started together (as nodes would be);
    raise, on the test's thread, what any of them raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(number: int) -> None:
        try:
            start.wait()
            work(number)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """A process's peak (VmHWM) and current (VmRSS) resident memory, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) * 1024 for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB$", text, re.M)}


def reset_peak() -> bool:
    """Reset this process's VmHWM (``/proc/self/clear_refs``); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def tmp_files(spool: Path) -> list[Path]:
    """Every temporary file in ``spool/.tmp/``, whichever node's folder it is in."""
    folder = spool / ".tmp"
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write_config(
    folder: Path,
    port: int,
    extra: str = "",
    *,
    dicom: str = "",
    storage: str = "min_free = 0",
    aes: str = "[ae:DICOMADAPTER]",
    ledger: str = "sqlite:///ledger.db",
) -> Path:
    """A config for tests: loopback, a free port, spool (and a SQLite ledger) under ``folder``."""
    path = folder / "config.ini"
    template = textwrap.dedent("""\
        [dicom]
        host = 127.0.0.1
        port = {port}
        acse_timeout = 5
        dimse_timeout = 10
        network_timeout = 10
        {dicom}
        [storage]
        spool = spool
        {storage}
        [ledger]
        url = {ledger}
        [watcher]
        settle_seconds = 0.5
        reconcile_interval = 3600
        [log]
        level = DEBUG
        """)  # dedented before the values go in: they may span lines
    values = {"port": port, "dicom": dicom, "storage": storage, "ledger": ledger}
    path.write_text(template.format(**values) + aes + "\n" + extra)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of a ``test_bench_*.py`` file is a ``bench`` test, left out of ``make test``."""
    for item in items:
        if item.path.name.startswith("test_bench_"):
            item.add_marker(pytest.mark.bench)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def config_path(tmp_path: Path, port: int) -> Path:
    return write_config(tmp_path, port)


class RunningAdapter:
    """An in-process adapter; stopped by the fixture."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.adapter = Adapter(config)
        self.ledger: Ledger = self.adapter.ledger
        self.spool = config.storage.spool
        self.port = config.dicom.port

    def settle(self) -> None:
        """Wait until every file the watcher saw so far is recorded."""
        self.adapter.intake.wait_idle()

    def wait_rows(self, count: int, state: str | None = None, timeout: float = 20) -> list:
        """Wait until the ledger holds ``count`` rows (in ``state``); return them."""
        wait_for(lambda: len(self.rows(state)) >= count, timeout)
        self.settle()
        rows = self.rows(state)
        assert len(rows) == count
        return rows

    def rows(self, state: str | None = None) -> list:
        return [r for r in self.ledger.instances() if state is None or r.state == state]


@pytest.fixture
def start_adapter() -> Iterator[Callable[[Path], RunningAdapter]]:
    started: list[RunningAdapter] = []

    def start(path: Path) -> RunningAdapter:
        running = RunningAdapter(load_config(path))
        started.append(running)  # stopped at teardown even when start fails half way
        running.adapter.start()
        return running

    yield start
    for running in started:
        running.adapter.stop()


@pytest.fixture
def adapter(start_adapter: Callable[[Path], RunningAdapter], config_path: Path) -> RunningAdapter:
    return start_adapter(config_path)


class AdapterProcess:
    """``dicom-adapter run`` as a real subprocess, for signals and crashes."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "adapter.py"), "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
            )
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, timeout)
        assert self.process.poll() is None, self.log.read_text()

    def signal(self, number: int) -> int:
        assert self.process is not None
        self.process.send_signal(number)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        """SIGKILL, as a crash; the listener process follows (PR_SET_PDEATHSIG) a moment later."""
        self.signal(signal.SIGKILL)
        wait_for(lambda: not port_open(self.port), timeout=10)

    def ledger(self) -> Ledger:
        return Ledger(make_engine(load_config(self.config).ledger.url))


@pytest.fixture
def adapter_process(config_path: Path, port: int, tmp_path: Path) -> Iterator[AdapterProcess]:
    process = AdapterProcess(config_path, port, tmp_path / "adapter.log")
    yield process
    if process.process is not None and process.process.poll() is None:
        process.kill()


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Every test must stop the threads it started (watchdog's conftest does the same)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {leaked}"


# The throwaway PostgreSQL cluster and the per-backend ledger URL (below: it needs free_port).
from tests.postgres import ledger_url, postgres_cluster  # noqa: E402, F401
