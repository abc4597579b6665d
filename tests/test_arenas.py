"""At most two glibc malloc arenas in the adapter and its SCP process (arenas.py).

An arena other than the main one lives in 64 MiB-aligned heaps that glibc
maps read-write up to what it uses and reserves (``---p``) up to 64 MiB;
counting those in ``/proc/PID/maps`` counts the extra arenas of a running
process from outside.  The probe is shown to see arenas first, in a process
whose threads contend in malloc (sqlite releases the GIL while it
allocates), with and without the limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import ROOT, AdapterProcess, require_tool, wait_for
from tests.dicom import make_study

HEAP = 64 << 20  # HEAP_MAX_SIZE on 64-bit glibc


def extra_arena_heaps(pid: int) -> int:
    """64 MiB-aligned anonymous mappings of 64 MiB, read-write then reserved: arena heaps."""
    rows = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        rows.append((start, end, fields[1], len(fields) > 5))
    heaps = 0
    for i, (start, end, perms, named) in enumerate(rows):
        if start % HEAP or named or perms != "rw-p":
            continue
        size, j = end - start, i + 1
        while j < len(rows) and rows[j][0] == rows[j - 1][1] and rows[j][2] == "---p":
            size, j = size + rows[j][1] - rows[j][0], j + 1
        heaps += size == HEAP
    return heaps


CONTENDING = textwrap.dedent("""\
    import os, sqlite3, sys, threading
    sys.path.insert(0, {root!r})
    if {limited}:
        from arenas import limit_malloc_arenas
        limit_malloc_arenas()
    def churn():
        db = sqlite3.connect(":memory:")
        db.execute("create table t (a text)")
        for _ in range(300):
            db.executemany("insert into t values (?)", [("x" * 200,)] * 100)
    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    print(os.getpid(), flush=True)
    sys.stdin.read()
""")


def heaps_of_contending_threads(limited: bool) -> int:
    script = CONTENDING.format(root=str(ROOT), limited=limited)
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        pid = int(process.stdout.readline())
        return extra_arena_heaps(pid)
    finally:
        process.communicate(timeout=30)


def test_the_probe_sees_the_arenas_that_contending_threads_make() -> None:
    assert heaps_of_contending_threads(limited=False) > 2
    assert heaps_of_contending_threads(limited=True) <= 1


def test_the_adapter_and_its_scp_keep_to_two_arenas_under_load(
    adapter_process: AdapterProcess, tmp_path: Path
) -> None:
    adapter_process.start()
    files = make_study(tmp_path / "study", 400)
    storescu = require_tool("storescu")

    def send(part: list[Path]) -> int:
        command = [storescu, "-aec", "DICOMADAPTER", "127.0.0.1", str(adapter_process.port)]
        return subprocess.run(
            [*command, *map(str, part)], env={"TCP_NODELAY": "1"}, capture_output=True
        ).returncode

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(send, [files[i::4] for i in range(4)])) == [0, 0, 0, 0]
    ledger = adapter_process.ledger()
    wait_for(lambda: len(ledger.instances()) == 400, timeout=60)  # intake's share of the load
    assert adapter_process.process is not None
    adapter = adapter_process.process.pid
    (scp,) = Path(f"/proc/{adapter}/task/{adapter}/children").read_text().split()
    assert os.path.exists(f"/proc/{scp}")
    assert extra_arena_heaps(adapter) <= 1
    assert extra_arena_heaps(int(scp)) <= 1
