"""Status page at scale: a running adapter's ``GET /`` over a ledger of a million instances.

    python bench/page_scale.py [--instances 1000000] [--requests 20] [--warmup 3]
        [--repeat 5] [--backend sqlite|postgresql] [--folder DIR]

The issue's bar: with 1,000,000 instances in the ledger the overview renders
in under 300 ms.  This builds such a ledger with ``bench/ledger_scale.py``'s
own steps (intake's batches, then the grouper's, dispatcher's and
reclaimer's moves), shaped like a site a month in: studies of 100-500
instances from several modalities to two AE titles over 30 days, the last
hours arriving minute by minute, nearly all ``reclaimed``, the last day's
``submitted``, the last two hours' still ``received``, a few ``claimed`` by
another node, some jobs ``failed``, one study in ten forwarded to an
archive (a few of those exports failed with files undelivered) and some
files quarantined (``rejected``), so every query of the page has rows to go
through.  The files the ledger says are on disk are created (empty), so the
adapter's reconcile finds nothing to flag.

Then a real ``dicom-adapter run`` serves the pages on a free ``[http]`` port,
and ``GET /``, ``GET /studies/<the biggest forwarded study>`` and
``GET /healthz`` are timed over loopback (a new connection each, like a
browser's reload) after a few warm-ups; with the adapter still running, each
read the overview makes is timed alone in this process, against the same
ledger, to say where the time goes.  The AEs' ``timeout``, ``max_wait`` and
``retention`` are a day, so the adapter leaves the ledger as built while it
is measured.  Nothing is asserted: it prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the project, then the other benches

from ledger_scale import (  # noqa: E402
    CALLED_AES,
    Clock,
    PostgresLedger,
    SqliteLedger,
    Study,
    Target,
    advance,
    plan_studies,
    record_batch,
    study_instances,
)
from run import HOST, BenchError, adapter_command, child_env, free_port, stop, wait_port  # noqa: E402
from scratch import in_scratch  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from config import Config, load_config  # noqa: E402
from health import answers, health  # noqa: E402
from ledger.dashboard import Dashboard  # noqa: E402
from ledger.db import make_engine  # noqa: E402
from ledger.exports import Exports  # noqa: E402
from ledger.migrate import upgrade  # noqa: E402
from ledger.models import utcnow  # noqa: E402
from ledger.processing import Processing  # noqa: E402
from ledger.records import ItemOutcome, ItemSpec, NewInstance  # noqa: E402
from ledger.states import ON_DISK, TaskKind, TaskState  # noqa: E402
from ledger.store import EVENTS, INSTANCES, Ledger, chunked  # noqa: E402
from ledger.tasks import TASKS, Tasks  # noqa: E402
from tests import pgcluster  # noqa: E402
from tests.pgcluster import throwaway_cluster  # noqa: E402

STUDY_SIZES = (100, 500)  # fewest and most instances per study
BATCH = 500  # instances per intake transaction, for the older studies
MINUTE_BY_MINUTE = timedelta(hours=3)  # newer: one transaction per minute, for the chart
# Shares of the studies, newest first: still received, claimed by another node, submitted.
RECEIVED, CLAIMED, SUBMITTED = 0.003, 0.001, 0.025
FAILED_JOB_EVERY = 150  # of the older studies, one job in this many failed
FORWARDED_EVERY = 10  # of the processed studies, one in this many forwarded to ARCHIVE
FAILED_EXPORT_EVERY = 13  # of the forwards, one in this many failed
REJECTED_PER = 5000  # one quarantined file per this many instances
OTHER_NODE = "ward-b"  # holds the claimed studies' running jobs
DESTINATION = "ARCHIVE"
DAY = 86400


def plan(total: int, now: datetime, seed: int) -> tuple[list[Study], dict[str, int]]:
    """Studies of 100-500 instances adding up to ``total``, oldest first, and their sizes."""
    rng = random.Random(seed)
    sizes: list[int] = []
    left = total
    while left > 0:
        sizes.append(min(rng.randint(*STUDY_SIZES), left))
        left -= sizes[-1]
    studies = plan_studies(len(sizes), now, seed)
    return studies, {study.uid: size for study, size in zip(studies, sizes, strict=True)}


def batches(
    studies: list[Study], sizes: dict[str, int], spool: Path, clock: Clock, recent: datetime
) -> Iterator[list[NewInstance]]:
    """Intake's transactions: the older studies BATCH at a time, the recent ones a minute at
    a time (each batch's rows share its first instance's ``received_at``; the chart shows it)."""
    for study in studies:
        items = study_instances(study, sizes[study.uid], spool)
        if study.arrived_at < recent:
            yield from chunked(items, BATCH)
        else:
            for _, minute in groupby(items, lambda new: clock.at(new).strftime("%H:%M")):
                yield list(minute)


def spread(count: int, share: float) -> int:
    """How many of ``count`` a share is: at least one, so a tiny ledger has each kind."""
    return max(1, round(count * share)) if count else 0


def fated(studies: list[Study]) -> list[tuple[Study, str]]:
    """Each processed study with its end state, oldest first; the newest stay received."""
    newest = len(studies) - spread(len(studies), RECEIVED)
    claimed = newest - spread(newest, CLAIMED)
    submitted = claimed - spread(claimed, SUBMITTED)
    every = max(1, min(FAILED_JOB_EVERY, submitted))
    result = []
    for index, study in enumerate(studies[:newest]):
        if index >= claimed:
            fate = "claimed"
        elif index >= submitted:
            fate = "submitted"
        else:
            fate = "failed" if index % every == every // 2 else "reclaimed"
        result.append((study, fate))
    return result


def hand_to_other_node(ledger: Ledger) -> int:
    """The claimed studies' jobs run on another node, its lease good for two days: this
    adapter leaves them alone (``Tasks.recover`` and ``requeue_lapsed``)."""
    tasks = Tasks(ledger)
    started = [
        tasks.start(task.id, node=OTHER_NODE, lease_seconds=2 * DAY)
        for task in tasks.listing(TaskKind.PROCESS, TaskState.PENDING)
    ]
    return sum(task is not None for task in started)


def forward(ledger: Ledger, spool: Path) -> int:
    """One processed study in FORWARDED_EVERY exported to the archive: its outbox links
    delivered and deleted, or, one export in FAILED_EXPORT_EVERY, a tenth refused."""
    exports, processing, tasks = Exports(ledger), Processing(ledger), Tasks(ledger)
    jobs = ledger.read(
        select(TASKS.c.id, TASKS.c.finished_at)
        .where(TASKS.c.kind == TaskKind.PROCESS, TASKS.c.state == TaskState.SUCCEEDED)
        .order_by(TASKS.c.id)
    )
    failed = 0
    for number, (job_id, finished_at) in enumerate(jobs[::FORWARDED_EVERY]):
        at = finished_at + timedelta(minutes=1)
        staging = spool.parent / "outbox" / DESTINATION / ".sending" / f"job-{job_id}"
        specs = [
            ItemSpec(
                str(staging / f"{i.id}.dcm"),
                True,
                i.sop_instance_uid,
                i.sop_class_uid,
                i.transfer_syntax_uid,
                i.size,
                i.id,
            )
            for i in processing.job_instances(job_id)
        ]
        task_id = exports.create(DESTINATION, "forward", specs, job_id, at, submitter="cstore")
        tasks.start(task_id, at)
        refusing = number % FAILED_EXPORT_EVERY == 0
        failed += refusing
        items = exports.items(task_id)
        outcomes = [
            ItemOutcome(item.id, 0xA700, "0xA700 refused: out of resources")
            if refusing and n % 10 == 0
            else ItemOutcome(item.id, 0x0000, None)
            for n, item in enumerate(items)
        ]
        exports.settle(task_id, outcomes, None, at)
        sent = [o.item_id for o in outcomes if o.error is None]
        exports.mark_reclaimed(sent, "delivered: link deleted", at + timedelta(minutes=1))
    return failed


def quarantine(ledger: Ledger, spool: Path, count: int, now: datetime) -> None:
    """``count`` unreadable files quarantined over the month (``rejected`` rows)."""
    for number in range(count):
        at = now - timedelta(days=30) * (count - number) / count
        with ledger.transaction(at) as tx:
            path = spool / "quarantine" / f"{at:%Y%m%dT%H%M%S}-{number}.dcm"
            called_ae = CALLED_AES[number % len(CALLED_AES)]
            tx.add_rejected(str(path), called_ae, "not a DICOM file: no DICM prefix")


def touch_live_files(ledger: Ledger) -> int:
    """Create (empty) each file the ledger says is on disk: reconcile flags none missing."""
    rows = ledger.read(select(INSTANCES.c.path).where(INSTANCES.c.state.in_(sorted(ON_DISK))))
    for (path,) in rows:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    return len(rows)


def build(url: str, spool: Path, total: int, seed: int) -> dict[str, float]:
    """The bench ledger at ``url``: what was made, and the seconds it took."""
    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    ledger = Ledger(engine)
    now = datetime.now(UTC)
    studies, sizes = plan(total, now, seed)
    clock = Clock({study.uid: study.arrived_at for study in studies})
    for batch in batches(studies, sizes, spool, clock, now - MINUTE_BY_MINUTE):
        record_batch(ledger, batch, clock.at(batch[0]))
    advance(ledger, fated(studies))
    facts = {
        "studies": len(studies),
        "running on another node": hand_to_other_node(ledger),
        "failed exports": forward(ledger, spool),
    }
    quarantine(ledger, spool, max(1, total // REJECTED_PER), now)
    facts["files created"] = touch_live_files(ledger)
    engine.dispose()
    return facts | {"seconds": time.perf_counter() - started}


def write_config(folder: Path, url: str, dicom_port: int, http_port: int) -> Path:
    """The adapter's config: the bench ledger and spool, pages on ``http_port``; groups,
    and submitted files, kept a day, so nothing moves while the page is timed."""
    aes = "".join(
        f"[ae:{name}]\nprocessor = forward\ndestinations = {DESTINATION}\n"
        f"timeout = {DAY}\nmax_wait = {DAY}\nretention = {DAY}\n\n"
        for name in CALLED_AES
    )
    path = folder / "config.ini"
    path.write_text(
        f"[node]\nname = bench-page\n\n[dicom]\nhost = {HOST}\nport = {dicom_port}\n\n"
        f"[http]\nhost = {HOST}\nport = {http_port}\n\n"
        "[storage]\nspool = spool\njobs = jobs\nmin_free = 0\n\n"
        f"[ledger]\nurl = {url}\n\n[metrics]\nport = 0\n\n{aes}"
        f"[destination:{DESTINATION}]\nae_title = {DESTINATION}\nhost = {HOST}\nport = 9\n"
        f"outbox = outbox/{DESTINATION}\n"
    )
    return path


def start_adapter(
    config: Path, folder: Path, ports: tuple[int, ...], timeout: float
) -> subprocess.Popen[bytes]:
    """``dicom-adapter run`` (its output in ``adapter.log``), once the SCP and the pages
    listen: it reconciles the spool and recovers its tasks first."""
    log = folder / "adapter.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [*adapter_command(), "run", "--config", str(config)],
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
    try:
        for port in ports:
            wait_port(port, proc, timeout)
    except BenchError as exc:
        stop(proc)
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise SystemExit(f"Error: the adapter did not start: {exc}\n" + "\n".join(tail)) from None
    return proc


def fetch(url: str) -> tuple[float, int, int]:
    """One GET on a new connection: (seconds to the last byte, status, bytes)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as refused:  # /healthz answers 503 while unhealthy
        status, body = refused.code, refused.read()
    return time.perf_counter() - started, status, len(body)


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: of 20 requests, p95 is the 19th fastest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def time_requests(base: str, paths: dict[str, str], warmup: int, count: int) -> list[str]:
    """Table rows of each request's median, p95 and max after ``warmup`` untimed ones."""
    rows = []
    for name, path in paths.items():
        for _ in range(warmup):
            fetch(base + path)
        runs = [fetch(base + path) for _ in range(count)]
        seconds = [run[0] * 1000 for run in runs]
        statuses = "/".join(sorted({str(run[1]) for run in runs}))
        rows.append(
            f"| {name} | {statistics.median(seconds):.0f} | {percentile(seconds, 0.95):.0f} "
            f"| {max(seconds):.0f} | {statuses} | {runs[-1][2]:,} |"
        )
    return rows


def overview_reads(config: Config, ledger: Ledger, study: str) -> dict[str, Callable[[], object]]:
    """What ``Pages._overview`` reads, one by one (health's parts too), and the study page."""
    dashboard, processing = Dashboard(ledger), Processing(ledger)
    recent = ledger.recent_studies(10)
    return {
        "`health()` (the status rules), all of it": lambda: health(config, ledger),
        "- of which: C-ECHO to itself": lambda: answers(config),
        "- of which: rolled-back write": ledger.write_problem,
        "- of which: failed tasks (`Tasks.listing`)": lambda: Tasks(ledger).listing(
            state=TaskState.FAILED
        ),
        "- of which: undelivered count (`Exports.undelivered`)": Exports(ledger).undelivered,
        "`Processing.oldest_open_group`": lambda: processing.oldest_open_group(
            list(config.processed_aes)
        ),
        "`Ledger.recent_studies(10)`": lambda: ledger.recent_studies(10),
        "`Dashboard.study_sources`, for each of the 10": lambda: [
            dashboard.study_sources(str(row["called_ae"]), str(row["study_instance_uid"]))
            for row in recent
        ],
        "`Dashboard.received_per_minute`": lambda: dashboard.received_per_minute(utcnow()),
        "`Dashboard.counts_by_ae`": dashboard.counts_by_ae,
        "`Dashboard.failed_tasks`": dashboard.failed_tasks,
        "`Dashboard.undelivered`": dashboard.undelivered,
        "`Dashboard.quarantined`": dashboard.quarantined,
        "`Dashboard.study` (the study page's reads)": lambda: dashboard.study(config.aes, study),
    }


def time_reads(reads: dict[str, Callable[[], object]], repeat: int) -> list[str]:
    """Table rows of each read's median and max of ``repeat`` runs."""
    rows = []
    for name, read in reads.items():
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            read()
            seconds.append((time.perf_counter() - started) * 1000)
        rows.append(f"| {name} | {statistics.median(seconds):.1f} | {max(seconds):.1f} |")
    return rows


def biggest_forwarded(ledger: Ledger) -> tuple[str, int]:
    """The study page to time: the biggest forwarded study (instances, job, export, events)."""
    exported = select(TASKS.c.parent_id).where(TASKS.c.kind == TaskKind.EXPORT)
    rows = ledger.read(
        select(INSTANCES.c.study_instance_uid, func.count())
        .where(INSTANCES.c.job_id.in_(exported))
        .group_by(INSTANCES.c.study_instance_uid)
        .order_by(func.count().desc(), INSTANCES.c.study_instance_uid)
        .limit(1)
    )
    return str(rows[0][0]), int(rows[0][1])


def shape(ledger: Ledger) -> str:
    """One line of what the ledger holds, by state."""
    counts = ledger.counts_by_state()
    events = ledger.read(select(func.count()).select_from(EVENTS))[0][0]
    states = ", ".join(f"{state} {count:,}" for state, count in counts.items() if count)
    return f"{sum(counts.values()):,} instances ({states}); {events:,} events"


def measure(target: Target, folder: Path, args: argparse.Namespace) -> str:
    """Build, start the adapter, time the pages and the reads; the report's markdown."""
    spool = folder / "spool"
    facts = build(target.url, spool, args.instances, args.seed)
    target.settle()
    dicom_port, http_port = free_port(), free_port()
    config_path = write_config(folder, target.url, dicom_port, http_port)
    config = load_config(config_path)
    engine = make_engine(target.url)
    ledger = Ledger(engine)
    study, size = biggest_forwarded(ledger)
    holds = shape(ledger)
    proc = start_adapter(config_path, folder, (dicom_port, http_port), args.start_timeout)
    try:
        paths = {
            "`GET /`": "/",
            f"`GET /studies/<uid>` ({size} instances)": f"/studies/{study}",
            "`GET /healthz`": "/healthz",
        }
        requests = time_requests(f"http://{HOST}:{http_port}", paths, args.warmup, args.requests)
        reads = time_reads(overview_reads(config, ledger, study), args.repeat)
    finally:
        stop(proc)
        engine.dispose()
    return "\n".join(
        [
            f"Status page at {args.instances:,} instances, {target.label} "
            f"({facts['studies']:,} studies of {STUDY_SIZES[0]}-{STUDY_SIZES[1]}; "
            f"built in {facts['seconds']:.0f} s)",
            "",
            f"Ledger: {holds}; "
            f"jobs running on node {OTHER_NODE}: {facts['running on another node']}, "
            f"failed exports: {facts['failed exports']}, "
            f"files on disk: {facts['files created']:,}.",
            "",
            f"| request ({args.requests} after {args.warmup} warm-ups) "
            "| median ms | p95 ms | max ms | status | bytes |",
            "|---|---:|---:|---:|---|---:|",
            *requests,
            "",
            f"| read, alone, in-process (median of {args.repeat}) | median ms | max ms |",
            "|---|---:|---:|",
            *reads,
        ]
    )


def report(args: argparse.Namespace, folder: Path) -> str:
    """Measure on the backend asked for (PostgreSQL on a throwaway cluster)."""
    with contextlib.ExitStack() as stack:
        if args.backend == "sqlite":
            target: Target = SqliteLedger(folder)
        else:
            cluster = stack.enter_context(throwaway_cluster(free_port()))
            target = PostgresLedger(cluster.database())
        return measure(target, folder, args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each read alone")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--folder", type=Path, help="scratch folder (must not exist; kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.backend == "postgresql" and not pgcluster.available():
        raise SystemExit(f"Error: {pgcluster.MISSING}; --backend sqlite runs without it")
    print(in_scratch(args.folder, "page-scale-", lambda folder: report(args, folder)))


if __name__ == "__main__":
    main()
