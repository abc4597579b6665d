"""Receive throughput: the adapter against storescp, a minimal pynetdicom SCP and Orthanc.

    python bench/run.py --corpus var/bench-corpus [--repeat 3] [--ct N] [--small N] [--full]
        [--receivers storescp,minimal-nofsync,minimal,orthanc,adapter,adapter-pg] [--assocs 1,4]

For each corpus, each number of associations and each receiver, DCMTK
``storescu`` (with TCP_NODELAY=1) sends every file: one process over one
association, or N processes at once, each with every N-th file. Each
repetition starts a fresh receiver on a free port with an empty output
folder. The wall time from the first sender's start to the last one's exit
is measured and the median of the repetitions is reported. For the adapter,
the per-instance ledger lag (C-STORE answer to ``received`` row, see
``lag.py``) and the drain time (last sender's exit until the ledger holds
every row) are reported as well. ``adapter`` keeps its ledger in SQLite;
``adapter-pg`` in a fresh database (each repetition) on a throwaway
PostgreSQL cluster on this machine, started once per bench run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pgcluster, tests.peers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # these scripts first

import corpus as corpus_mod
import lag
import orthanc
from report import Result, table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tests import pgcluster

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
LEDGER_TIMEOUT = 120.0
ORTHANC_MISSING = (
    "Orthanc not found (apt-get install orthanc); leave it out with --receivers to run without it"
)
POSTGRES_MISSING = f"{pgcluster.MISSING}; leave adapter-pg out with --receivers to run without it"


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of a child process: ``TCP_NODELAY=1``, this tree first on PYTHONPATH.

    DCMTK tools read TCP_NODELAY. The venv's ``dicom-adapter`` script imports
    the tree the venv was installed from (an editable install); a bench run
    from another checkout (a ``git worktree``) must time its own code.
    """
    paths = (str(ROOT), os.environ.get("PYTHONPATH", ""))
    return {**os.environ, "TCP_NODELAY": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"receiver exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"port {port} did not open within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} not found (apt-get install dcmtk)")
    return path


def adapter_command() -> list[str]:
    exe = Path(sys.executable).with_name("dicom-adapter")
    if exe.is_file():
        return [str(exe)]
    venv = ROOT / ".venv" / "bin" / "dicom-adapter"
    if venv.is_file():
        return [str(venv)]
    return [sys.executable, str(ROOT / "adapter.py")]


@dataclass
class Started:
    """A running receiver and where to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    ae_title: str
    ledger_url: str | None = None  # the adapter's
    http_port: int | None = None  # Orthanc's REST API


@dataclass
class Plan:
    """How to run one receiver: its command line and what to ask it afterwards."""

    command: list[str]
    ae_title: str
    ledger_url: str | None = None
    http_port: int | None = None


def _storescp(work: Path, port: int) -> Plan:
    # --fork: a process per association, so four senders are served at once
    # (without it storescp takes associations one after another).
    out = work / "out"
    out.mkdir()
    ae = "STORESCP"
    return Plan([tool("storescp"), "--fork", "+xa", "-aet", ae, "-od", str(out), str(port)], ae)


def _minimal(work: Path, port: int, fsync: bool = True) -> Plan:
    script = Path(__file__).resolve().parent / "minimal_scp.py"
    ae = "MINIMAL"
    cmd = [sys.executable, str(script), "--port", str(port), "--out", str(work / "out")]
    cmd += ["--ae-title", ae] + ([] if fsync else ["--no-fsync"])
    return Plan(cmd, ae)


def _minimal_nofsync(work: Path, port: int) -> Plan:
    return _minimal(work, port, fsync=False)


class PostgresLedgers:
    """Empty PostgreSQL ledgers for ``adapter-pg``, a new database each time.

    One throwaway cluster (``tests/pgcluster.py``, default settings, on this
    machine) serves the whole bench run: started at the first ask, so a run
    without ``adapter-pg`` starts none, and stopped by :meth:`close`.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._cluster: pgcluster.Cluster | None = None

    def new(self) -> str:
        """A fresh, empty database's URL."""
        if self._cluster is None:
            if not pgcluster.available():
                raise BenchError(POSTGRES_MISSING)
            self._cluster = self._stack.enter_context(pgcluster.throwaway_cluster(free_port()))
        return self._cluster.database()

    def close(self) -> None:
        self._stack.close()
        self._cluster = None


POSTGRES = PostgresLedgers()


def adapter_plan(
    work: Path, port: int, ledger_url: str | None = None, stow_port: int | None = None
) -> Plan:
    """The adapter with every default; ``stow_port`` also opens its HTTP (STOW-RS) listener."""
    ae = "BENCH"
    ledger_url = ledger_url or f"sqlite:///{work / 'ledger.db'}"
    http = f"[http]\nhost = {HOST}\nport = {stow_port}\n" if stow_port else ""
    config = work / "config.ini"
    config.write_text(
        textwrap.dedent(f"""\
        [dicom]
        ae_title = {ae}
        host = {HOST}
        port = {port}
        [storage]
        spool = spool
        jobs = jobs
        min_free = 0
        [ledger]
        url = {ledger_url}
        [metrics]
        port = 0
        [ae:{ae}]
        processor = none
        """)
        + http
    )
    return Plan([*adapter_command(), "run", "--config", str(config)], ae, ledger_url=ledger_url)


def _adapter_pg(work: Path, port: int) -> Plan:
    return adapter_plan(work, port, POSTGRES.new())


def _orthanc(work: Path, port: int) -> Plan:
    binary = orthanc.find_binary()
    if binary is None:
        raise BenchError(ORTHANC_MISSING)
    http_port = free_port()
    config = orthanc.write_config(work, port, http_port)
    return Plan(orthanc.command(binary, config), orthanc.AE_TITLE, http_port=http_port)


PLANS: dict[str, Callable[[Path, int], Plan]] = {
    "storescp": _storescp,
    "minimal-nofsync": _minimal_nofsync,
    "minimal": _minimal,
    "orthanc": _orthanc,
    "adapter": adapter_plan,
    "adapter-pg": _adapter_pg,
}
RECEIVERS = tuple(PLANS)


def start_receiver(kind: str, work: Path) -> Started:
    """Start one receiver in ``work`` (an empty folder) and wait until it accepts work.

    Every receiver runs with TCP_NODELAY=1 (DCMTK-based ones read it).
    """
    if kind not in PLANS:
        raise ValueError(kind)
    port = free_port()
    return launch(PLANS[kind](work, port), port, work)


def launch(plan: Plan, port: int, work: Path) -> Started:
    """Start ``plan`` in ``work`` and wait until it listens on ``port`` (and any REST API)."""
    log = (work / "receiver.log").open("wb")
    env = child_env()
    proc = subprocess.Popen(
        plan.command,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        wait_port(port, proc, START_TIMEOUT)
        if plan.http_port is not None:
            orthanc.wait_http(plan.http_port, START_TIMEOUT)
    except TimeoutError as exc:
        stop(proc)
        raise BenchError(str(exc)) from exc
    except BaseException:
        stop(proc)
        raise
    return Started(proc, port, plan.ae_title, plan.ledger_url, plan.http_port)


def ledger_count(ledger: Engine) -> int:
    """Rows in ``instances``; 0 while the ledger cannot be read (not made yet)."""
    try:
        with ledger.connect() as connection:
            return int(connection.exec_driver_sql("SELECT count(*) FROM instances").scalar_one())
    except SQLAlchemyError:
        return 0


def wait_ledger(ledger: Engine, count: int, timeout: float) -> float:
    """Seconds until the ledger holds ``count`` rows (polled every 5 ms)."""
    start = time.perf_counter()
    while ledger_count(ledger) < count:
        if time.perf_counter() - start > timeout:
            raise BenchError(f"ledger has {ledger_count(ledger)}/{count} rows after {timeout}s")
        time.sleep(0.005)
    return time.perf_counter() - start


def _storescu(cmd: list[str], files: list[Path], log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = child_env()
    return subprocess.Popen(
        [*cmd, *map(str, files)], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
    )


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def send(
    port: int,
    ae: str,
    files: list[Path],
    timeout: float,
    assocs: int = 1,
    sender_cpus: str | None = None,
) -> float:
    """Send ``files`` with ``assocs`` storescu processes at once; return the wall time.

    The files are dealt out in turn (file i goes to sender i mod ``assocs``) so
    every sender gets the same mix. Timed from the first start to the last exit.
    With ``sender_cpus`` (``taskset -c`` syntax) the senders run on those CPUs
    only, so that on a small machine they do not take the receiver's core.
    """
    parts = [part for part in (files[i::assocs] for i in range(assocs)) if part]
    pinned = [tool("taskset"), "-c", sender_cpus] if sender_cpus else []
    cmd = [*pinned, tool("storescu"), "-aec", ae, HOST, str(port)]  # looked up outside the timing
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in parts]
        start = time.perf_counter()
        procs = [_storescu(cmd, part, log) for part, log in zip(parts, logs, strict=True)]
        _wait_all(procs, timeout)
        elapsed = time.perf_counter() - start
        for proc, log in zip(procs, logs, strict=True):
            _check_sender(proc, log)
    return elapsed


def _check_sender(proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    log.seek(0)
    output = log.read()
    if proc.returncode != 0 or b"E: " in output:
        text = output.decode(errors="replace")[-2000:]
        raise BenchError(f"storescu failed ({proc.returncode}): {text}")


def received_files(work: Path) -> int:
    out = work / ("spool" if (work / "spool").exists() else "out")
    return sum(
        1
        for p in out.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    )


def kept(started: Started, work: Path) -> int:
    """Instances the receiver holds: files on disk, or Orthanc's own count."""
    if started.http_port is not None:
        return orthanc.count_instances(started.http_port)
    return received_files(work)


@contextlib.contextmanager
def scratch(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=base.resolve()))  # configs need it absolute
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure_ledger(ledger: Engine, work: Path, count: int, result: Result) -> None:
    """Drain time (storescu exit to the last row) and per-instance lag, adapter only."""
    result.drains.append(wait_ledger(ledger, count, LEDGER_TIMEOUT))
    lags = lag.instance_lags(ledger, work)
    result.lag_medians.append(statistics.median(lags))
    result.lag_p99s.append(lag.percentile(lags, 0.99))


def _repetition(
    kind: str, files: list[Path], workdir: Path, result: Result, sender_cpus: str | None
) -> None:
    """One fresh receiver, one timed send, then the checks; untimed start and stop."""
    # generous: 1 MB/s floor plus a fixed allowance
    timeout = 120 + result.size / 1e6
    with scratch(workdir) as work, contextlib.ExitStack() as stack:
        started = start_receiver(kind, work)
        stack.callback(stop, started.proc)
        ledger = None
        if started.ledger_url is not None:
            ledger = lag.reader(started.ledger_url)
            stack.callback(ledger.dispose)
            ledger_count(ledger)  # connected before the timing starts, for the drain's polls
        result.times.append(
            send(started.port, started.ae_title, files, timeout, result.assocs, sender_cpus)
        )
        if ledger is not None:
            measure_ledger(ledger, work, len(files), result)
        got = kept(started, work)
    if got != len(files):
        raise BenchError(f"{kind} kept {got}/{len(files)} instances")


def bench_one(
    name: str,
    files: list[Path],
    kind: str,
    repeat: int,
    workdir: Path,
    assocs: int = 1,
    sender_cpus: str | None = None,
) -> Result:
    """``repeat`` runs of one receiver on one corpus with ``assocs`` senders."""
    result = Result(name, kind, assocs, len(files), sum(f.stat().st_size for f in files))
    for rep in range(repeat):
        _repetition(kind, files, workdir, result, sender_cpus)
        print(f"  {name:6} x{assocs} {kind:15} run {rep + 1}/{repeat}: {result.last()}", flush=True)
    return result


def _kinds(text: str, parser: argparse.ArgumentParser) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for kind in kinds:
        if kind not in RECEIVERS:
            parser.error(f"unknown receiver {kind!r}")
    return kinds


def _assocs(text: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"--assocs: a comma list of positive numbers, not {text!r}")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus_mod.add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median is kept)")
    parser.add_argument(
        "--receivers", default=",".join(RECEIVERS), help=f"comma list from {', '.join(RECEIVERS)}"
    )
    parser.add_argument(
        "--assocs", default="1,4", help="concurrent associations, a comma list (default 1,4)"
    )
    parser.add_argument(
        "--sender-cpus",
        help="run the storescu senders on these CPUs only (taskset -c, e.g. 0); default: any",
    )
    corpus_mod.add_workdir(parser)
    args = parser.parse_args()
    args.kinds = _kinds(args.receivers, parser)
    args.assoc_counts = _assocs(args.assocs, parser)
    return args


def check_tools(kinds: list[str]) -> None:
    """Fail at once, in one line, for a missing tool rather than halfway through."""
    tool("storescu")
    if "storescp" in kinds:
        tool("storescp")
    if "orthanc" in kinds and orthanc.find_binary() is None:
        raise BenchError(ORTHANC_MISSING)
    if "adapter-pg" in kinds and not pgcluster.available():
        raise BenchError(POSTGRES_MISSING)


def run_all(args: argparse.Namespace, results: list[Result]) -> None:
    for name, folder in corpus_mod.resolve(args).items():
        files = corpus_mod.corpus_files(folder)
        print(f"{name}: {len(files)} files from {folder}", flush=True)
        for assocs in args.assoc_counts:
            for kind in args.kinds:
                results.append(
                    bench_one(
                        name, files, kind, args.repeat, args.workdir, assocs, args.sender_cpus
                    )
                )


def main() -> int:
    args = parse_args()
    results: list[Result] = []
    try:
        check_tools(args.kinds)
        run_all(args, results)
    except (BenchError, subprocess.SubprocessError, OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if results:
            print(table(results))
        return 1
    finally:
        POSTGRES.close()
    print()
    if args.sender_cpus:
        print(f"Senders pinned to CPU {args.sender_cpus} (taskset); receivers run anywhere.")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
