"""Peak memory of the adapter while it receives one large multi-frame instance.

    python bench/memory.py --corpus var/bench-corpus [--megabytes 1024]

The instance is an Enhanced CT with about ``--megabytes`` MiB of pixel data
(``tests/dicom.py``'s ``make_large_multiframe``, cached in the corpus folder
like the other corpora; 1024 is the same file as ``bench/run.py --full``).
The adapter (``dicom-adapter run``, started as in ``bench/run.py``) receives
it from ``TCP_NODELAY=1 storescu`` over 127.0.0.1.

Why these numbers: the adapter streams a C-STORE into its spool file as it
arrives, so its memory should not grow with the size of an instance.  The
kernel's own high-water mark, ``VmHWM`` in ``/proc/PID/status``, is the peak
resident set over the process's life, so reading it before the send (after
start-up) and after the ledger row is written catches the peak with no
sampling gaps; ``VmRSS`` is also sampled every 20 ms as a cross-check.  Child
processes, if any, are added.  The receive rate is the instance's size over
the storescu wall time.  The received file must match the sent one: the
SHA-256 of the dataset after the File Meta Information (which the adapter
writes itself) is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod
from run import HOST, BenchError, scratch, start_receiver, stop, tool

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
BAR_MB = 200
LEDGER_TIMEOUT = 300.0
SAMPLE_SECONDS = 0.02


def status_kb(pid: int, field: str) -> int:
    """``field`` (``VmHWM``, ``VmRSS``) of ``/proc/PID/status`` in kB; 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/PID/task/*/children``."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids.extend(process_tree(int(child)))
    return pids


def tree_kb(pid: int, field: str) -> int:
    """Sum of ``field`` over ``pid`` and its descendants."""
    return sum(status_kb(p, field) for p in process_tree(pid))


class RssSampler(threading.Thread):
    """Samples the tree's VmRSS every 20 ms and keeps the largest value."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kb = max(self.peak_kb, tree_kb(self.pid, "VmRSS"))
            self._done.wait(SAMPLE_SECONDS)

    def finish(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


@dataclass
class Measurement:
    size: int
    send_seconds: float
    ledger_seconds: float
    hwm_before_kb: int
    hwm_after_kb: int
    rss_peak_kb: int
    intact: bool

    @property
    def mbps(self) -> float:
        return self.size / 1e6 / self.send_seconds


def storescu(port: int, ae: str, path: Path, timeout: float) -> float:
    """Send ``path`` with storescu; its wall time in seconds."""
    cmd = [tool("storescu"), "-aec", ae, HOST, str(port), str(path)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        cmd, env=env, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or b"E: " in result.stderr:
        raise BenchError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]!r}")
    return elapsed


def wait_ledger_row(ledger: Path, timeout: float) -> float:
    """Seconds until the ledger has an ``instances`` row (polled every 20 ms)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(
                sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1.0)
            ) as db,
        ):
            if db.execute("SELECT count(*) FROM instances").fetchone()[0] > 0:
                return time.perf_counter() - start
        time.sleep(0.02)
    raise BenchError(f"no ledger row after {timeout:.0f}s")


def dataset_offset(path: Path) -> int:
    """Where the dataset starts: after the preamble, ``DICM`` and the meta group.

    Uses (0002,0000) File Meta Information Group Length, which both pydicom
    and the adapter write (PS3.10 7.1).
    """
    with path.open("rb") as f:
        head = f.read(144)
    if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        raise BenchError(f"{path}: no File Meta Information Group Length")
    return 144 + int.from_bytes(head[140:144], "little")


def dataset_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(dataset_offset(path))
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def received_file(spool: Path) -> Path:
    files = [p for p in spool.rglob("*.dcm") if ".tmp" not in p.parts]
    if len(files) != 1:
        raise BenchError(f"expected one file in {spool}, found {len(files)}")
    return files[0]


@contextlib.contextmanager
def adapter(work: Path) -> Iterator[tuple[int, int, str, Path]]:
    """A running adapter in ``work``: (pid, port, called AE, ledger); stopped after."""
    started = start_receiver("adapter", work)
    try:
        assert started.ledger is not None
        yield started.proc.pid, started.port, started.ae_title, started.ledger
    finally:
        stop(started.proc)


def measure(path: Path, workdir: Path) -> Measurement:
    """Start an adapter, send ``path`` once, and read its memory before and after."""
    size = path.stat().st_size
    with scratch(workdir) as work:
        with adapter(work) as (pid, port, ae, ledger):
            hwm_before = tree_kb(pid, "VmHWM")
            sampler = RssSampler(pid)
            sampler.start()
            try:
                send_seconds = storescu(port, ae, path, 120 + size / 1e6)
                ledger_seconds = wait_ledger_row(ledger, LEDGER_TIMEOUT)
            finally:
                rss_peak = sampler.finish()
            hwm_after = tree_kb(pid, "VmHWM")
        got = received_file(work / "spool")
        intact = got.stat().st_size > 0 and dataset_sha256(got) == dataset_sha256(path)
    return Measurement(size, send_seconds, ledger_seconds, hwm_before, hwm_after, rss_peak, intact)


def mb(kb: int) -> float:
    """/proc's kB (KiB) as MB (10^6 bytes), the unit of every figure printed."""
    return kb * 1024 / 1e6


def table(m: Measurement) -> str:
    """A Markdown table of one measurement."""
    peak_mb = mb(m.hwm_after_kb)
    return "\n".join(
        [
            "| instance MB | send s | MB/s | VmHWM idle MB | VmHWM peak MB | VmRSS sampled "
            "peak MB | ledger lag s | dataset sha256 | under 200 MB |",
            "|--:|--:|--:|--:|--:|--:|--:|---|---|",
            f"| {m.size / 1e6:.0f} | {m.send_seconds:.2f} | {m.mbps:.1f} "
            f"| {mb(m.hwm_before_kb):.0f} | {peak_mb:.0f} | {mb(m.rss_peak_kb):.0f} "
            f"| {m.ledger_seconds:.2f} | {'same' if m.intact else 'DIFFERENT'} "
            f"| {'yes' if peak_mb < BAR_MB else 'NO'} |",
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=ROOT / "var" / "bench-corpus",
        help="cache folder for the corpora (default: var/bench-corpus)",
    )
    parser.add_argument(
        "--megabytes", type=int, default=1024, help="pixel data size in MiB (default 1024)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "var" / "bench-work",
        help="where the adapter writes (default var/bench-work; a real disk, not tmpfs)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    folder = corpus_mod.build_large(args.corpus, args.megabytes * MIB)
    [path] = corpus_mod.corpus_files(folder)
    print(f"large: {path.stat().st_size / 1e6:.0f} MB in {path}", flush=True)
    try:
        result = measure(path, args.workdir)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    if not result.intact:
        print("Error: the received dataset differs from the one sent", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
