"""Claim throughput: several claimers at once on one ledger, jobs claimed per second.

    python bench/claims.py [--groups 2000] [--per-group 5] [--claimers 1,4] [--repeat 3]
        [--backend sqlite|postgresql|both]

Several nodes' groupers see the same open groups and each tries to claim
them.  For each number of claimers this builds a fresh ledger with
``--groups`` groups of ``--per-group`` received instances (one AE), then
starts that many claimer processes together (each its own engine, as each
node has).  Each walks every group in its own random order: it claims the
group into a job (``Processing.claim_group``) and picks that job up
(``Tasks.start``), or finds the group already taken.  The wall time from
the common start to the last claimer's end gives jobs per second.  Each
count runs twice: with the ledger's row locks (claims and pick-ups take the
writer lock in shared mode and lock their rows, ``SKIP LOCKED``), and, for
reference, with every transaction taking the one writer lock exclusively,
as before row locks (on SQLite the two are the same).  Then the ledger is
checked: one job per group, every instance claimed once by one
job, every job started once.  Nothing is asserted about speed: it prints a
markdown table (median of ``--repeat`` runs), and exits non-zero on a
double claim.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the project, then run.py

from run import free_port  # noqa: E402
from sqlalchemy import text  # noqa: E402

from ledger.db import make_engine  # noqa: E402  (the project root is on the path first)
from ledger.migrate import upgrade  # noqa: E402
from ledger.processing import Processing  # noqa: E402
from ledger.store import Ledger, LedgerTransaction, chunked  # noqa: E402
from ledger.tasks import Tasks  # noqa: E402
from tests.conftest import new_instance  # noqa: E402
from tests.pgcluster import MISSING, available, throwaway_cluster  # noqa: E402

AE = "DICOMADAPTER"
ROW_LOCKS, WRITER_LOCK = "row locks", "one writer lock"
UID_ROOT = "1.2.826.0.1.3680043.8.498"


@dataclass(frozen=True)
class Outcome:
    seconds: float
    jobs: int
    empty_claims: int  # claims that found their group taken already
    problems: tuple[str, ...]  # double claims and the like: none expected


def build(url: str, groups: int, per_group: int) -> list[str]:
    """A ledger at the head with ``groups`` received groups; their keys."""
    engine = make_engine(url)
    upgrade(engine)
    ledger = Ledger(engine)
    rows = [
        (
            new_instance(f"/spool/{AE}/{g}/{n}.dcm", AE, f"{UID_ROOT}.{g}.{n}", f"{UID_ROOT}.{g}"),
            "received",
        )
        for g in range(groups)
        for n in range(per_group)
    ]
    for batch in chunked(rows, 500):
        with ledger.transaction() as tx:
            tx.add_many(batch)
    engine.dispose()
    return [f"{UID_ROOT}.{g}" for g in range(groups)]


class WriterLockOnly(Ledger):
    """The reference: every transaction exclusive, as before claims locked their rows."""

    @contextmanager
    def transaction(
        self, now: datetime | None = None, *, shared: bool = False
    ) -> Iterator[LedgerTransaction]:
        with super().transaction(now) as tx:
            yield tx


def claimer(
    url: str, locking: str, keys: list[str], seed: int, start: object, results: object
) -> None:
    """One node's grouper: claim and pick up every group it still finds, in its own order."""
    engine = make_engine(url)
    ledger = (Ledger if locking == ROW_LOCKS else WriterLockOnly)(engine)
    processing, tasks = Processing(ledger), Tasks(ledger)
    order = list(keys)
    random.Random(seed).shuffle(order)
    claimed = empty = 0
    start.wait()  # type: ignore[attr-defined]
    for key in order:
        job = processing.claim_group(AE, key, "command", "quiet period over")
        if job is None:
            empty += 1
            continue
        if tasks.start(job.id, node=f"claimer-{seed}", lease_seconds=30) is not None:
            claimed += 1
    results.put((claimed, empty, time.monotonic()))  # type: ignore[attr-defined]
    engine.dispose()


def check(url: str, groups: int, per_group: int) -> list[str]:
    """Every way the ledger could show a double claim; empty when there is none."""
    engine = make_engine(url)
    problems = []
    with engine.connect() as connection:

        def one(sql: str) -> object:
            return connection.execute(text(sql)).scalar_one()

        jobs = one("SELECT count(*) FROM tasks WHERE kind = 'process'")
        if jobs != groups:
            problems.append(f"{jobs} jobs for {groups} groups")
        shared = one(
            "SELECT count(*) FROM (SELECT group_key FROM tasks GROUP BY 1 HAVING count(*) > 1) s"
        )
        if shared:
            problems.append(f"{shared} groups claimed by more than one job")
        twice = one(
            "SELECT count(*) FROM (SELECT instance_id FROM events WHERE to_state = 'claimed'"
            " GROUP BY 1 HAVING count(*) > 1) s"
        )
        if twice:
            problems.append(f"{twice} instances claimed twice")
        unclaimed = one("SELECT count(*) FROM instances WHERE state != 'claimed'")
        if unclaimed:
            problems.append(f"{unclaimed} of {groups * per_group} instances not claimed")
        restarted = one("SELECT count(*) FROM tasks WHERE attempts != 1 OR state != 'running'")
        if restarted:
            problems.append(f"{restarted} jobs not started exactly once")
    engine.dispose()
    return problems


def run_once(url: str, locking: str, groups: int, per_group: int, claimers: int) -> Outcome:
    keys = build(url, groups, per_group)
    context = multiprocessing.get_context("spawn")  # each claimer a fresh interpreter
    start, results = context.Barrier(claimers + 1), context.Queue()
    processes = [
        context.Process(target=claimer, args=(url, locking, keys, seed, start, results))
        for seed in range(claimers)
    ]
    for process in processes:
        process.start()
    start.wait()
    began = time.monotonic()
    finished = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(60)
        if process.exitcode != 0:
            raise SystemExit(f"a claimer exited with {process.exitcode}")
    seconds = max(end for _, _, end in finished) - began
    jobs = sum(claimed for claimed, _, _ in finished)
    empty = sum(e for _, e, _ in finished)
    return Outcome(seconds, jobs, empty, tuple(check(url, groups, per_group)))


@contextmanager
def ledgers(backend: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty ledger URLs on ``backend``."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="claims-bench-") as folder:
            made = iter(range(1_000_000))
            yield lambda: f"sqlite:///{folder}/ledger-{next(made)}.db"
        return
    if not available():
        raise SystemExit(MISSING)
    with throwaway_cluster(free_port()) as cluster:
        yield cluster.database


def _row(backend: str, locking: str, count: int, outcomes: list[Outcome]) -> bool:
    """Print one table row; whether it found a double claim."""
    rate = statistics.median(o.jobs / o.seconds for o in outcomes)
    empty = statistics.median(o.empty_claims for o in outcomes)
    problems = sorted({p for o in outcomes for p in o.problems})
    verdict = "; ".join(problems) if problems else "none"
    shown = "one writer (SQLite)" if backend == "sqlite" else locking
    print(f"| {backend} | {shown} | {count} | {rate:,.0f} | {empty:,.0f} | {verdict} |")
    return bool(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--per-group", type=int, default=5)
    parser.add_argument("--claimers", default="1,4", help="comma-separated counts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    counts = [int(n) for n in args.claimers.split(",")]
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(
        f"Claims: {args.groups:,} groups of {args.per_group} instances, each claimer walks "
        f"every group in its own order; median of {args.repeat}\n"
    )
    print(
        "| ledger | locking | claimers | jobs/s | claims that found the group taken "
        "| double claims |"
    )
    print("|---|---|---:|---:|---:|---|")
    failed = False
    for backend in backends:
        lockings = [ROW_LOCKS] if backend == "sqlite" else [ROW_LOCKS, WRITER_LOCK]
        with ledgers(backend) as fresh:
            for locking in lockings:
                for count in counts:
                    outcomes = [
                        run_once(fresh(), locking, args.groups, args.per_group, count)
                        for _ in range(args.repeat)
                    ]
                    failed |= _row(backend, locking, count, outcomes)
    if failed:
        raise SystemExit("double claims found: see the table")


if __name__ == "__main__":
    main()
