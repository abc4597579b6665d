"""Ledger at scale: ingest rate, ``status`` and admin queries at a million instances.

    python bench/ledger_scale.py [--instances 1000000] [--batch 500] [--folder DIR]
        [--backend sqlite|postgresql|both]

A site keeps months of studies in the ledger, and ``dicom-adapter status``
plus the ``docs/ledger.md`` cookbook must stay interactive at that size while
intake keeps up with the SCP, on SQLite (one box) and on PostgreSQL (several
nodes sharing one ledger).  For each backend this builds a fresh ledger at
the Alembic head with the project's own code, records the instances the way
intake does (``Ledger.transaction()``: the path and duplicate look-ups, then
``add_many`` with one ``received`` event per row, one transaction per batch),
moves most studies on through claimed, submitted, reclaimable and reclaimed
with the ``Processing`` API, then times ``status`` as a real subprocess and a
few queries on a fresh connection each: plain ``sqlite3`` for SQLite,
psycopg for PostgreSQL (a throwaway cluster, ``tests/pgcluster.py``, at its
default settings).  Nothing is asserted: it prints one markdown table
(median of ``--repeat`` runs), a column per backend.
"""

from __future__ import annotations

import argparse
import contextlib
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
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the project, then run.py and scratch.py

import psycopg  # noqa: E402
from run import child_env, free_port  # noqa: E402
from scratch import in_scratch  # noqa: E402
from sqlalchemy import make_url  # noqa: E402

from ledger.db import make_engine  # noqa: E402  (the project root is on the path first)
from ledger.migrate import upgrade  # noqa: E402
from ledger.processing import Processing  # noqa: E402
from ledger.records import NewInstance  # noqa: E402
from ledger.store import Ledger, chunked  # noqa: E402
from ledger.tasks import Tasks  # noqa: E402
from tests import pgcluster  # noqa: E402
from tests.pgcluster import throwaway_cluster  # noqa: E402

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
# The same questions in PostgreSQL's words where SQLite's differ (the time an hour ago).
POSTGRESQL_COOKBOOK = {
    **COOKBOOK,
    "stuck studies": (
        "SELECT called_ae, study_instance_uid, received, claimed, last_received_at FROM studies "
        "WHERE (received > 0 AND last_received_at < "
        "to_char(now() AT TIME ZONE 'UTC' - interval '1 hour', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')) '
        "OR study_instance_uid IN (SELECT i.study_instance_uid FROM instances i "
        "JOIN jobs j ON j.id = i.job_id WHERE j.state = 'failed')"
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


def advance(ledger: Ledger, fated: list[tuple[Study, str]]) -> int:
    """Move studies on as the grouper, dispatcher and reclaimer would; moves made.

    ``fated`` is oldest first, as :func:`fates` gives it (``bench/page_scale.py``
    passes its own): a reclaimed study's release must not reach a newer submitted one.
    """
    processing = Processing(ledger)
    moves = 0
    finished: dict[str, datetime] = {}  # called AE -> latest finish to release
    reclaim: list[int] = []
    for study, fate in fated:
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


def write_config(folder: Path, port: int, backend: str, url: str) -> Path:
    """A config for ``status``: the bench ledger, a free port, every AE processed."""
    aes = "".join(
        f"[ae:{name}]\nprocessor = folder\noutput = out/{name}\n\n" for name in CALLED_AES
    )
    path = folder / f"config-{backend}.ini"
    path.write_text(
        f"[dicom]\nhost = 127.0.0.1\nport = {port}\n\n"
        "[storage]\nspool = spool\njobs = jobs\nmin_free = 0\n\n"
        f"[ledger]\nurl = {url}\n\n"
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
    done = subprocess.run(
        [*command, *extra], capture_output=True, text=True, check=False, env=child_env()
    )
    if done.returncode not in (0, 1) or not done.stdout:
        raise SystemExit(f"status failed ({done.returncode}): {done.stderr.strip()}")


class SqliteLedger:
    """The bench ledger as one SQLite file, queried with plain ``sqlite3`` as an admin would."""

    name = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.file = folder.resolve() / "ledger.db"
        self.url = f"sqlite:///{self.file}"
        self.label = f"SQLite {sqlite3.sqlite_version}"

    def query(self, sql: str, parameters: dict[str, str]) -> list[tuple[object, ...]]:
        """One query on a fresh connection (an admin's one-off ``sqlite3`` call)."""
        with contextlib.closing(sqlite3.connect(self.file)) as connection:
            return connection.execute(sql, parameters).fetchall()

    def size(self) -> tuple[int, str]:
        """Bytes on disk: the file with its WAL and shared-memory index."""
        total = sum(p.stat().st_size for p in self.file.parent.glob("ledger.db*"))
        return total, "file + WAL"

    def settle(self) -> None:
        """Nothing: SQLite has no background maintenance to wait for."""


class PostgresLedger:
    """The bench ledger as a database on a throwaway cluster, queried with psycopg."""

    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        version = self.query("SHOW server_version", {})[0][0]
        self.label = f"PostgreSQL {str(version).split()[0]}"

    def query(self, sql: str, parameters: dict[str, str]) -> list[tuple[object, ...]]:
        """One query on a fresh connection (an admin's one-off ``psql -c``).

        The cookbook is written for ``sqlite3``'s ``:name`` parameters;
        psycopg's are ``%(name)s``.
        """
        for name in parameters:
            sql = sql.replace(f":{name}", f"%({name})s")
        with psycopg.connect(self.conninfo) as connection:
            return connection.execute(sql, parameters).fetchall()  # type: ignore[arg-type]

    def size(self) -> tuple[int, str]:
        """Bytes of the database's tables and indexes (``pg_database_size``; no WAL)."""
        return int(self.query("SELECT pg_database_size(current_database())", {})[0][0]), (
            "pg_database_size"
        )

    def settle(self) -> None:
        """``VACUUM ANALYZE``: what autovacuum does on its own within minutes of a bulk load.

        Done once before the timed queries (its own time is a row of the
        table), so they neither race autovacuum nor plan with statistics from
        before most rows moved on.
        """
        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE)")


Target = SqliteLedger | PostgresLedger


def build(
    url: str, folder: Path, total: int, per_study: int, batch: int
) -> tuple[float, float, int]:
    """A fresh ledger of ``total`` instances: (ingest seconds, advance seconds, moves)."""
    engine = make_engine(url)
    upgrade(engine)
    ledger = Ledger(engine)
    now = datetime.now(UTC)
    studies = plan_studies(-(-total // per_study), now)
    clock = Clock({study.uid: study.arrived_at for study in studies})
    seconds = ingest(ledger, arrivals(studies, total, per_study, folder / "spool"), batch, clock)
    started = time.perf_counter()
    moves = advance(ledger, fates(studies))
    engine.dispose()
    return seconds, time.perf_counter() - started, moves


def measure(target: Target, folder: Path, repeat: int) -> list[tuple[str, float]]:
    """Median seconds of a bare query, status, status --json, the studies view and the cookbook."""
    config = write_config(folder, free_port(), target.name, target.url)
    sop = _some_sop(target)
    cookbook = POSTGRESQL_COOKBOOK if target.name == "postgresql" else COOKBOOK

    def query(sql: str) -> Callable[[], object]:
        return lambda: target.query(sql, {"sop": sop} if ":sop" in sql else {})

    figures = [
        ("connect and `SELECT 1` (a floor for the queries below)", query("SELECT 1")),
        ("`dicom-adapter status`", lambda: run_status(config)),
        ("`dicom-adapter status --json`", lambda: run_status(config, "--json")),
        ("`SELECT * FROM studies`", query("SELECT * FROM studies")),
    ]
    figures += [(f"cookbook: {name}", query(sql)) for name, sql in cookbook.items()]
    return [(name, median_seconds(work, repeat)) for name, work in figures]


def _some_sop(target: Target) -> str:
    rows = target.query(
        "SELECT sop_instance_uid FROM instances WHERE state = 'reclaimed' ORDER BY id DESC LIMIT 1",
        {},
    ) or target.query("SELECT sop_instance_uid FROM instances LIMIT 1", {})
    return str(rows[0][0])


def column(target: Target, folder: Path, args: argparse.Namespace) -> dict[str, str]:
    """Build and measure one backend's ledger: its cells, by row name."""
    ingest_seconds, advance_seconds, moves = build(
        target.url, folder, args.instances, args.per_study, args.batch
    )
    settle_seconds = _timed(target.settle)
    cells = {
        f"ingest (received + event, batches of {args.batch})": (
            f"{args.instances / ingest_seconds:,.0f} instances/s ({ingest_seconds:.1f} s)"
        ),
        "later moves (claim, submit, release, reclaim)": (
            f"{moves / advance_seconds:,.0f} moves/s ({advance_seconds:.1f} s)"
        ),
        "`VACUUM ANALYZE` after the build (untimed below)": (
            f"{settle_seconds:.1f} s" if target.name == "postgresql" else "-"
        ),
    }
    cells |= {name: f"{seconds:.3f} s" for name, seconds in measure(target, folder, args.repeat)}
    instances = target.query("SELECT count(*) FROM instances", {})[0][0]
    events = target.query("SELECT count(*) FROM events", {})[0][0]
    cells["rows: instances, events"] = f"{instances:,}, {events:,}"
    size, how = target.size()
    cells["ledger size on disk"] = f"{size / 2**20:,.0f} MiB ({how})"
    return cells


def report(args: argparse.Namespace, folder: Path) -> str:
    """Build and measure each backend in turn, then format one markdown table."""
    columns: list[tuple[str, dict[str, str]]] = []
    for backend in args.backends:
        with contextlib.ExitStack() as stack:
            if backend == "sqlite":
                target: Target = SqliteLedger(folder)
            else:
                cluster = stack.enter_context(throwaway_cluster(free_port()))
                target = PostgresLedger(cluster.database())
            columns.append((target.label, column(target, folder, args)))
    lines = [
        f"Ledger at {args.instances:,} instances ({args.per_study} per study, "
        f"intake batches of {args.batch}; median of {args.repeat})",
        "",
        "| measure | " + " | ".join(label for label, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in columns[0][1]:
        lines.append(f"| {name} | " + " | ".join(cells[name] for _, cells in columns) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--per-study", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500, help="instances per transaction")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="which ledger (both: side by side, SQLite first; default)",
    )
    parser.add_argument("--folder", type=Path, help="scratch folder (must not exist; kept)")
    args = parser.parse_args(argv)
    args.backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "postgresql" in args.backends and not pgcluster.available():
        raise SystemExit(f"Error: {pgcluster.MISSING}; --backend sqlite runs without it")
    print(in_scratch(args.folder, "ledger-scale-", lambda folder: report(args, folder)))


if __name__ == "__main__":
    main()
