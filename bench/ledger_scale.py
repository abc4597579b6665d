"""Ledger at scale: ingest rate, ``status`` and admin queries at a million instances.

    python bench/ledger_scale.py [--instances 1000000] [--batch 500] [--folder DIR]

A site keeps months of studies in the ledger, and ``dicom-adapter status``
plus the ``docs/ledger.md`` cookbook must stay interactive at that size while
intake keeps up with the SCP.  This builds a fresh ledger at the Alembic
head with the project's own code, records the instances the way intake does
(``Ledger.transaction()``: the path and duplicate look-ups, then
``add_many`` with one ``received`` event per row, one transaction per batch),
moves most studies on through claimed, submitted, reclaimable and reclaimed
with the ``Processing`` API, then times ``status`` as a real subprocess and a
few queries through plain ``sqlite3``.  Nothing is asserted: it prints a
markdown table (median of ``--repeat`` runs) and the ledger's size.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import free_port  # noqa: E402  (run also puts this tree on the children's PYTHONPATH)
from scratch import in_scratch  # noqa: E402

from ledger.db import make_engine  # noqa: E402  (the project root is on the path first)
from ledger.migrate import upgrade  # noqa: E402
from ledger.processing import Processing  # noqa: E402
from ledger.records import NewInstance  # noqa: E402
from ledger.store import Ledger, chunked  # noqa: E402
from ledger.tasks import Tasks  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.8.498"
CALLED_AES = ("DICOMADAPTER", "AI_ROUTER")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CONCURRENT_STUDIES = 4  # modalities sending at once: a batch mixes their studies
HISTORY_DAYS = 30
# Oldest studies first: (share of studies, where they end up).
FATES = (
    (0.55, "reclaimed"),
    (0.15, "reclaimable"),
    (0.15, "submitted"),
    (0.05, "claimed"),
    (0.005, "failed"),
)
COOKBOOK = {
    "counts by state": "SELECT state, count(*) FROM instances GROUP BY state",
    "ten most recent studies": (
        "SELECT called_ae, study_instance_uid, instances, received, last_received_at "
        "FROM studies ORDER BY last_received_at DESC LIMIT 10"
    ),
    "groups still waiting": (
        "SELECT called_ae, group_key, count(*), min(received_at), max(received_at) "
        "FROM instances WHERE state = 'received' GROUP BY called_ae, group_key ORDER BY 4"
    ),
    "stuck studies": (
        "SELECT called_ae, study_instance_uid, received, claimed, last_received_at FROM studies "
        "WHERE (received > 0 AND last_received_at < "
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')) "
        "OR study_instance_uid IN (SELECT i.study_instance_uid FROM instances i "
        "JOIN jobs j ON j.id = i.job_id WHERE j.state = 'failed')"
    ),
    "history of one instance": (
        "SELECT e.at, e.from_state, e.to_state, e.reason "
        "FROM events e JOIN instances i ON i.id = e.instance_id "
        "WHERE i.sop_instance_uid = :sop ORDER BY e.id"
    ),
}


@dataclass(frozen=True)
class Modality:
    """One sending device: its AE title, what it makes and how big."""

    calling_ae: str
    peer: str
    sop_class_uid: str
    series: tuple[int, int]  # fewest and most series per study
    size: int  # typical file size, bytes


MODALITIES = (
    Modality("CT01", "10.1.0.11", "1.2.840.10008.5.1.4.1.1.2", (2, 6), 525_000),
    Modality("CT02", "10.1.0.12", "1.2.840.10008.5.1.4.1.1.2", (2, 6), 525_000),
    Modality("MR01", "10.1.0.21", "1.2.840.10008.5.1.4.1.1.4", (4, 12), 280_000),
    Modality("PT01", "10.1.0.31", "1.2.840.10008.5.1.4.1.1.128", (1, 3), 160_000),
    Modality("PACS", "10.1.0.2", "1.2.840.10008.5.1.4.1.1.2", (1, 8), 525_000),
)


@dataclass(frozen=True)
class Study:
    """One study to generate: who sent it, to which AE, when."""

    number: int
    modality: Modality
    called_ae: str
    patient_id: str
    series_count: int
    arrived_at: datetime

    @property
    def uid(self) -> str:
        return f"{UID_ROOT}.1.{self.arrived_at:%Y%m%d}.{self.number}"


def plan_studies(count: int, now: datetime, seed: int = 6) -> list[Study]:
    """``count`` studies spread over the last HISTORY_DAYS, oldest first."""
    rng = random.Random(seed)
    step = timedelta(days=HISTORY_DAYS) / max(count, 1)
    start = now - timedelta(days=HISTORY_DAYS)
    studies = []
    for number in range(count):
        modality = rng.choice(MODALITIES)
        studies.append(
            Study(
                number=number,
                modality=modality,
                called_ae=CALLED_AES[0] if rng.random() < 0.8 else CALLED_AES[1],
                patient_id=f"PAT{rng.randrange(count * 3 // 4 + 1):07d}",
                series_count=rng.randint(*modality.series),
                arrived_at=start + step * number,
            )
        )
    return studies


def study_instances(study: Study, count: int, spool: Path) -> Iterator[NewInstance]:
    """The ``count`` instances of one study, as intake would read them from the spool."""
    modality = study.modality
    for index in range(count):
        series = f"{UID_ROOT}.2.{study.number}.{index % study.series_count + 1}"
        sop = f"{series.replace('.2.', '.3.', 1)}.{index + 1}"
        path = spool / study.called_ae / study.uid / series / f"{sop}.dcm"
        yield NewInstance(
            path=str(path),
            called_ae=study.called_ae,
            size=modality.size + (index * 7919) % 4096,
            sha256=hashlib.sha256(sop.encode()).hexdigest(),
            sop_instance_uid=sop,
            study_instance_uid=study.uid,
            series_instance_uid=series,
            sop_class_uid=modality.sop_class_uid,
            transfer_syntax_uid=EXPLICIT_LE,
            patient_id=study.patient_id,
            calling_ae=modality.calling_ae,
            peer_address=f"{modality.peer}:{40000 + study.number % 20000}",
            group_key=study.uid,
        )


def arrivals(
    studies: list[Study], total: int, per_study: int, spool: Path
) -> Iterator[NewInstance]:
    """Instances in arrival order: CONCURRENT_STUDIES studies interleaved at a time."""
    for first in range(0, len(studies), CONCURRENT_STUDIES):
        group = studies[first : first + CONCURRENT_STUDIES]
        streams = []
        for study in group:
            count = min(per_study, total - study.number * per_study)
            streams.append(study_instances(study, max(count, 0), spool))
        while streams:
            for stream in list(streams):
                item = next(stream, None)
                if item is None:
                    streams.remove(stream)
                else:
                    yield item


def record_batch(ledger: Ledger, batch: list[NewInstance], now: datetime) -> None:
    """What ``Intake.process`` does with a batch of new files, in one transaction."""
    with ledger.transaction(now) as tx:
        known = tx.recorded([new.path for new in batch])
        for called_ae in {new.called_ae for new in batch}:
            tx.live_copies(
                called_ae, [n.sop_instance_uid for n in batch if n.called_ae == called_ae]
            )
        tx.add_many([(new, "received") for new in batch if new.path not in known])


def ingest(ledger: Ledger, items: Iterator[NewInstance], batch_size: int, clock: Clock) -> float:
    """Record every item in batches; the seconds spent in the ledger."""
    spent = 0.0
    for batch in chunked(items, batch_size):
        started = time.perf_counter()
        record_batch(ledger, batch, clock.at(batch[0]))
        spent += time.perf_counter() - started
    return spent


@dataclass(frozen=True)
class Clock:
    """The simulated time each instance arrived: its study's, plus a second per instance."""

    arrived: dict[str, datetime]

    def at(self, new: NewInstance) -> datetime:
        index = int(new.sop_instance_uid.rsplit(".", 1)[1])
        return self.arrived[new.study_instance_uid] + timedelta(seconds=index)


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def fates(studies: list[Study]) -> list[tuple[Study, str]]:
    """Each study with the state it ends in; the newest ones stay ``received``."""
    result = []
    start = 0
    for share, fate in FATES:
        end = start + round(share * len(studies))
        result += [(study, fate) for study in studies[start:end]]
        start = end
    return result


def advance(ledger: Ledger, studies: list[Study]) -> int:
    """Move studies on as the grouper, dispatcher and reclaimer would; moves made."""
    processing = Processing(ledger)
    moves = 0
    finished: dict[str, datetime] = {}  # called AE -> latest finish to release
    reclaim: list[int] = []
    for study, fate in fates(studies):
        done_at = study.arrived_at + timedelta(minutes=30)
        job = processing.claim_group(study.called_ae, study.uid, "folder", "bench", done_at)
        if job is None:
            continue
        moves += job.item_count
        if fate == "claimed":
            continue
        Tasks(ledger).start(job.id, done_at)
        if fate == "failed":
            processing.settle(job.id, "bench: receiver refused", None, done_at)
            continue
        processing.settle(job.id, None, None, done_at)
        moves += job.item_count
        if fate in ("reclaimable", "reclaimed"):
            finished[study.called_ae] = done_at
        if fate == "reclaimed":
            reclaim.append(job.id)
    for called_ae, last in finished.items():
        moves += processing.release_submitted(called_ae, 0, last)
    for job_id in reclaim:
        ids = [instance.id for instance in processing.job_instances(job_id)]
        processing.mark_reclaimed(ids, "file deleted by the reclaimer")
        moves += len(ids)
    return moves


def write_config(folder: Path, port: int) -> Path:
    """A config.ini for ``status``: the bench ledger, a free port, every AE processed."""
    aes = "".join(
        f"[ae:{name}]\nprocessor = folder\noutput = out/{name}\n\n" for name in CALLED_AES
    )
    path = folder / "config.ini"
    path.write_text(
        f"[dicom]\nhost = 127.0.0.1\nport = {port}\n\n"
        "[storage]\nspool = spool\njobs = jobs\nmin_free = 0\n\n"
        "[ledger]\nurl = sqlite:///ledger.db\n\n"
        "[metrics]\nport = 0\n\n" + aes
    )
    return path


def median_seconds(work: Callable[[], object], repeat: int) -> float:
    return statistics.median(_timed(work) for _ in range(repeat))


def run_status(config: Path, *extra: str) -> None:
    """``dicom-adapter status``; exit 1 (unhealthy: nothing listens) is expected."""
    command = [
        str(Path(sys.executable).parent / "dicom-adapter"),
        "status",
        "--config",
        str(config),
    ]
    done = subprocess.run([*command, *extra], capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1) or not done.stdout:
        raise SystemExit(f"status failed ({done.returncode}): {done.stderr.strip()}")


def run_query(database: Path, sql: str, parameters: dict[str, str]) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute(sql, parameters).fetchall()
    connection.close()


def build(folder: Path, total: int, per_study: int, batch: int) -> tuple[float, float, int]:
    """A fresh ledger of ``total`` instances: (ingest seconds, advance seconds, moves)."""
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    upgrade(engine)
    ledger = Ledger(engine)
    now = datetime.now(UTC)
    studies = plan_studies(-(-total // per_study), now)
    clock = Clock({study.uid: study.arrived_at for study in studies})
    seconds = ingest(ledger, arrivals(studies, total, per_study, folder / "spool"), batch, clock)
    started = time.perf_counter()
    moves = advance(ledger, studies)
    engine.dispose()
    return seconds, time.perf_counter() - started, moves


def measure(folder: Path, repeat: int) -> list[tuple[str, float]]:
    """Median seconds of status, status --json, the studies view and cookbook queries."""
    config = write_config(folder, free_port())
    database = folder / "ledger.db"
    sop = _some_sop(database)
    figures = [
        ("`dicom-adapter status`", median_seconds(lambda: run_status(config), repeat)),
        (
            "`dicom-adapter status --json`",
            median_seconds(lambda: run_status(config, "--json"), repeat),
        ),
        (
            "`SELECT * FROM studies`",
            median_seconds(lambda: run_query(database, "SELECT * FROM studies", {}), repeat),
        ),
    ]
    for name, sql in COOKBOOK.items():
        work = lambda sql=sql: run_query(database, sql, {"sop": sop})  # noqa: E731
        figures.append((f"cookbook: {name}", median_seconds(work, repeat)))
    return figures


def _some_sop(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        row = (
            connection.execute(
                "SELECT sop_instance_uid FROM instances WHERE state = 'reclaimed' "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
            or connection.execute("SELECT sop_instance_uid FROM instances").fetchone()
        )
    connection.close()
    return str(row[0])


def report(args: argparse.Namespace, folder: Path) -> str:
    """Build, measure and format the markdown table."""
    ingest_seconds, advance_seconds, moves = build(
        folder, args.instances, args.per_study, args.batch
    )
    figures = measure(folder, args.repeat)
    size = sum(p.stat().st_size for p in folder.glob("ledger.db*"))
    lines = [
        f"Ledger at {args.instances:,} instances ({args.per_study} per study, "
        f"intake batches of {args.batch}; median of {args.repeat})",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| ingest (received + event, batches of {args.batch}) | "
        f"{args.instances / ingest_seconds:,.0f} instances/s ({ingest_seconds:.1f} s) |",
        f"| later moves (claim, submit, release, reclaim) | "
        f"{moves / advance_seconds:,.0f} moves/s ({advance_seconds:.1f} s) |",
    ]
    lines += [f"| {name} | {seconds:.3f} s |" for name, seconds in figures]
    lines.append(f"| ledger file size | {size / 2**20:,.0f} MiB |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--per-study", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500, help="instances per transaction")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="scratch folder (must not exist; kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(in_scratch(args.folder, "ledger-scale-", lambda folder: report(args, folder)))


if __name__ == "__main__":
    main()
