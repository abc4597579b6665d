"""STOW-RS receive rate against DIMSE receive rate: the same files in the same run.

    python bench/stow.py --corpus var/bench-corpus [--repeat 3] [--ct N] [--small N]
        [--batch 50] [--senders dimse,stow,curl]

For each corpus, each repetition and each sender in turn (dimse, stow, curl,
dimse, ..., so load from anything else on the machine falls on all alike), a
fresh adapter starts with both listeners on 127.0.0.1: ``bench/run.py``'s
config (SQLite ledger, ``processor = none``) plus ``[http] port``. Fresh for
each sender, because the same instances a second time would measure the
duplicate path instead of the receive path.

- **dimse**: ``TCP_NODELAY=1 storescu`` over one association, as ``run.py``
  sends (it reads each file as it goes; C++, a small share of the time).
- **stow**: dicomweb-client's ``store_instances`` over one ``requests``
  session (one keep-alive connection), ``--batch`` instances per request, one
  request at a time. The client takes pydicom Datasets, so the files are read
  into memory before the timing; inside it the client encodes each Dataset
  (``dcmwrite``) and joins the body in memory, as it does in use. That
  encoding, timed apart afterwards on the same Datasets, is the ``client
  encode s`` column, so the rate without it can be worked out.
- **curl**: bodies of ``--batch`` files each, the files byte for byte, built
  on disk before the timing and sent by one curl process, one request after another over one
  connection (``--next``), each streamed from its file (``-T``): the server's
  side with next to no client cost.

The timed interval runs from the sender's start until its last answer is
read. Drain (sender done until the ledger holds every row) and ledger lag are
measured as ``run.py`` measures them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod
import lag
import report
from export import corpora
from run import (
    HOST,
    START_TIMEOUT,
    BenchError,
    Started,
    adapter_plan,
    free_port,
    launch,
    ledger_count,
    measure_ledger,
    received_files,
    scratch,
    send,
    stop,
    tool,
    wait_port,
)

SENDERS = ("dimse", "stow", "curl")
BATCH = 50  # instances per STOW-RS request
BOUNDARY = "bench-stow-part"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
T = TypeVar("T")


@dataclass
class Result(report.Result):
    """``report.Result`` for one sender, with its batch size and the client's encoding."""

    batch: int = 0  # instances per request; 0: DIMSE, one association
    encodes: list[float] = field(default_factory=list)  # stow: dcmwrite + body, seconds


@dataclass
class Corpus:
    """One corpus in every form a sender takes, made before any timing."""

    name: str
    files: list[Path]
    datasets: list[Dataset]  # for dicomweb-client
    bodies: list[Path]  # multipart bodies for curl, ``batch`` files each
    batch: int


@dataclass
class Target:
    """A running adapter: its DICOM port (``started``) and its STOW-RS base URL."""

    started: Started
    stow_url: str


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_bodies(files: list[Path], batch: int, folder: Path) -> list[Path]:
    """One ``multipart/related`` body per ``batch`` files, each file byte for byte."""
    bodies = []
    for number, chunk in enumerate(batches(files, batch)):
        body = folder / f"body-{number:04d}"
        with body.open("wb") as out:
            for path in chunk:
                out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
                out.write(path.read_bytes())
                out.write(b"\r\n")
            out.write(f"--{BOUNDARY}--\r\n".encode())
        bodies.append(body)
    return bodies


def encode_seconds(datasets: list[Dataset], batch: int) -> float:
    """The client's own work before each request, timed alone: what ``store_instances``
    does (``dcmwrite`` into a buffer per instance, the parts joined into one body)."""
    start = time.perf_counter()
    for chunk in batches(datasets, batch):
        parts = []
        for ds in chunk:
            with io.BytesIO() as buffer:
                pydicom.dcmwrite(buffer, ds)
                parts.append(buffer.getvalue())
        b"".join(parts)
    return time.perf_counter() - start


def send_dimse(target: Target, corpus: Corpus, timeout: float) -> float:
    return send(target.started.port, target.started.ae_title, corpus.files, timeout)


def send_stow(target: Target, corpus: Corpus, timeout: float) -> float:
    """dicomweb-client, one request at a time; every instance must be stored."""
    with requests.Session() as session:
        client = DICOMwebClient(target.stow_url, session=session, timeout=timeout)
        client.set_http_retry_params(retry=False)  # a refusal is a failed run, not a wait
        start = time.perf_counter()
        chunks = batches(corpus.datasets, corpus.batch)
        answers = [client.store_instances(chunk) for chunk in chunks]
        elapsed = time.perf_counter() - start
    stored = sum(len(answer.get("ReferencedSOPSequence", [])) for answer in answers)
    if stored != len(corpus.datasets) or any("FailedSOPSequence" in a for a in answers):
        raise BenchError(f"STOW-RS stored {stored}/{len(corpus.datasets)} instances")
    return elapsed


def send_curl(target: Target, corpus: Corpus, timeout: float) -> float:
    """One curl process, each body streamed from disk; every answer must be 200."""
    curl = shutil.which("curl")
    if curl is None:
        raise BenchError("curl not found (apt-get install curl); leave it out with --senders")
    command = [curl]
    for number, body in enumerate(corpus.bodies):
        command += ["--next"] if number else []
        command += ["-sS", "-o", "/dev/null", "-w", "%{http_code}\\n", "-X", "POST"]
        command += ["-H", f"Content-Type: {CONTENT_TYPE}", "-H", "Expect:"]
        command += ["-T", str(body), f"{target.stow_url}/studies"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - start
    codes = done.stdout.decode().split()
    if done.returncode != 0 or codes != ["200"] * len(corpus.bodies):
        raise BenchError(f"curl ({done.returncode}) answered {codes}: {done.stderr.decode()}")
    return elapsed


SEND: dict[str, Callable[[Target, Corpus, float], float]] = {
    "dimse": send_dimse,
    "stow": send_stow,
    "curl": send_curl,
}


def start_adapter(work: Path) -> Target:
    """A fresh adapter in ``work`` listening for both DICOM and HTTP."""
    port = free_port()
    stow_port = free_port()
    while stow_port == port:
        stow_port = free_port()
    started = launch(adapter_plan(work, port, stow_port=stow_port), port, work)
    try:
        wait_port(stow_port, started.proc, START_TIMEOUT)
    except BaseException:
        stop(started.proc)
        raise
    return Target(started, f"http://{HOST}:{stow_port}/dicomweb/{started.ae_title}")


def run_once(result: Result, corpus: Corpus, workdir: Path) -> None:
    """One fresh adapter, one timed send, its drain; untimed start, stop and checks."""
    timeout = 120 + result.size / 1e6  # generous: 1 MB/s floor plus a fixed allowance
    with scratch(workdir) as work, contextlib.ExitStack() as stack:
        target = start_adapter(work)
        stack.callback(stop, target.started.proc)
        assert target.started.ledger_url is not None
        ledger = lag.reader(target.started.ledger_url)
        stack.callback(ledger.dispose)
        ledger_count(ledger)  # connected before the timing, as run.py does
        result.times.append(SEND[result.receiver](target, corpus, timeout))
        measure_ledger(ledger, work, result.count, result)
        got = received_files(work)
    if got != result.count:
        raise BenchError(f"{result.receiver}: the spool holds {got}/{result.count} instances")
    if result.receiver == "stow":  # after the adapter stopped: nothing else runs
        result.encodes.append(encode_seconds(corpus.datasets, corpus.batch))


def bench_corpus(corpus: Corpus, args: argparse.Namespace) -> list[Result]:
    """Every sender ``args.repeat`` times, taking turns."""
    size = sum(f.stat().st_size for f in corpus.files)
    results = [
        Result(corpus.name, sender, 1, len(corpus.files), size, batch=_batch(sender, corpus))
        for sender in args.senders
    ]
    for rep in range(args.repeat):
        for result in results:
            run_once(result, corpus, args.workdir)
            print(
                f"  {corpus.name:6} {result.receiver:6} run {rep + 1}/{args.repeat}: "
                f"{result.last()}",
                flush=True,
            )
    return results


def _batch(sender: str, corpus: Corpus) -> int:
    return 0 if sender == "dimse" else corpus.batch


def load(name: str, folder: Path, batch: int, bodies: Path) -> Corpus:
    """Read the corpus into Datasets and write its curl bodies into ``bodies``."""
    files = corpus_mod.corpus_files(folder)
    datasets = [pydicom.dcmread(path) for path in files]
    return Corpus(name, files, datasets, write_bodies(files, batch, bodies), batch)


HEADER = (
    "| corpus | sender | batch | instances | MB | median s | inst/s | MB/s | vs dimse "
    "| client encode s | lag ms median | lag ms p99 | drain ms |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def table(results: list[Result]) -> str:
    """A Markdown row per sender and corpus; ``vs dimse``: its rate over storescu's."""
    by = {(r.corpus, r.receiver): r for r in results}
    lines = [HEADER]
    for r in results:
        dimse = by.get((r.corpus, "dimse"))
        ratio = f"{r.rate / dimse.rate:.2f}" if dimse and r is not dimse else ""
        encode = f"{statistics.median(r.encodes):.2f}" if r.encodes else ""
        lines.append(
            f"| {r.corpus} | {r.receiver} | {r.batch or ''} | {r.count} | {r.size / 1e6:.1f} "
            f"| {r.median:.2f} | {r.rate:.0f} | {r.mbps:.1f} | {ratio} | {encode} "
            f"| {report.ms(r.lag_medians)} | {report.ms(r.lag_p99s)} | {report.ms(r.drains)} |"
        )
    return "\n".join(lines)


NOTE = (
    "Timed: the sender's start to its last answer. dimse: storescu, one association. "
    "stow: dicomweb-client, {batch} instances per request, one connection; files read into "
    "Datasets before the timing, the client's encoding (dcmwrite, body join; 'client encode s', "
    "timed apart) inside it. curl: the same bodies built on disk before the timing, streamed. "
    "drain: sender done until the ledger holds every row."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus_mod.add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median is kept)")
    parser.add_argument("--batch", type=int, default=BATCH, help="instances per STOW-RS request")
    parser.add_argument(
        "--senders", default=",".join(SENDERS), help=f"comma list from {', '.join(SENDERS)}"
    )
    corpus_mod.add_workdir(parser)
    args = parser.parse_args()
    args.senders = [s.strip() for s in args.senders.split(",") if s.strip()]
    for sender in args.senders:
        if sender not in SENDERS:
            parser.error(f"unknown sender {sender!r}")
    if args.batch < 1:
        parser.error("--batch: at least 1")
    return args


def run_all(args: argparse.Namespace, results: list[Result]) -> None:
    for name, folder in corpora(args).items():
        with scratch(args.workdir) as bodies:
            corpus = load(name, folder, args.batch, bodies)
            print(f"{name}: {len(corpus.files)} files from {folder}", flush=True)
            results.extend(bench_corpus(corpus, args))


def main() -> int:
    args = parse_args()
    results: list[Result] = []
    try:
        if "dimse" in args.senders:
            tool("storescu")
        run_all(args, results)
    except (BenchError, subprocess.SubprocessError, requests.RequestException, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if results:
            print(table(results))
        return 1
    print()
    print(table(results))
    print()
    print(NOTE.format(batch=args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
