"""Export rate: the adapter's C-STORE SCU against DCMTK storescu.

    python bench/export.py --corpus var/bench-corpus [--repeat 3] [--ct N] [--small N] [--full]

Both senders send the same files, over one association, to a fresh DCMTK
``storescp`` (``TCP_NODELAY=1``, ``+xa``, ``--max-pdu 131072``) on a free
127.0.0.1 port, writing into a scratch folder.

- **storescu**: ``TCP_NODELAY=1 storescu -aec STORESCP 127.0.0.1 PORT files...``;
  the timed interval is the storescu process's wall time.
- **adapter**: ``dicom-adapter run`` with a generated config holding one
  ``[destination:OUT]`` (the storescp), and ``dicom-adapter send --dest OUT
  --wait files...``, exactly as an operator would.  The timed interval comes
  from the ledger: the export task's ``running`` event to its ``succeeded``
  event, i.e. association, every C-STORE and release, as the exporter runs in
  production.  It leaves out what is not the export: the CLI's start-up and
  header reading, and the wait for the next scheduler tick (up to 0.5 s).
  The CLI's own wall time is printed too, for reference.

Why storescp gets ``--max-pdu 131072``: the receiver's maximum PDU decides
how big the P-DATA PDUs of both senders are, and DCMTK's default (16 KB) is
smaller than what a PACS usually offers; 131072 is the largest storescp
accepts.  ``--max-pdu 16384`` measures the default.

Every repetition starts fresh processes and folders; every file must arrive.
The senders take turns (storescu, adapter, storescu, ...), so load from
anything else on the machine falls on both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod
from report import Throughput
from run import (
    HOST,
    BenchError,
    adapter_command,
    child_env,
    free_port,
    scratch,
    stop,
    tool,
    wait_port,
)

START_TIMEOUT = 30.0
SENDERS = ("storescu", "adapter")
SINK_AE = "STORESCP"
DESTINATION = "OUT"
DCMTK_MAX_PDU = 131072
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the ledger's UtcText format
NODELAY = child_env()  # TCP_NODELAY=1, this tree's adapter


@dataclass
class Sink:
    """A running storescp and the folder it writes to."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path

    def received(self) -> int:
        return sum(1 for p in self.out.iterdir() if p.is_file())


@dataclass
class Result(Throughput):
    """One corpus sent by one sender, ``repeat`` times."""

    corpus: str
    sender: str
    count: int
    size: int
    times: list[float] = field(default_factory=list)
    cli_times: list[float] = field(default_factory=list)


def start_sink(work: Path, max_pdu: int) -> Sink:
    """Start storescp in ``work/out`` and wait for its port."""
    out = work / "out"
    out.mkdir()
    port = free_port()
    cmd = [tool("storescp"), "+xa", "--max-pdu", str(max_pdu), "-aet", SINK_AE]
    cmd += ["-od", str(out), str(port)]
    proc = _popen(cmd, work, work / "storescp.log")
    _await_port(port, proc)
    return Sink(proc, port, out)


def _popen(cmd: list[str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=NODELAY,
            stdin=subprocess.DEVNULL,
        )


def _await_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    try:
        wait_port(port, proc, START_TIMEOUT)
    except BaseException:
        stop(proc)
        raise


def _run(cmd: list[str], timeout: float, what: str) -> tuple[float, str]:
    """Run ``cmd`` to completion: its wall time and stdout; BenchError if it failed."""
    start = time.perf_counter()
    result = subprocess.run(
        cmd,
        env=NODELAY,
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    stderr = result.stderr.decode(errors="replace")
    if result.returncode != 0 or (what == "storescu" and "E: " in stderr):
        raise BenchError(f"{what} failed ({result.returncode}): {stderr[-2000:]}")
    return elapsed, result.stdout.decode(errors="replace")


def send_storescu(sink: Sink, files: list[Path], work: Path, timeout: float) -> tuple[float, float]:
    """storescu over one association; its wall time (also as the 'CLI' time)."""
    cmd = [tool("storescu"), "-aec", SINK_AE, HOST, str(sink.port), *map(str, files)]
    elapsed, _ = _run(cmd, timeout, "storescu")
    return elapsed, elapsed


def adapter_config(work: Path, port: int, sink_port: int) -> Path:
    """A config: loopback on ``port``, ledger in ``work``, one destination (the sink)."""
    path = work / "config.ini"
    path.write_text(
        textwrap.dedent(f"""\
        [dicom]
        ae_title = BENCH
        host = {HOST}
        port = {port}
        [storage]
        spool = spool
        jobs = jobs
        min_free = 0
        [ledger]
        url = sqlite:///{work / "ledger.db"}
        [metrics]
        port = 0
        [ae:BENCH]
        processor = none
        [destination:{DESTINATION}]
        ae_title = {SINK_AE}
        host = {HOST}
        port = {sink_port}
        retries = 0
        """)
    )
    return path


def send_adapter(sink: Sink, files: list[Path], work: Path, timeout: float) -> tuple[float, float]:
    """Run the adapter, queue ``files`` with ``send --wait``; (export seconds, CLI seconds)."""
    port = free_port()
    config = adapter_config(work, port, sink.port)
    proc = _popen([*adapter_command(), "run", "--config", str(config)], work, work / "adapter.log")
    _await_port(port, proc)
    try:
        cmd = [*adapter_command(), "send", "--config", str(config), "--dest", DESTINATION]
        cmd += ["--wait", "--timeout", str(timeout), *map(str, files)]
        cli_seconds, stdout = _run(cmd, timeout + 30, "dicom-adapter send")
    finally:
        stop(proc)
    match = re.search(r"as export (\d+) ", stdout)
    if match is None:
        raise BenchError(f"unexpected send output: {stdout!r}")
    return export_seconds(work / "ledger.db", int(match.group(1))), cli_seconds


def export_seconds(ledger: Path, export_id: int) -> float:
    """Seconds from the task's last ``running`` event to its ``succeeded`` event."""
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT to_state, at FROM task_events WHERE task_id = ? ORDER BY id", (export_id,)
        ).fetchall()
    times = {state: datetime.strptime(at, TIME_FORMAT) for state, at in rows}
    if "running" not in times or "succeeded" not in times:
        raise BenchError(f"export {export_id} events: {rows}")
    return (times["succeeded"] - times["running"]).total_seconds()


Sender = Callable[[Sink, list[Path], Path, float], tuple[float, float]]
SEND: dict[str, Sender] = {"storescu": send_storescu, "adapter": send_adapter}


def run_once(result: Result, files: list[Path], args: argparse.Namespace, rep: int) -> None:
    """Send ``files`` once with ``result.sender`` to a fresh storescp; record the times."""
    timeout = 120 + result.size / 1e6  # generous: 1 MB/s floor plus a fixed allowance
    with scratch(args.workdir) as work:
        sink = start_sink(work, args.max_pdu)
        try:
            seconds, cli_seconds = SEND[result.sender](sink, files, work, timeout)
        finally:
            stop(sink.proc)
        if sink.received() != len(files):
            raise BenchError(f"{result.sender}: storescp got {sink.received()}/{len(files)} files")
    result.times.append(seconds)
    result.cli_times.append(cli_seconds)
    print(
        f"  {result.corpus:6} {result.sender:8} run {rep + 1}/{args.repeat}: {seconds:.2f}s "
        f"(process {cli_seconds:.2f}s)",
        flush=True,
    )


def bench_corpus(name: str, files: list[Path], args: argparse.Namespace) -> list[Result]:
    """Every sender ``args.repeat`` times, interleaved (a, b, a, b, ...).

    Interleaving spreads whatever else the machine is doing over both senders
    instead of letting it land on one of them.
    """
    size = sum(f.stat().st_size for f in files)
    results = [Result(name, sender, len(files), size) for sender in args.senders]
    for rep in range(args.repeat):
        for result in results:
            run_once(result, files, args, rep)
    return results


def table(results: list[Result]) -> str:
    """A Markdown table, with the adapter/storescu throughput ratio per corpus."""
    lines = [
        "| corpus | sender | instances | MB | median s | inst/s | MB/s | vs storescu "
        "| process s (median) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    by = {(r.corpus, r.sender): r for r in results}
    for r in results:
        ref = by.get((r.corpus, "storescu"))
        ratio = f"{r.rate / ref.rate:.2f}" if r.sender == "adapter" and ref else ""
        lines.append(
            f"| {r.corpus} | {r.sender} | {r.count} | {r.size / 1e6:.1f} | {r.median:.2f} "
            f"| {r.rate:.0f} | {r.mbps:.1f} | {ratio} | {statistics.median(r.cli_times):.2f} |"
        )
    return "\n".join(lines)


NOTE = (
    "adapter time: the export task's ledger events, running -> succeeded "
    "(association, C-STOREs, release); 'process s' is the whole `dicom-adapter send --wait` "
    "(start-up, header reading, scheduler tick, 0.2 s polling). storescu time: its process."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus_mod.add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median is kept)")
    parser.add_argument(
        "--senders", default=",".join(SENDERS), help=f"comma list from {', '.join(SENDERS)}"
    )
    parser.add_argument(
        "--max-pdu",
        type=int,
        default=DCMTK_MAX_PDU,
        help=f"storescp's maximum PDU (default {DCMTK_MAX_PDU}, DCMTK's largest; its own "
        "default is 16384)",
    )
    corpus_mod.add_workdir(parser)
    args = parser.parse_args()
    args.senders = [s.strip() for s in args.senders.split(",") if s.strip()]
    for sender in args.senders:
        if sender not in SENDERS:
            parser.error(f"unknown sender {sender!r}")
    return args


def corpora(args: argparse.Namespace) -> dict[str, Path]:
    """CT and small corpora only: ``--full`` means their full sizes, not the 1 GB one."""
    sizes = corpus_mod.FULL if args.full else corpus_mod.QUICK
    ct = sizes["ct"] if args.ct is None else args.ct
    small = sizes["small"] if args.small is None else args.small
    return corpus_mod.build_all(args.corpus, ct, small, large=False)


def main() -> int:
    args = parse_args()
    results: list[Result] = []
    try:
        for name, folder in corpora(args).items():
            files = corpus_mod.corpus_files(folder)
            print(f"{name}: {len(files)} files from {folder}", flush=True)
            results.extend(bench_corpus(name, files, args))
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if results:
            print(table(results))
        return 1
    print()
    print(table(results))
    print()
    print(NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
