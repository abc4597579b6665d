"""A reconcile pass over a spool of a million files: time and memory.

    python bench/reconcile_scale.py [--files 1000000] [--orphans 1000] [--folder DIR]

Reconcile runs at start and every ``reconcile_interval`` seconds, because
inotify drops events under load.  Over a spool a site has filled for
months it must not take minutes, hold every path in memory, or re-queue
what intake already knows.  This builds a spool of ``--files`` small files
in ``<AE>/<study>/<series>/`` folders (500 per study) with one ledger row
each, at the Alembic head, plus ``--orphans`` files with no row, then times
one :class:`watchers.reconcile.Reconciler` pass (the service's own code,
feeding the service's intake queue, not drained here) and measures the
Python heap it allocated (``tracemalloc`` peak).  The reference is ``find``
listing the same tree in the same run.  A second pass shows that intake's
queue holds each orphan once, however many passes report it.  Nothing is
asserted: it prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scratch import in_scratch  # noqa: E402
from sqlalchemy import insert  # noqa: E402  (the project root is on the path first)

from ledger.db import make_engine  # noqa: E402
from ledger.migrate import upgrade  # noqa: E402
from ledger.models import utcnow  # noqa: E402
from ledger.store import INSTANCES, Ledger  # noqa: E402
from spool.layout import SpoolLayout  # noqa: E402
from watchers.intake import Intake, IntakeWorker  # noqa: E402
from watchers.reconcile import Reconciler  # noqa: E402

AE = "DICOMADAPTER"
PER_STUDY = 500
UID_ROOT = "1.2.826.0.1.3680043.8.498"
ROWS_PER_INSERT = 10_000


def build(folder: Path, files: int, orphans: int) -> Ledger:
    """The spool's files (empty: reconcile never reads a recorded file) and their rows."""
    layout = SpoolLayout(folder / "spool")
    layout.ensure([AE])
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    upgrade(engine)
    now = utcnow()
    rows = []
    for number in range(files + orphans):
        study, index = divmod(number, PER_STUDY)
        series = layout.root / AE / f"{UID_ROOT}.1.{study}" / f"{UID_ROOT}.2.{study}"
        if index == 0:
            series.mkdir(parents=True)
        path = series / f"{UID_ROOT}.3.{number}.dcm"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o640))
        if number < files:
            rows.append(_row(str(path), number, now))
        if len(rows) == ROWS_PER_INSERT:
            _insert(engine, rows)
            rows = []
    _insert(engine, rows)
    past = time.time() - 3600  # settled long ago
    for number in range(files, files + orphans):
        study = number // PER_STUDY
        series = layout.root / AE / f"{UID_ROOT}.1.{study}" / f"{UID_ROOT}.2.{study}"
        os.utime(series / f"{UID_ROOT}.3.{number}.dcm", (past, past))
    return Ledger(engine)


def _row(path: str, number: int, now: object) -> dict[str, object]:
    return {
        "state": "received",
        "path": path,
        "called_ae": AE,
        "sop_instance_uid": f"{UID_ROOT}.3.{number}",
        "study_instance_uid": f"{UID_ROOT}.1.{number // PER_STUDY}",
        "received_at": now,
        "updated_at": now,
    }


def _insert(engine: object, rows: list[dict[str, object]]) -> None:
    if rows:
        with engine.begin() as connection:  # type: ignore[attr-defined]
            connection.execute(insert(INSTANCES), rows)


def timed_pass(reconciler: Reconciler) -> tuple[float, int]:
    """(seconds, orphans found) of one pass."""
    started = time.perf_counter()
    report = reconciler.tick()
    return time.perf_counter() - started, report.adopted


def heap_peak(reconciler: Reconciler) -> int:
    """Bytes of Python heap one pass allocates at most (a pass of its own: tracing is slow)."""
    tracemalloc.start()
    reconciler.tick()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def find_seconds(spool: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["find", str(spool), "-type", "f"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def report(args: argparse.Namespace, folder: Path) -> str:
    started = time.perf_counter()
    ledger = build(folder, args.files, args.orphans)
    built = time.perf_counter() - started
    layout = SpoolLayout(folder / "spool")
    queue = IntakeWorker(Intake(layout, ledger, {AE: "replace"}))  # never started
    reconciler = Reconciler(layout, ledger, queue.submit, 2.0, stale_tmp_seconds=600)
    reference = find_seconds(layout.root)
    first = timed_pass(reconciler)
    second = timed_pass(reconciler)
    peak = heap_peak(reconciler)
    ledger.engine.dispose()
    total = args.files + args.orphans
    lines = [
        f"Reconcile at {args.files:,} recorded files and {args.orphans:,} orphans "
        f"(built in {built:.0f} s)",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| `find` over the spool (reference) | {reference:.2f} s |",
    ]
    for name, (seconds, adopted) in (("first pass", first), ("second pass", second)):
        lines.append(
            f"| reconcile, {name} | {seconds:.2f} s ({seconds / reference:.1f}x `find`), "
            f"{total / seconds:,.0f} files/s, {adopted:,} orphans reported |"
        )
    lines += [
        f"| Python heap peak of a pass | {peak / 2**20:.1f} MiB |",
        f"| paths in intake's queue after three passes | {queue.queued:,} |",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--orphans", type=int, default=1000)
    parser.add_argument("--folder", type=Path, help="scratch folder (must not exist; kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(in_scratch(args.folder, "reconcile-scale-", lambda folder: report(args, folder)))


if __name__ == "__main__":
    main()
