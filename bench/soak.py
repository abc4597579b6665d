"""Soak: the adapter under sustained load, with reloads and status calls; does memory level off?

    python bench/soak.py --corpus var/bench-corpus [--senders 4] [--seconds 1800]
                         [--reload-every 30] [--status-every 10] [--sample-every 10]

``--senders`` DCMTK ``storescu`` processes (TCP_NODELAY=1) send the small
corpus (``--small``, 2,000 by default) over and over, each a new association
per round, until ``--seconds`` have passed; meanwhile the adapter gets a
SIGHUP every ``--reload-every`` seconds and ``dicom-adapter status --json``
runs every ``--status-every`` seconds, as a monitoring script would.  The
adapter is ``bench/run.py``'s (a plain receiver on a fresh spool and SQLite
ledger), so every round after the first resends identical instances, which
intake discards with an event each: the ledger keeps growing, as it does
on a site.

Every ``--sample-every`` seconds it reads, per process of the adapter's
tree (the adapter, its SCP process), the resident set size, threads and
open descriptors from ``/proc``.  It prints them as a table over time, and
for each process the slope of its RSS over the last half of the run (least
squares, MB per minute): the number that says whether memory levels off.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod
import lag
from run import HOST, adapter_command, child_env, scratch, start_receiver, stop, tool

MIB = 1 << 20


@dataclass
class Sample:
    at: float  # seconds since the start
    rss: dict[str, int]  # process name -> bytes
    threads: dict[str, int]
    fds: dict[str, int]


@dataclass
class Counts:
    rounds: int = 0
    failed_rounds: int = 0
    reloads: int = 0
    status_calls: int = 0
    status_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, value: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + value)


def tree(pid: int) -> dict[str, int]:
    """The adapter's processes by name: ``adapter`` and its direct children by command."""
    found = {"adapter": pid}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            name = "scp" if b"scp.process" in command else f"child {child}"
            found[name] = int(child)
    return found


def status_field(pid: int, name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def sample(pid: int, started: float) -> Sample:
    processes = tree(pid)
    return Sample(
        at=time.monotonic() - started,
        rss={n: status_field(p, "VmRSS") * 1024 for n, p in processes.items()},
        threads={n: status_field(p, "Threads") for n, p in processes.items()},
        fds={n: _fds(p) for n, p in processes.items()},
    )


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def slope_mb_per_minute(samples: list[Sample], name: str) -> float:
    """Least-squares slope of ``name``'s RSS over the second half of the samples."""
    half = [s for s in samples[len(samples) // 2 :] if name in s.rss]
    if len(half) < 2:
        return 0.0
    xs = [s.at / 60 for s in half]
    ys = [s.rss[name] / MIB for s in half]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def sender(port: int, ae: str, files: list[Path], until: float, counts: Counts) -> None:
    """One storescu after another over ``files`` until ``until``."""
    storescu = tool("storescu")
    env = child_env()
    while time.monotonic() < until:
        done = subprocess.run(
            [storescu, "-aec", ae, HOST, str(port), *map(str, files)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        counts.add("rounds")
        if done.returncode != 0:
            counts.add("failed_rounds")


def monitor(config: Path, pid: int, args: argparse.Namespace, until: float, counts: Counts) -> None:
    """SIGHUP every ``--reload-every`` seconds, ``status --json`` every ``--status-every``."""
    next_reload = time.monotonic() + args.reload_every
    next_status = time.monotonic() + args.status_every
    while (now := time.monotonic()) < until:
        if now >= next_reload:
            os.kill(pid, signal.SIGHUP)
            counts.add("reloads")
            next_reload += args.reload_every
        if now >= next_status:
            done = subprocess.run(
                [*adapter_command(), "status", "--json", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                env=child_env(),
            )
            counts.add("status_calls")
            counts.add("status_failures", int(done.returncode not in (0, 1)))
            next_status += args.status_every
        time.sleep(0.2)


def soak(args: argparse.Namespace, work: Path) -> str:
    files = corpus_mod.corpus_files(corpus_mod.build_small(args.corpus, args.small))
    started = start_receiver("adapter", work)
    counts = Counts()
    samples: list[Sample] = []
    began = time.monotonic()
    until = began + args.seconds
    workers = [
        threading.Thread(target=sender, args=(started.port, started.ae_title, files, until, counts))
        for _ in range(args.senders)
    ]
    workers.append(
        threading.Thread(
            target=monitor, args=(work / "config.ini", started.proc.pid, args, until, counts)
        )
    )
    try:
        for worker in workers:
            worker.start()
        while time.monotonic() < until:
            samples.append(sample(started.proc.pid, began))
            time.sleep(min(args.sample_every, max(0.0, until - time.monotonic())))
        for worker in workers:
            worker.join()
        samples.append(sample(started.proc.pid, began))
        stored = _rows_and_events(started.ledger_url)
    finally:
        stop(started.proc)
    return report(args, samples, counts, stored)


def _rows_and_events(ledger_url: str | None) -> tuple[int, int]:
    assert ledger_url is not None
    ledger = lag.reader(ledger_url)
    try:
        with ledger.connect() as connection:
            rows = connection.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()
            events = connection.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    finally:
        ledger.dispose()
    return rows, events


def report(
    args: argparse.Namespace, samples: list[Sample], counts: Counts, stored: tuple[int, int]
) -> str:
    names = sorted({name for s in samples for name in s.rss}, key=lambda n: (n != "adapter", n))
    lines = [
        f"Soak: {args.senders} storescu senders over {args.small} small instances for "
        f"{args.seconds:g} s; SIGHUP every {args.reload_every:g} s, status every "
        f"{args.status_every:g} s",
        "",
        f"{counts.rounds} storescu rounds ({counts.failed_rounds} failed), "
        f"{counts.reloads} reloads, {counts.status_calls} status calls "
        f"({counts.status_failures} failed); ledger: {stored[0]:,} instances, "
        f"{stored[1]:,} events",
        "",
        "| seconds | " + " | ".join(f"{n} RSS MB | {n} threads | {n} fds" for n in names) + " |",
        "|--:|" + "--:|--:|--:|" * len(names),
    ]
    for s in samples:
        cells = [
            f"{s.rss.get(n, 0) / MIB:.1f} | {s.threads.get(n, 0)} | {s.fds.get(n, 0)}"
            for n in names
        ]
        lines.append(f"| {s.at:.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        lines.append(
            f"RSS slope over the last half, {name}: "
            f"{slope_mb_per_minute(samples, name):+.2f} MB/min"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus_mod.add_corpus_folder(parser)
    corpus_mod.add_workdir(parser)
    parser.add_argument("--small", type=int, default=2000, help="instances each round sends")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--reload-every", type=float, default=30)
    parser.add_argument("--status-every", type=float, default=10)
    parser.add_argument("--sample-every", type=float, default=10)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with scratch(args.workdir) as work:
        print(soak(args, work))


if __name__ == "__main__":
    main()
