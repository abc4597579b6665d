"""Protocol fuzzing: thousands of malformed PDU streams at a live adapter, which must not care.

Whatever a peer sends, the adapter keeps
answering C-ECHO, keeps storing valid instances correctly, never leaves a
file in the spool that it did not acknowledge, and does not leak threads or
file descriptors in its SCP process.  The streams are mutations of what a
real pynetdicom SCU sends (recorded once through a proxy, see
``tests/peers/raw.py``), made by ``tests/peers/fuzz.py`` from a seed.

Bounded in time, not in cases: ``FUZZ_SECONDS`` (default 20) of cases in
the normal suite, ``make fuzz FUZZ_SECONDS=600`` for longer; ``FUZZ_SEED``
picks the seed (printed, with a replay command for any failing case).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spool.layout import QUARANTINE, SUPERSEDED, TMP
from tests.conftest import RunningAdapter, tmp_files, wait_for, write_config
from tests.dicom import dataset_digest, make_instance
from tests.peers.fuzz import Case, base_streams, make_case
from tests.peers.raw import AWAIT_ANSWER, Recording, Reply, exchange, record
from tests.peers.send import echo, send_files

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "1"))
WORKERS = int(
    os.environ.get("FUZZ_WORKERS", "8")
)  # connections at once; most cases end in milliseconds, stalls take a timeout
CHECK_EVERY = 300  # cases between health checks
TIMEOUT = 1.0  # the adapter's acse/dimse/network timeouts
CASE_DEADLINE = 10.0  # a connection the adapter keeps open longer than this is a finding
MAX_PDU = 4096  # the smallest the config allows: the dataset goes out in several fragments
CALLED_AE = "DICOMADAPTER"
FUZZ_UIDS = {"study": "2.25.4242.1", "series": "2.25.4242.2", "sop": "2.25.4242.3"}


@pytest.fixture
def fuzzed(start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int):
    """An adapter with 1 s timeouts, a 4 KiB maximum PDU and room for every fuzz worker."""
    config = write_config(tmp_path, port)
    text = config.read_text()
    for key, value in (
        ("acse_timeout = 5", f"acse_timeout = {TIMEOUT}"),
        ("dimse_timeout = 10", f"dimse_timeout = {TIMEOUT}"),
        (
            "network_timeout = 10",
            f"network_timeout = {TIMEOUT}\nmax_associations = {4 * WORKERS}\n"
            f"maximum_pdu_size = {MAX_PDU}",
        ),
        ("level = DEBUG", "level = WARNING"),  # thousands of refusals would flood caplog
    ):
        text = text.replace(key, value)
    config.write_text(text)
    return start_adapter(config)


@dataclass
class Findings:
    """What the cases saw; shared by the worker threads (appends and adds only)."""

    acknowledged: Counter[str] = field(default_factory=Counter)  # 0x0000 answers per UID
    held: list[str] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)  # how long cases took, bucketed
    cases: int = 0


@pytest.mark.timeout(FUZZ_SECONDS + 240)  # setup, the last batch, the leak checks
def test_fuzzed_pdu_streams_never_hurt_the_adapter(fuzzed: RunningAdapter, tmp_path: Path) -> None:
    recording = _record(fuzzed, tmp_path)
    streams = base_streams(recording.pdus)
    findings = Findings(acknowledged=Counter([FUZZ_UIDS["sop"]]))
    _check_health(fuzzed, findings, tmp_path, "before fuzzing")
    baseline = _settled_usage(_scp_pid(fuzzed), None)
    replay = (
        f"python -m tests.peers.fuzz --recording {tmp_path / 'recording.hex'} "
        f"--max-pdu {MAX_PDU} --seed {FUZZ_SEED} --port PORT --case N"
    )
    print(f"fuzz seed {FUZZ_SEED}, {FUZZ_SECONDS:g}s; replay one case: {replay}")

    start = time.monotonic()
    counter = itertools.count()
    while time.monotonic() - start < FUZZ_SECONDS:
        first = findings.cases
        _run_batch(fuzzed.port, streams, counter, findings, start + FUZZ_SECONDS)
        _check_health(fuzzed, findings, tmp_path, f"after cases {first}-{findings.cases - 1}")
    elapsed = time.monotonic() - start

    print(
        f"{findings.cases} cases in {elapsed:.1f}s ({findings.cases / elapsed:.0f}/s); "
        f"answers: {dict(findings.answers.most_common())}; "
        f"durations: {dict(sorted(findings.seconds.items()))}; "
        f"fuzzed C-STOREs acknowledged: {findings.acknowledged[FUZZ_UIDS['sop']] - 1}"
    )
    assert not findings.held, f"connections kept open over {CASE_DEADLINE}s: {findings.held}"
    _check_no_leaks(fuzzed, baseline)


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxL", kind, len(body)) + body


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


# A hand-made association (PS3.8 9.3): RQ with application context, one presentation context
# and user information, P-DATA PDVs, a release: enough framing for every mutation to find.
_RQ = _pdu(
    0x01,
    b"\x00\x01\x00\x00DICOMADAPTER    FUZZSCU         "
    + bytes(32)
    + _item(0x10, b"1.2.840.10008.3.1.1.1")
    + _item(
        0x20,
        b"\x01\x00\x00\x00" + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2"),
    )
    + _item(0x50, _item(0x51, struct.pack(">L", 16384))),
)
_P_DATA = _pdu(0x04, struct.pack(">LBB", 6, 1, 0x03) + bytes(4))
_DATA = _pdu(0x04, struct.pack(">LBB", 6, 1, 0x02) + bytes(4))  # a data set's last fragment
_SYNTHETIC = [_RQ, _P_DATA, _P_DATA, _DATA, _DATA, _pdu(0x05, bytes(4))]


@settings(max_examples=500, deadline=None)
@given(seed=st.integers(0, 2**32), index=st.integers(0, 10**6))
def test_every_case_can_be_built(seed: int, index: int) -> None:
    """The mutators never raise, whatever they are handed (a crash would end the fuzz run)."""
    case = make_case(base_streams(_SYNTHETIC), seed, index, MAX_PDU)
    assert case == make_case(base_streams(_SYNTHETIC), seed, index, MAX_PDU)
    assert case.chunks and case.recipe


def _run_batch(
    port: int, streams: list, counter: itertools.count, findings: Findings, until: float
) -> None:
    """Up to CHECK_EVERY cases over WORKERS connections at a time, none started after ``until``."""
    lock = threading.Lock()
    batch_end = findings.cases + CHECK_EVERY

    def worker() -> None:
        while time.monotonic() < until:
            with lock:
                if findings.cases >= batch_end:
                    return
                index = next(counter)
                findings.cases += 1
            case = make_case(streams, FUZZ_SEED, index, MAX_PDU)
            _tally(case, exchange(port, case.chunks, deadline=CASE_DEADLINE), findings)

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="fuzz") as pool:
        for future in [pool.submit(worker) for _ in range(WORKERS)]:
            future.result()


_ANSWER_NAMES = {2: "associate-ac", 3: "associate-rj", 4: "p-data", 6: "release-rp", 7: "abort"}


def _tally(case: Case, reply: Reply, findings: Findings) -> None:
    findings.acknowledged.update(reply.stored)  # Counter.update adds
    if reply.held:
        findings.held.append(case.describe())
    name = "refused" if reply.refused else _ANSWER_NAMES.get(reply.first_pdu_type, "nothing")
    findings.answers[name] += 1
    findings.seconds[next(f"<{b:g}s" for b in (0.1, 0.5, 1, 2, 5, 1e9) if reply.seconds < b)] += 1


def _record(running: RunningAdapter, tmp_path: Path) -> Recording:
    """One real association through the recording proxy; the PDUs are saved for replays."""
    instance = make_instance(
        tmp_path / "fuzz.dcm",
        rows=64,
        columns=64,  # 8 KiB of pixels: three dataset fragments at a 4 KiB PDU
        study_uid=FUZZ_UIDS["study"],
        series_uid=FUZZ_UIDS["series"],
        sop_instance_uid=FUZZ_UIDS["sop"],
    )
    recording = record(running.port, CALLED_AE, instance)
    assert recording.store_status == 0
    types = [pdu[0] for pdu in recording.pdus]
    assert types[:3] == [1, 4, 4] and types[-1] == 5 and len(types) >= 6, types
    (tmp_path / "recording.hex").write_text("".join(pdu.hex() + "\n" for pdu in recording.pdus))
    return recording


def _check_health(running: RunningAdapter, findings: Findings, tmp_path: Path, when: str) -> None:
    """The SCP lives, answers C-ECHO, stores and records a new instance; no stray files."""
    process = running.adapter.server._process
    assert process is not None and process.poll() is None, f"SCP process died {when}"
    assert echo("127.0.0.1", running.port, called_ae=CALLED_AE) == 0, f"C-ECHO failed {when}"
    path = make_instance(tmp_path / "valid" / f"{findings.cases}.dcm")
    sop = _sop_of(path)
    [(_, status)] = send_files("127.0.0.1", running.port, [path], called_ae=CALLED_AE)
    assert status == 0, f"a valid C-STORE got {status} {when}"
    findings.acknowledged[sop] += 1
    wait_for(lambda: any(r.sop_instance_uid == sop for r in running.rows()), timeout=20)
    [row] = [r for r in running.rows() if r.sop_instance_uid == sop]
    assert dataset_digest(Path(row.path)) == dataset_digest(path), f"stored altered, {when}"
    files = Counter(_uid_of_name(p) for p in _spool_files(running.spool))
    unacknowledged = files - findings.acknowledged
    # A C-STORE whose data set carries another SOP Instance UID than its request
    # (a mutated data set) is acknowledged under the request's UID and kept, with a
    # warning, under the data set's (spool/identity.py): each such file stands for one
    # acknowledgement of the fuzzed instance that no file of that name took up.
    spare = findings.acknowledged[FUZZ_UIDS["sop"]] - files[FUZZ_UIDS["sop"]]
    renamed = sum(unacknowledged.values())
    assert renamed <= max(0, spare), (
        f"spool files beyond the 0x0000 answers given, {when}: {unacknowledged} "
        f"({spare} acknowledgements of {FUZZ_UIDS['sop']} unaccounted for)"
    )
    for uid in unacknowledged:
        assert _warned_of_a_differing_uid(running, uid), f"{uid} kept without a warning, {when}"


def _warned_of_a_differing_uid(running: RunningAdapter, uid: str) -> bool:
    """The ledger holds the instance with intake's warning that its UID is not the request's."""
    query = (
        "SELECT count(*) FROM events JOIN instances ON events.instance_id = instances.id "
        "WHERE instances.sop_instance_uid = ? AND events.reason LIKE ?"
    )
    with sqlite3.connect(str(running.ledger.engine.url.database)) as db:
        (count,) = db.execute(query, (uid, "%differs from the request's%")).fetchone()
    return count > 0


def _spool_files(spool: Path) -> list[Path]:
    """Every instance file outside ``.tmp``, quarantined ones included (not their reasons)."""
    return [
        path
        for path in spool.rglob("*")
        if path.is_file() and path.relative_to(spool).parts[0] != TMP and path.suffix != ".reason"
    ]


def _uid_of_name(path: Path) -> str:
    """The UID in ``<SOPInstanceUID>[~N].dcm`` (quarantine adds ``<time>-<hash>-`` in front,
    a copy set aside as superseded ``<row id>-``): the SCP names files after the UID it
    acknowledged."""
    name = path.name
    if path.parent.name == QUARANTINE:
        name = name.split("-", 2)[-1]
    elif path.parent.parent.name == SUPERSEDED:
        name = name.split("-", 1)[-1]
    return name.removesuffix(".dcm").split("~")[0]


def _sop_of(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _scp_pid(running: RunningAdapter) -> int:
    process = running.adapter.server._process
    assert process is not None
    return process.pid


def _usage(pid: int) -> tuple[int, int]:
    """Threads and open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _settled_usage(pid: int, limit: tuple[int, int] | None, timeout: float = 20) -> tuple[int, int]:
    """Usage once no connection is left: equal twice in a row (and within ``limit``)."""
    deadline = time.monotonic() + timeout
    previous = _usage(pid)
    while True:
        time.sleep(0.25)
        now = _usage(pid)
        within = limit is None or (now[0] <= limit[0] and now[1] <= limit[1])
        if (now == previous and within) or time.monotonic() > deadline:
            return now
        previous = now


def _check_no_leaks(running: RunningAdapter, baseline: tuple[int, int]) -> None:
    """Threads and descriptors back near where they were; nothing left in spool/.tmp."""
    pid = _scp_pid(running)
    slack = (baseline[0] + 2, baseline[1] + 2)
    threads, fds = _settled_usage(pid, slack, timeout=3 * CASE_DEADLINE)
    print(f"SCP threads {baseline[0]} -> {threads}, descriptors {baseline[1]} -> {fds}")
    assert threads <= slack[0], f"SCP threads {baseline[0]} before fuzzing, {threads} after"
    assert fds <= slack[1], f"SCP file descriptors {baseline[1]} before fuzzing, {fds} after"
    leftovers = tmp_files(running.spool)
    print(f"files left in spool/{TMP}: {len(leftovers)}")
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_associations_leave_no_descriptors_behind(adapter: RunningAdapter) -> None:
    """Each association's eventfd (dimse/pynetdicom_boundary/threads.py) used to stay open:
    found by the fuzz test, fixed in 2cb9b1f; descriptors are what a long-running SCP runs
    out of."""
    pid = _scp_pid(adapter)
    count = lambda: len(os.listdir(f"/proc/{pid}/fd"))  # noqa: E731
    before = count()
    for _ in range(20):
        assert echo("127.0.0.1", adapter.port, called_ae=CALLED_AE) == 0
    deadline = time.monotonic() + 5
    while count() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count() <= before + 2, f"{before} descriptors before 20 C-ECHOs, {count()} after"


def test_a_c_store_cut_short_leaves_no_temporary_file(
    fuzzed: RunningAdapter, tmp_path: Path
) -> None:
    rq, _echo, store, first_fragment, *_ = _record(fuzzed, tmp_path).pdus
    reply = exchange(
        fuzzed.port, [(rq, AWAIT_ANSWER), (store + first_fragment, 0.0)], deadline=CASE_DEADLINE
    )
    assert reply.first_pdu_type == 0x02 and not reply.held  # accepted, then dropped at 1 s
    deadline = time.monotonic() + 5
    while tmp_files(fuzzed.spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tmp_files(fuzzed.spool), f"left behind: {tmp_files(fuzzed.spool)}"


def test_a_connection_costs_the_scp_little_cpu(adapter: RunningAdapter) -> None:
    pid = _scp_pid(adapter)
    before = _cpu_seconds(pid)
    for _ in range(50):
        reply = exchange(adapter.port, [(A_ABORT, 0.0)], deadline=CASE_DEADLINE)
        assert not reply.held
    per_connection = (_cpu_seconds(pid) - before) / 50
    assert per_connection < 0.015, f"{per_connection * 1000:.0f} ms of SCP CPU per connection"


A_ABORT = bytes.fromhex("07000000000400000000")  # PS3.8 9.3.8, source 0, reason 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
