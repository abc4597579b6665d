"""Receive throughput: the adapter against DCMTK storescp and a minimal pynetdicom SCP.

    python bench/run.py --corpus var/bench-corpus [--repeat 3] [--ct N] [--small N] [--full]

For each corpus and each receiver, DCMTK ``storescu`` (with TCP_NODELAY=1)
sends every file over one association; each repetition starts a fresh
receiver on a free 127.0.0.1 port with an empty output folder. The wall time
of the storescu process is measured and the median of the repetitions is
reported. For the adapter, the time from storescu's exit until the ledger
holds a row for every instance ("ledger lag") is reported as well.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
LEDGER_TIMEOUT = 120.0
RECEIVERS = ("storescp", "minimal", "adapter")


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


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
    proc: subprocess.Popen[bytes]
    port: int
    ae_title: str
    ledger: Path | None = None


def start_receiver(kind: str, work: Path) -> Started:
    """Start one receiver in ``work`` (an empty folder) and wait for its port."""
    port = free_port()
    ledger = None
    if kind == "storescp":
        out = work / "out"
        out.mkdir()
        ae = "STORESCP"
        cmd = [tool("storescp"), "+xa", "-aet", ae, "-od", str(out), str(port)]
    elif kind == "minimal":
        ae = "MINIMAL"
        script = Path(__file__).resolve().parent / "minimal_scp.py"
        cmd = [
            sys.executable,
            str(script),
            "--port",
            str(port),
            "--out",
            str(work / "out"),
            "--ae-title",
            ae,
        ]
    elif kind == "adapter":
        ae = "BENCH"
        ledger = work / "ledger.db"
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
            url = sqlite:///{ledger}
            [metrics]
            port = 0
            [ae:{ae}]
            processor = none
            """)
        )
        cmd = [*adapter_command(), "run", "--config", str(config)]
    else:
        raise ValueError(kind)
    log = (work / "receiver.log").open("wb")
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
    )
    log.close()
    try:
        wait_port(port, proc, START_TIMEOUT)
    except BaseException:
        stop(proc)
        raise
    return Started(proc, port, ae, ledger)


def ledger_count(path: Path) -> int:
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        ) as db:
            return db.execute("SELECT count(*) FROM instances").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_ledger(path: Path, count: int, timeout: float) -> float:
    """Seconds until the ledger holds ``count`` rows (polled every 5 ms)."""
    start = time.perf_counter()
    while ledger_count(path) < count:
        if time.perf_counter() - start > timeout:
            raise BenchError(f"ledger has {ledger_count(path)}/{count} rows after {timeout}s")
        time.sleep(0.005)
    return time.perf_counter() - start


def send(port: int, ae: str, files: list[Path], timeout: float) -> float:
    """Run storescu over one association; return its wall time in seconds."""
    cmd = [tool("storescu"), "-aec", ae, HOST, str(port), *map(str, files)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or b"E: " in result.stderr:
        raise BenchError(
            f"storescu failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed


def received_files(work: Path) -> int:
    out = work / ("spool" if (work / "spool").exists() else "out")
    return sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


@dataclass
class Result:
    corpus: str
    receiver: str
    count: int
    size: int
    times: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def rate(self) -> float:
        return self.count / self.median

    @property
    def mbps(self) -> float:
        return self.size / 1e6 / self.median


@contextlib.contextmanager
def scratch(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench_one(name: str, files: list[Path], kind: str, repeat: int, workdir: Path) -> Result:
    size = sum(f.stat().st_size for f in files)
    result = Result(name, kind, len(files), size)
    # generous: 1 MB/s floor plus a fixed allowance
    timeout = 120 + size / 1e6
    for rep in range(repeat):
        with scratch(workdir) as work:
            started = start_receiver(kind, work)
            try:
                result.times.append(send(started.port, started.ae_title, files, timeout))
                if started.ledger is not None:
                    result.lags.append(wait_ledger(started.ledger, len(files), LEDGER_TIMEOUT))
            finally:
                stop(started.proc)
            got = received_files(work)
            if got != len(files):
                raise BenchError(f"{kind} kept {got}/{len(files)} files")
        lag = f", ledger lag {result.lags[-1] * 1000:.0f} ms" if result.lags else ""
        print(
            f"  {name:6} {kind:9} run {rep + 1}/{repeat}: {result.times[-1]:.2f}s{lag}", flush=True
        )
    return result


def table(results: list[Result]) -> str:
    lines = [
        "| corpus | receiver | instances | MB | median s | inst/s | MB/s | vs storescp "
        "| vs minimal | ledger lag ms (median) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    by = {(r.corpus, r.receiver): r for r in results}
    for r in results:
        ratios = []
        for ref in ("storescp", "minimal"):
            other = by.get((r.corpus, ref))
            if r.receiver == "adapter" and other is not None:
                ratios.append(f"{r.rate / other.rate:.2f}")
            else:
                ratios.append("")
        lag = f"{statistics.median(r.lags) * 1000:.0f}" if r.lags else ""
        lines.append(
            f"| {r.corpus} | {r.receiver} | {r.count} | {r.size / 1e6:.1f} | {r.median:.2f} "
            f"| {r.rate:.0f} | {r.mbps:.1f} | {ratios[0]} | {ratios[1]} | {lag} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus_mod.add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median is kept)")
    parser.add_argument(
        "--receivers", default=",".join(RECEIVERS), help=f"comma list from {', '.join(RECEIVERS)}"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "var" / "bench-work",
        help="where receivers write (default var/bench-work; use a real disk, "
        "not tmpfs, or fsync costs nothing)",
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.receivers.split(",") if k.strip()]
    for kind in kinds:
        if kind not in RECEIVERS:
            parser.error(f"unknown receiver {kind!r}")
    corpora = corpus_mod.resolve(args)
    results = []
    try:
        for name, folder in corpora.items():
            files = corpus_mod.corpus_files(folder)
            print(f"{name}: {len(files)} files from {folder}", flush=True)
            for kind in kinds:
                results.append(bench_one(name, files, kind, args.repeat, args.workdir))
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if results:
            print(table(results))
        return 1
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
