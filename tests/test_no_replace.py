"""Publishing never replaces a copy already in the spool, whoever wrote it.

The SCP and the HTTP listener each have their own SpoolWriter, and nodes on
a shared spool each have theirs: two of them publishing the same SOP
Instance UID at the same moment must keep both copies (the duplicates
policy decides later, in intake), never silently keep one.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from config import FreeSpaceRule
from spool.durable import link_then_unlink, rename_no_replace
from spool.incoming import Provenance
from spool.layout import SpoolLayout
from spool.writer import SpoolWriter

AE = "DICOMADAPTER"


@pytest.mark.parametrize("rename", [rename_no_replace, link_then_unlink])
def test_a_rename_that_would_replace_fails_and_keeps_both(rename, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    with pytest.raises(FileExistsError):
        rename(second, first)
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    rename(second, tmp_path / "third")
    assert (tmp_path / "third").read_bytes() == b"second" and not second.exists()


def test_two_writers_publishing_one_instance_at_once_keep_both_copies(tmp_path: Path) -> None:
    writers = [
        SpoolWriter(SpoolLayout(tmp_path / "spool", node), FreeSpaceRule(0, 0))
        for node in ("scp", "http")
    ]
    for writer in writers:
        writer.layout.tmp.mkdir(parents=True, exist_ok=True)
    for round_ in range(200):
        published = _publish_at_once(writers, f"1.2.3.{round_}")
        assert len(set(published)) == 2, published
        assert sorted(path.read_bytes() for path in published) == [b"copy 0", b"copy 1"]


def _publish_at_once(writers: list[SpoolWriter], sop: str) -> list[Path]:
    """Each writer publishes its own copy of ``sop``, released together."""
    barrier = threading.Barrier(len(writers))
    published: list[Path] = []

    def publish(writer: SpoolWriter, content: bytes) -> None:
        incoming = writer.open_incoming(Provenance("PEER", AE, "127.0.0.1:1"))
        incoming.write(content)
        barrier.wait()
        published.append(writer.publish(incoming, "1.2.3", "1.2.3.4", sop))

    threads = [
        threading.Thread(target=publish, args=(writer, f"copy {n}".encode()))
        for n, writer in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return published
