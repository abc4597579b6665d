"""Where the CPU goes per received instance: the adapter's parts, storescu and Orthanc.

    python bench/cpu.py --corpus var/bench-corpus [--name small] [--count 1000] [--assocs 4]
        [--repeat 3] [--receivers adapter,orthanc] [--profile 20]

Throughput on a 2-core box is decided by CPU per instance: every process
shares the two cores, and a Python process runs its Python on one core at a
time (the GIL). For each repetition a fresh receiver takes the corpus from
``storescu`` (as ``run.py`` sends it); the CPU time (user + system, from
``/proc``) each process used during the send and until the ledger holds
every row is divided by the instance count. The senders' CPU comes from
``RUSAGE_CHILDREN`` around the send.

For the adapter, ``py-spy`` (sampling from outside, at ``SAMPLE_HZ``) names
each thread of the main process, so its CPU splits into intake (reading and
checksumming files, and its ledger transactions, by the share of intake's
samples in each), the watcher (watchdog's threads), the SCP's messages (the
``scp-pipe`` thread) and the rest. ``--profile N`` also prints the SCP
process's N hottest functions, by samples that held the GIL (its Python
work), from the last repetition.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod
import lag
import orthanc
import run

SAMPLE_HZ = 250
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# What a main-process thread is, by the code py-spy finds in its samples.
INTAKE_READ = ("Intake._inspect",)
INTAKE_LEDGER = ("Intake._record_batch", "LedgerTransaction", "Ledger.transaction", "recorded")
WATCHER = ("watchdog", "inotify")
SCP_MESSAGES = ("ScpProcess._receive", "ScpProcess._read")


@dataclass
class Breakdown:
    """CPU ms per instance, by part, for each repetition of one receiver."""

    receiver: str
    parts: dict[str, list[float]] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)

    def add(self, part: str, ms: float) -> None:
        self.parts.setdefault(part, []).append(ms)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def cpu_seconds(stat_path: Path) -> float:
    """utime + stime of a process or thread; 0 once it is gone."""
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid``."""
    with contextlib.suppress(OSError):
        return {int(t.name): cpu_seconds(t / "stat") for t in Path(f"/proc/{pid}/task").iterdir()}
    return {}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Sampler:
    """``py-spy record`` on one process, raw collapsed stacks per thread."""

    def __init__(self, pid: int, out: Path, gil: bool = False) -> None:
        self.out = out
        command = [py_spy() or "py-spy", "record", "--pid", str(pid)]
        command += ["--rate", str(SAMPLE_HZ), "--threads", "--format", "raw", "--nonblocking"]
        command += ["--output", str(out), *(["--gil"] if gil else [])]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> list[tuple[list[str], int]]:
        """Stop sampling; the samples as (frames, count), the first frame naming the thread."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        samples = []
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples.append((stack.split(";"), int(count)))
        return samples


def py_spy() -> str | None:
    """py-spy from this Python's venv (the test extra pins it), else from PATH.

    Not by putting the venv on PATH: its pynetdicom ``storescu`` would then
    shadow DCMTK's.
    """
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def thread_id(frame: str) -> int:
    """The OS thread id in py-spy's ``thread (TID): name`` frame."""
    return int(frame.split("(", 1)[1].split(")", 1)[0], 0)


def classify(samples: list[tuple[list[str], int]]) -> dict[int, Counter[str]]:
    """Per thread id, how many samples fell in each part."""
    parts: dict[int, Counter[str]] = {}
    for frames, count in samples:
        text = ";".join(frames[1:])
        if any(mark in text for mark in INTAKE_READ):
            part = "intake: read and checksum files"
        elif any(mark in text for mark in INTAKE_LEDGER):
            part = "intake: ledger transactions (SQLAlchemy, SQLite)"
        elif any(mark in text for mark in WATCHER):
            part = "watcher (watchdog threads)"
        elif any(mark in text for mark in SCP_MESSAGES):
            part = "SCP's messages (scp-pipe thread)"
        else:
            part = "other threads"
        parts.setdefault(thread_id(frames[0]), Counter())[part] += count
    return parts


def split_main(
    before: dict[int, float], after: dict[int, float], samples: list[tuple[list[str], int]]
) -> Counter[str]:
    """The main process's CPU seconds by part: each thread's CPU, shared out by its samples."""
    result: Counter[str] = Counter()
    parts = classify(samples)
    for tid, seconds in after.items():
        used = seconds - before.get(tid, 0.0)
        counts = parts.get(tid)
        if not counts:
            result["other threads"] += used
            continue
        total = sum(counts.values())
        for part, count in counts.items():
            result[part] += used * count / total
    return result


def hottest(samples: list[tuple[list[str], int]], top: int) -> list[tuple[str, float]]:
    """The functions in most samples (inclusive), as (function, share)."""
    total = sum(count for _, count in samples) or 1
    seen: Counter[str] = Counter()
    for frames, count in samples:
        for name in {frame.split(" (")[0] for frame in frames[1:]}:
            seen[name] += count
    skip = ("Thread.", "_bootstrap", "run_then_close", "run_reactor", "_is_transport_event")
    ranked = [(name, n) for name, n in seen.most_common() if not name.startswith(skip)]
    return [(name, n / total) for name, n in ranked[:top]]


def repetition(
    kind: str, files: list[Path], assocs: int, work: Path, profile: bool
) -> tuple[float, Counter[str], list[tuple[list[str], int]]]:
    """One send into a fresh receiver: (inst/s, CPU seconds by part, SCP's GIL samples)."""
    seconds: Counter[str] = Counter()
    scp_samples: list[tuple[list[str], int]] = []
    with contextlib.ExitStack() as stack:
        started = run.start_receiver(kind, work)
        stack.callback(run.stop, started.proc)
        time.sleep(1.0)  # past start-up: its work is not the instances'
        pids = process_tree(started.proc.pid)
        main_pid, others = pids[0], pids[1:]
        samplers: dict[int, Sampler] = {}
        if kind == "adapter":
            samplers[main_pid] = Sampler(main_pid, work / "main.spy")
            if profile:
                for pid in others:
                    samplers[pid] = Sampler(pid, work / f"{pid}.spy", gil=True)
            time.sleep(0.5)  # py-spy attaches
        ledger = lag.reader(started.ledger_url) if started.ledger_url else None
        if ledger is not None:
            stack.callback(ledger.dispose)
            run.ledger_count(ledger)
        threads_before = thread_seconds(main_pid)
        before = {pid: cpu_seconds(Path(f"/proc/{pid}/stat")) for pid in pids}
        senders = children_cpu()
        elapsed = run.send(started.port, started.ae_title, files, 120 + len(files), assocs)
        seconds["storescu"] = children_cpu() - senders
        if ledger is not None:
            run.wait_ledger(ledger, len(files), run.LEDGER_TIMEOUT)
        threads_after = thread_seconds(main_pid)
        for pid in pids:
            used = cpu_seconds(Path(f"/proc/{pid}/stat")) - before[pid]
            if kind != "adapter":
                seconds[kind] += used
            elif pid != main_pid:
                seconds["SCP process (receive, check, write, fsync, answer)"] += used
        if kind == "adapter":
            main_samples = samplers.pop(main_pid).stop()
            seconds.update(split_main(threads_before, threads_after, main_samples))
            for sampler in samplers.values():
                scp_samples += sampler.stop()
    return len(files) / elapsed, seconds, scp_samples


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    corpus_mod.add_corpus_folder(parser)
    corpus_mod.add_workdir(parser)
    parser.add_argument("--name", choices=("ct", "small"), default="small")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--assocs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--receivers", default="adapter,orthanc")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    kinds = args.receivers.split(",")
    missing = [] if shutil.which("storescu") else ["storescu (DCMTK)"]
    missing += [] if py_spy() else ["py-spy"]
    if "orthanc" in kinds and orthanc.find_binary() is None:
        missing.append("Orthanc")
    if missing:
        print(f"Error: not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    build = corpus_mod.build_ct if args.name == "ct" else corpus_mod.build_small
    args.corpus.mkdir(parents=True, exist_ok=True)
    files = corpus_mod.corpus_files(build(args.corpus, args.count))
    results = {kind: Breakdown(kind) for kind in kinds}
    scp_samples: list[tuple[list[str], int]] = []
    for rep in range(args.repeat):
        for kind in kinds:
            profile = bool(args.profile) and rep == args.repeat - 1
            with run.scratch(args.workdir) as work:
                rate, seconds, samples = repetition(kind, files, args.assocs, work, profile)
            scp_samples += samples
            results[kind].rates.append(rate)
            for part, used in seconds.items():
                results[kind].add(part, used / len(files) * 1000)
            print(f"  {kind} run {rep + 1}/{args.repeat}: {rate:.0f} inst/s", flush=True)
    print(f"\n{args.name} x{args.assocs}, {len(files)} instances, medians of {args.repeat}:\n")
    print("| receiver | part | CPU ms per instance |\n|---|---|--:|")
    for kind, result in results.items():
        total = 0.0
        for part, values in sorted(result.parts.items(), key=lambda item: item[0] == "storescu"):
            median = statistics.median(values)
            total += median if part != "storescu" else 0.0
            print(f"| {kind} | {part} | {median:.2f} |")
        rate = statistics.median(result.rates)
        print(f"| {kind} | **receiver total** ({rate:.0f} inst/s while measured) | {total:.2f} |")
    if scp_samples:
        print("\nThe adapter's SCP process, functions in most GIL-holding samples (inclusive):\n")
        print("| function | share of samples |\n|---|--:|")
        for name, share in hottest(scp_samples, args.profile):
            print(f"| `{name}` | {share:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
