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
processes (an SCP process, multiprocessing's resource tracker) count too: each
one's own peak is added, an upper bound of the whole tree's peak.  The
receive rate is the instance's size over the storescu wall time.  The
received file must match the sent one: the SHA-256 of the dataset after the
File Meta Information (which the adapter writes itself) is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod
import lag
from run import HOST, BenchError, child_env, ledger_count, scratch, start_receiver, stop, tool

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


class Sampler(threading.Thread):
    """Every 20 ms: each process's VmHWM (kept per pid) and the tree's summed VmRSS.

    Keeping the high-water mark per pid means a child that exits before the
    end still counts with the last peak seen.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.hwm_kb: dict[int, int] = {}
        self.rss_peak_kb = 0
        self._done = threading.Event()

    def sample(self) -> None:
        rss = 0
        for pid in process_tree(self.pid):
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status_kb(pid, "VmHWM"))
            rss += status_kb(pid, "VmRSS")
        self.rss_peak_kb = max(self.rss_peak_kb, rss)

    def run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self.sample()

    def finish(self) -> None:
        self._done.set()
        self.join()
        self.sample()

    def split(self) -> tuple[int, int, int]:
        """(adapter's VmHWM, sum of its children's VmHWM, number of children) in kB."""
        children = {pid: kb for pid, kb in self.hwm_kb.items() if pid != self.pid}
        return self.hwm_kb.get(self.pid, 0), sum(children.values()), len(children)


@dataclass
class Measurement:
    size: int
    send_seconds: float
    ledger_seconds: float
    idle_kb: int  # adapter + children VmHWM after start-up, before the send
    adapter_kb: int  # the adapter process's VmHWM at the end
    children_kb: int  # its children's VmHWM at the end, summed
    children: int
    rss_peak_kb: int  # the largest sampled sum of VmRSS over the tree
    intact: bool

    @property
    def peak_kb(self) -> int:
        """Sum of per-process peaks: an upper bound of the tree's peak at any instant."""
        return self.adapter_kb + self.children_kb

    @property
    def mbps(self) -> float:
        return self.size / 1e6 / self.send_seconds


def storescu(port: int, ae: str, path: Path, timeout: float) -> float:
    """Send ``path`` with storescu; its wall time in seconds."""
    cmd = [tool("storescu"), "-aec", ae, HOST, str(port), str(path)]
    env = child_env()
    start = time.perf_counter()
    result = subprocess.run(
        cmd, env=env, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or b"E: " in result.stderr:
        raise BenchError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]!r}")
    return elapsed


def wait_ledger_row(ledger_url: str, timeout: float) -> float:
    """Seconds until the ledger has an ``instances`` row (polled every 20 ms)."""
    ledger = lag.reader(ledger_url)
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if ledger_count(ledger) > 0:
                return time.perf_counter() - start
            time.sleep(0.02)
    finally:
        ledger.dispose()
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
def adapter(work: Path) -> Iterator[tuple[int, int, str, str]]:
    """A running adapter in ``work``: (pid, port, called AE, ledger URL); stopped after."""
    started = start_receiver("adapter", work)
    try:
        assert started.ledger_url is not None
        yield started.proc.pid, started.port, started.ae_title, started.ledger_url
    finally:
        stop(started.proc)


def measure(path: Path, workdir: Path) -> Measurement:
    """Start an adapter, send ``path`` once, and read its memory before and after."""
    size = path.stat().st_size
    with scratch(workdir) as work:
        with adapter(work) as (pid, port, ae, ledger):
            sampler = Sampler(pid)
            sampler.sample()
            idle_kb = sum(sampler.split()[:2])
            sampler.start()
            try:
                send_seconds = storescu(port, ae, path, 120 + size / 1e6)
                ledger_seconds = wait_ledger_row(ledger, LEDGER_TIMEOUT)
            finally:
                sampler.finish()
        got = received_file(work / "spool")
        intact = got.stat().st_size > 0 and dataset_sha256(got) == dataset_sha256(path)
    adapter_kb, children_kb, children = sampler.split()
    return Measurement(
        size,
        send_seconds,
        ledger_seconds,
        idle_kb,
        adapter_kb,
        children_kb,
        children,
        sampler.rss_peak_kb,
        intact,
    )


def mb(kb: int) -> float:
    """/proc's kB (KiB) as MB (10^6 bytes), the unit of every figure printed."""
    return kb * 1024 / 1e6


def table(m: Measurement) -> str:
    """A Markdown table of one measurement."""
    peak_mb = mb(m.peak_kb)
    return "\n".join(
        [
            "| instance MB | send s | MB/s | idle MB | adapter peak MB | children | children "
            "peak MB | peak RSS MB | sampled RSS MB | ledger lag s | dataset sha256 "
            f"| under {BAR_MB} MB |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
            f"| {m.size / 1e6:.0f} | {m.send_seconds:.2f} | {m.mbps:.1f} | {mb(m.idle_kb):.0f} "
            f"| {mb(m.adapter_kb):.0f} | {m.children} | {mb(m.children_kb):.0f} "
            f"| {peak_mb:.0f} | {mb(m.rss_peak_kb):.0f} | {m.ledger_seconds:.2f} "
            f"| {'same' if m.intact else 'DIFFERENT'} | {'yes' if peak_mb < BAR_MB else 'NO'} |",
        ]
    )


NOTE = (
    "MB = 10^6 bytes. idle: the tree's VmHWM after start-up, before the send. peak RSS: the "
    "adapter's VmHWM plus each child's (an upper bound of the tree's peak); sampled RSS: the "
    "largest sum of VmRSS seen every 20 ms (a lower bound). MB/s: size over storescu's wall time."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus_mod.add_corpus_folder(parser)
    parser.add_argument(
        "--megabytes", type=int, default=1024, help="pixel data size in MiB (default 1024)"
    )
    corpus_mod.add_workdir(parser)
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
    print()
    print(NOTE)
    if not result.intact:
        print("Error: the received dataset differs from the one sent", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
