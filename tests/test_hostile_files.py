"""Hostile files: truncated, bombs, deep nesting, lying lengths, poisoned UIDs and text.

pydicom 3.0.2 reads truncated files without complaint, allocates declared
lengths, recurses per sequence level and inflates deflate bombs whole.
These files are built byte by byte here, because pydicom
would refuse to write most of them; each must be refused (quarantine by
hand, 0xC210 over the network) in bounded time and memory, and the adapter
must go on storing the next good instance.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import pytest
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from spool.part10 import encode_meta
from tests.conftest import (
    RunningAdapter,
    proc_status,
    reset_peak,
    tmp_files,
    wait_for,
    write_config,
)
from tests.dicom import make_instance
from tests.peers.send import send_files
from watchers.inspect import NotAnInstance, read_header

# pydicom warns (rightly) about the poisoned UIDs it is made to read.
pytestmark = pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")

AE = "DICOMADAPTER"
PRIVATE_SOP_CLASS = "1.3.6.1.4.1.99999.1.1"  # a private SOP class: legitimate, just unknown
GIB = 2**30


def element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; ``length`` may lie about ``value``."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\x00\x00" + struct.pack("<I", size) + value
    return head + struct.pack("<H", size) + value


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, size) + value


def uids(
    sop: str | None = "auto",
    study: str | None = "auto",
    series: str | None = "auto",
    sop_class: str | None = PRIVATE_SOP_CLASS,
    patient_id: str = "PAT001",
) -> bytes:
    """The identifying elements of a dataset, in tag order; None leaves one out."""
    parts = []
    for tag, vr, value in (
        (0x00080016, b"UI", sop_class),
        (0x00080018, b"UI", generate_uid() if sop == "auto" else sop),
        (0x00100020, b"LO", patient_id),
        (0x0020000D, b"UI", generate_uid() if study == "auto" else study),
        (0x0020000E, b"UI", generate_uid() if series == "auto" else series),
    ):
        if value is not None:
            parts.append(element(tag, vr, value.encode("latin-1")))
    return b"".join(parts)


def part10(dataset: bytes, syntax: str = ExplicitVRLittleEndian, **meta: str) -> bytes:
    """Preamble, DICM, a valid file meta, then ``dataset`` as given (deflated if asked)."""
    sop = meta.get("sop", generate_uid())
    head = encode_meta(
        [
            (0x00020001, b"OB", b"\x00\x01"),
            (0x00020002, b"UI", meta.get("sop_class", CTImageStorage).encode()),
            (0x00020003, b"UI", sop.encode()),
            (0x00020010, b"UI", syntax.encode()),
            (0x00020012, b"UI", b"1.2.826.0.1.3680043.10.1"),
        ]
    )
    return bytes(128) + b"DICM" + head + dataset


def nested(levels: int, *, defined: bool, explicit: bool = True) -> bytes:
    """Content Sequence inside Content Sequence, ``levels`` deep."""
    if not defined:
        opening = (
            element(0x0040A730, b"SQ", b"", 0xFFFFFFFF)
            if explicit
            else implicit(0x0040A730, b"", 0xFFFFFFFF)
        ) + implicit(0xFFFEE000, b"", 0xFFFFFFFF)
        closing = implicit(0xFFFEE00D, b"") + implicit(0xFFFEE0DD, b"")
        return opening * levels + closing * levels
    inner = b""
    for _ in range(levels):
        inner = element(0x0040A730, b"SQ", implicit(0xFFFEE000, inner))
    return inner


def deflate_bomb(prefix: bytes, zeros_gib: int) -> bytes:
    """``prefix`` then ``zeros_gib`` GiB of zeros, raw deflate, in about a megabyte.

    Built from one compressed MiB of zeros repeated: after a full flush a
    deflate block depends on nothing before it, so copies concatenate into
    one valid stream without compressing gigabytes here.
    """
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    chunk = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = chunk.compress(bytes(2**20)) + chunk.flush(zlib.Z_FULL_FLUSH)
    return start + mib * (zeros_gib * 1024) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


PIXELS = element(0x00280010, b"US", struct.pack("<H", 16)) + element(
    0x00280011, b"US", struct.pack("<H", 16)
)


def hostile_files() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a fragment of the reason it must be refused with)."""
    good = uids()
    deflated_header = good + PIXELS + element(0x7FE00010, b"OW", b"", 0xFFFFFFF0)
    return {
        "zero-bytes": (b"", "empty file"),
        "preamble-only": (bytes(100), "shorter than the 128-byte preamble"),
        "wrong-magic": (bytes(128) + b"DICN" + bytes(200), "no DICM prefix"),
        "text": (b"hello, this is not DICOM\n" * 10, "no DICM prefix"),
        "meta-cut": (part10(good)[:150], "truncated"),
        "dataset-cut": (part10(good)[:-7], "truncated"),
        "no-dataset": (part10(b""), "no dataset"),
        "ob-claims-4gib": (
            part10(good + element(0x00091010, b"OB", b"\x00" * 16, 0xFFFFFFF0)),
            "declares 4294967280 bytes",
        ),
        "pixels-claim-4gib": (
            part10(good + PIXELS + element(0x7FE00010, b"OW", bytes(512), 0xFFFFFFF0)),
            "Pixel Data needs 4294967280 bytes",
        ),
        "nested-10000-undefined": (part10(good + nested(10_000, defined=False)), "nested deeper"),
        "nested-10000-defined": (part10(good + nested(10_000, defined=True)), "nested deeper"),
        "nested-10000-implicit": (
            part10(
                b"".join(
                    implicit(tag, uid.encode() + b"\x00" * (len(uid) % 2))
                    for tag, uid in (
                        (0x00080016, CTImageStorage),
                        (0x00080018, generate_uid()),
                        (0x0020000D, generate_uid()),
                    )
                )
                + nested(10_000, defined=False, explicit=False),
                ImplicitVRLittleEndian,
            ),
            "nested deeper",
        ),
        "deflate-bomb-header": (
            part10(
                deflate_bomb(good + element(0x00091010, b"OB", b"", 2 * GIB), 2),
                DeflatedExplicitVRLittleEndian,
            ),
            "inflates past",
        ),
        "deflate-bomb-pixels": (
            part10(deflate_bomb(deflated_header, 4), DeflatedExplicitVRLittleEndian),
            "inflates past",
        ),
        "deflate-zeros": (
            part10(deflate_bomb(b"", 1), DeflatedExplicitVRLittleEndian),
            "elements before Pixel Data",
        ),
        "deflate-cut": (
            part10(zlib.compress(good, 9)[2:40], DeflatedExplicitVRLittleEndian),
            "truncated",
        ),
        "uid-path-separators": (part10(uids(study="1.2.3/../../etc")), "StudyInstanceUID"),
        "uid-nul": (part10(uids(sop="1.2.3\x004.5")), "SOPInstanceUID"),
        "uid-300-chars": (part10(uids(series="1." * 150 + "1")), "SeriesInstanceUID"),
        "no-sop-instance-uid": (part10(uids(sop=None)), "SOPInstanceUID: UID is empty"),
        "no-sop-class-uid": (
            part10(uids(sop_class=None), sop_class=""),
            "SOPClassUID: UID is empty",
        ),
        "image-without-pixels": (part10(uids(sop_class=CTImageStorage)), "image without Pixel"),
        "rows-without-pixels": (part10(good + PIXELS), "image without Pixel Data"),
    }


HOSTILE = hostile_files()


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, (data, _reason) in HOSTILE.items():
        (folder / f"{name}.dcm").write_bytes(data)
    return folder


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_refused_quickly_with_a_reason(hostile_dir: Path, name: str) -> None:
    started = time.monotonic()
    with pytest.raises(NotAnInstance) as refused:
        read_header(hostile_dir / f"{name}.dcm")
    elapsed = time.monotonic() - started
    reason = str(refused.value)
    assert HOSTILE[name][1] in reason
    assert "\n" not in reason and len(reason) < 300
    assert elapsed < 1.5, f"{name} took {elapsed:.2f}s"


def test_every_truncation_of_an_image_is_refused(tmp_path: Path) -> None:
    """Cut a small CT after every byte: preamble, prefix, meta, dataset, pixel data.

    A cut at an element boundary looks like a shorter valid dataset, so the
    header's promise (an image storage class, Rows) is what refuses those.
    """
    data = make_instance(tmp_path / "ct.dcm", rows=4, columns=4).read_bytes()
    cut = tmp_path / "cut.dcm"
    accepted = []
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        try:
            read_header(cut)
        except NotAnInstance:
            continue
        accepted.append(length)
    assert accepted == []
    cut.write_bytes(data)
    assert read_header(cut).header.size == len(data)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_every_truncation_of_a_report_is_refused_or_complete(tmp_path: Path, syntax: str) -> None:
    """A report (no pixels) cut inside an element or a sequence is refused."""
    from pydicom.uid import BasicTextSRStorage

    data = make_instance(
        tmp_path / "sr.dcm", sop_class_uid=BasicTextSRStorage, transfer_syntax_uid=syntax
    ).read_bytes()
    cut = tmp_path / "cut.dcm"
    for length in range(len(data) - 1, 0, -7):
        cut.write_bytes(data[:length])
        try:
            header = read_header(cut).header
        except NotAnInstance:
            continue
        # Only a cut at an element boundary after the UIDs can pass as a shorter
        # report, or a deflated file losing only its even-length pad byte.
        if syntax == DeflatedExplicitVRLittleEndian:
            assert length == len(data) - 1
        assert header.sop_instance_uid


def test_normal_files_cost_little_more_than_pydicom(tmp_path: Path) -> None:
    """The structure walk adds well under a millisecond to a small instance."""
    from spool.structure import survey

    path = make_instance(tmp_path / "ct.dcm")
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        runs = 300
        started = time.perf_counter()
        for _ in range(runs):
            survey(handle, size)
        per_file = (time.perf_counter() - started) / runs
    assert per_file < 0.5e-3, f"{per_file * 1e6:.0f} us per file"


@pytest.mark.parametrize(
    "name", ["deflate-bomb-header", "deflate-bomb-pixels", "deflate-zeros", "ob-claims-4gib"]
)
def test_bombs_and_length_claims_stay_in_bounded_memory(hostile_dir: Path, name: str) -> None:
    if not reset_peak():
        pytest.skip("cannot reset VmHWM (/proc/self/clear_refs)")
    before = proc_status()
    with pytest.raises(NotAnInstance):
        read_header(hostile_dir / f"{name}.dcm")
    grown = proc_status()["VmHWM"] - before["VmRSS"]
    assert grown < 48 * 2**20, f"{name}: peak RSS grew {grown / 2**20:.1f} MiB"


def quarantined(spool: Path) -> dict[str, Path]:
    """Quarantined files by their original name."""
    return {
        re.sub(r"^\d{8}T\d{6}Z-[0-9a-f]{8}-", "", p.name): p
        for p in (spool / "quarantine").iterdir()
        if p.suffix != ".reason"
    }


def drop(folder: Path, name: str, data: bytes, staging: Path) -> None:
    """Move a file in whole, as a careful admin would (a rename, not a slow copy)."""
    staged = staging / "staged"
    staged.write_bytes(data)
    os.rename(staged, folder / name)


def test_dropped_by_hand_each_is_quarantined_and_intake_goes_on(
    adapter: RunningAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="watchers.intake")
    folder = adapter.spool / AE
    for name, (data, _reason) in HOSTILE.items():
        drop(folder, f"{name}.dcm", data, tmp_path)
    drop(folder, "forged\nWARNING fake line.dcm", b"junk", tmp_path)
    drop(folder, "good.dcm", make_instance(tmp_path / "good.dcm").read_bytes(), tmp_path)
    rows = adapter.wait_rows(len(HOSTILE) + 2, timeout=60)
    assert adapter.adapter.intake.running
    received = [row for row in rows if row.state == "received"]
    assert [row.path for row in received] == [str(folder / "good.dcm")]

    kept = quarantined(adapter.spool)
    assert sorted(kept) == sorted([*(f"{n}.dcm" for n in HOSTILE), "forged\nWARNING fake line.dcm"])
    for name, (data, reason) in HOSTILE.items():
        path = kept[f"{name}.dcm"]
        assert path.read_bytes() == data, f"{name} was altered"
        sidecar = path.with_name(path.name + ".reason").read_text().splitlines()
        assert len(sidecar) == 2 and reason in sidecar[1], (name, sidecar)
    forged = kept["forged\nWARNING fake line.dcm"]
    assert len(forged.with_name(forged.name + ".reason").read_text().splitlines()) == 2
    rejected = [row for row in rows if row.state == "rejected"]
    assert all("\n" not in row.reason for row in rejected)
    lines = [r.getMessage() for r in caplog.records if r.name == "watchers.intake"]
    assert len(lines) == len(HOSTILE) + 1 and all("\n" not in line for line in lines)

    # Still going: the next file is recorded too.
    drop(folder, "after.dcm", make_instance(tmp_path / "after.dcm").read_bytes(), tmp_path)
    adapter.wait_rows(2, "received")


def test_an_unknown_sop_class_dropped_by_hand_is_recorded(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """A private SOP class is legitimate: recorded as received, not quarantined."""
    drop(adapter.spool / AE, "private.dcm", part10(uids()), tmp_path)
    [row] = adapter.wait_rows(1, "received")
    assert row.sop_class_uid == PRIVATE_SOP_CLASS


INJECTION = "X\nWARNING forged line'; DROP TABLE instances; --"


def test_patient_id_cannot_forge_log_lines_or_sql(
    start_adapter, tmp_path: Path, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="watchers.intake")
    config = write_config(tmp_path, port)
    config.write_text(
        config.read_text().replace("level = DEBUG\n", "level = DEBUG\nlog_phi = true\n")
    )
    running = start_adapter(config)
    drop(running.spool / AE, "p.dcm", part10(uids(patient_id=INJECTION)), tmp_path)
    [row] = running.wait_rows(1, "received")
    assert row.patient_id == INJECTION  # stored exactly: a bound parameter, not SQL text
    wait_for(lambda: "received id=" in caplog.text)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("received id=")]
    assert "\n" not in line and "X\\nWARNING forged line" in line
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT count(*) FROM instances").fetchone() == (1,)


NETWORK_CASES = [
    "dataset-cut",
    "ob-claims-4gib",
    "pixels-claim-4gib",
    "nested-10000-undefined",
    "nested-10000-defined",
    "deflate-bomb-header",
    "deflate-bomb-pixels",
    "deflate-cut",
    "uid-path-separators",
    "uid-300-chars",
]


def _scp_peak(running: RunningAdapter) -> int:
    return proc_status(running.adapter.server._process.pid)["VmHWM"]


def test_over_the_network_each_is_refused_and_the_scp_stores_the_next(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """Each hostile dataset in its own association (its own context), then a good one."""
    files = []
    for name in NETWORK_CASES:
        data, _ = HOSTILE[name]
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        files.append(path)
    peak_before = _scp_peak(adapter)
    statuses = {}
    for path in files:
        started = time.monotonic()
        [(_, status)] = send_files("127.0.0.1", adapter.port, [path], called_ae=AE, timeout=10)
        statuses[path.stem] = (status, time.monotonic() - started)
    refused = {name: s for name, (s, _) in statuses.items() if s == 0xC210}
    assert sorted(refused) == sorted(NETWORK_CASES), statuses
    assert all(seconds < 2 for _, seconds in statuses.values()), statuses
    assert _scp_peak(adapter) - peak_before < 48 * 2**20
    good = make_instance(tmp_path / "good.dcm")
    assert send_files("127.0.0.1", adapter.port, [good], called_ae=AE) == [(good, 0)]
    adapter.wait_rows(1, "received")
    assert adapter.rows("rejected") == []
    leftovers = tmp_files(adapter.spool)
    assert leftovers == []
