"""The temporary file a C-STORE dataset streams into, in ``spool/.tmp/``.

pynetdicom's chunked receive writes a Part 10 file: preamble, ``DICM``, a
file meta group (which :mod:`scp.receiving` has it write through
:meth:`IncomingFile.write_meta`, so the group is ours, recording where the
instance came from), then the dataset fragments as they arrive.  They
gather in a buffer of at most :data:`WRITE_BUFFER` bytes and go to the file
whenever it fills: a large dataset streams to disk in 256 KiB writes and is
never held in memory, and a small one is written once, at :meth:`sync`,
and read back from memory by the C-STORE handler (:meth:`reading`): five
fewer system calls per small instance, each a GIL hand-over under load.
A write that finds the disk full (ENOSPC, EDQUOT) is not raised into
pynetdicom (which would drop the association without an answer): the file
records the failure, gives its space back and swallows the rest of the
message, so the C-STORE handler can answer 0xA700.  So does a write that
would take free space under ``min_free`` (checked before each write, not
only when the file is opened: one huge store must not fill the disk the
ledger shares), and a data set growing past ``max_instance_size``.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from spool.header import HeaderValues
from spool.part10 import PREAMBLE, encode_meta

# A UID of our own under the 2.25 (UUID) root, PS3.5 Annex B.2.
IMPLEMENTATION_CLASS_UID = "2.25.163359237101938412089463516829934576211"
IMPLEMENTATION_VERSION_NAME = "DICOMADAPTER_1"
# Names what our Private Information (0002,0102) holds: the data set's length
# as received, 8 bytes little endian (PS3.10 7.1 allows private file meta).
RECEIVED_LENGTH_UID = "2.25.290174633218853214526389148470815394067"
PRIVATE_INFORMATION_CREATOR_UID = 0x00020100
PRIVATE_INFORMATION = 0x00020102
_LENGTH_BYTES = 8
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
WRITE_BUFFER = 256 * 1024
# Temporary names: this process's random prefix and a counter (O_EXCL refuses a clash).
# A uuid4 per file cost a getrandom system call, a GIL hand-over under load.
_NAME_PREFIX = secrets.token_hex(8)
_NAME_NUMBERS = itertools.count()


@dataclass(frozen=True)
class Provenance:
    """Where an instance came from (PS3.10 7.1 Source/Sending/Receiving AE, address)."""

    calling_ae: str  # empty over HTTP
    called_ae: str
    peer_address: str  # "ip:port"
    scheme: str = "dicom"  # "http" or "https" for STOW-RS
    user: str | None = None  # the HTTP user who stored it

    @property
    def address(self) -> str:
        """Sending Presentation Address (0002,0027): ``dicom://ip:port``, or for STOW-RS
        ``https://user@ip:port`` (a URI's user information names who sent it)."""
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        return f"{self.scheme}://{user}{self.peer_address}"


@dataclass(frozen=True)
class MetaUids:
    """What pynetdicom knows for the file meta: the request's UIDs and the context's syntax."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


class IncomingFile:
    """Write-only file for one received dataset, buffered up to :data:`WRITE_BUFFER`.

    Offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``,
    ``write``, ``file.flush`` and ``close``; and :meth:`write_meta`.
    """

    def __init__(
        self,
        folder: Path,
        provenance: Provenance,
        *,
        room: Callable[[int], bool] | None = None,
        max_size: int = 0,
    ) -> None:
        self.provenance = provenance
        self._room = room  # may this many more bytes be written and min_free still hold?
        self._max_size = max_size  # the data set's, in bytes; 0: no limit
        self.name = f"{folder}/{_NAME_PREFIX}-{next(_NAME_NUMBERS)}.part"
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.failed: OSError | None = None
        self.published = False
        self.size = 0  # bytes received for the file
        self._length_at: int | None = None  # where the meta's received length goes
        self._dataset_at = 0  # where the data set starts
        self._syntax = ""  # its Transfer Syntax UID, as our file meta says
        self._fd: int | None = None
        self._pending = bytearray()  # received, not yet written
        self._spilled = False  # some bytes are in the file, not all in memory
        try:
            self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            self._fail(exc)

    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def out_of_space(self) -> bool:
        return self.failed is not None and self.failed.errno in _FULL

    def write(self, data: bytes) -> int:
        if self.failed is None:
            self._pending += data
            self.size += len(data)
            over = self._length_at is not None and self.size - self._dataset_at > self._max_size
            if self._max_size and over:
                message = f"larger than max_instance_size ({self._max_size} bytes)"
                self._fail(OSError(errno.EFBIG, message))
            elif len(self._pending) >= WRITE_BUFFER:
                self._write_pending()
        return len(data)

    def write_meta(self, uids: MetaUids) -> None:
        """The file meta group, after pynetdicom's preamble and ``DICM``.

        Its last element is a placeholder for the data set's length, filled
        in by :meth:`sync` once the whole data set has arrived.
        """
        meta = meta_group(uids, self.provenance)
        self.write(meta)
        self._length_at = self.size - _LENGTH_BYTES
        self._dataset_at = self.size
        self._syntax = uids.transfer_syntax_uid

    def write_header(self, uids: MetaUids) -> None:
        """Preamble, ``DICM`` and the file meta group: what pynetdicom writes first."""
        self.write(bytes(PREAMBLE) + b"DICM")
        self.write_meta(uids)

    @property
    def dataset(self) -> tuple[int, str] | None:
        """(offset, Transfer Syntax UID) of the data set behind our file meta; None
        before :meth:`write_meta`.  The SCP's walk starts there: walking the meta it
        wrote itself was a tenth of its Python time per small instance."""
        return None if self._length_at is None else (self._dataset_at, self._syntax)

    def flush(self) -> None:
        """pynetdicom flushes after every fragment: the buffer decides instead."""

    @contextmanager
    def reading(self) -> Iterator[tuple[BinaryIO, int]]:
        """(handle, size) over the bytes received: from memory while they all fit.

        Raises the write failure, if writing what was buffered failed.
        """
        if not self._spilled:
            yield BytesIO(self._pending), len(self._pending)
            return
        self._write_pending()
        if self.failed is not None:
            raise self.failed
        with open(self.name, "rb", buffering=0) as handle:
            yield handle, self.size

    def sync(self) -> None:
        """Record the data set's length, write what is buffered and fsync.

        The caller renames the file into place next.  The length tells intake
        later that this file is complete as received (:func:`received_length`),
        whatever a heuristic for hand-dropped files would make of it.
        """
        length = (self.size - self._dataset_at).to_bytes(_LENGTH_BYTES, "little")
        on_disk = self._spilled  # the meta is in the file already, not in the buffer
        if self._length_at is not None and not on_disk:
            self._pending[self._length_at : self._length_at + _LENGTH_BYTES] = length
        self._write_pending()
        if self.failed is not None:
            raise self.failed
        if self._fd is not None:
            if self._length_at is not None and on_disk:
                os.pwrite(self._fd, length, self._length_at)
            os.fsync(self._fd)

    def close(self) -> None:
        self._write_pending()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and remove, unless published: for a transfer that never finished."""
        self._pending.clear()
        self.close()
        if not self.published:
            Path(self.name).unlink(missing_ok=True)

    def __del__(self) -> None:
        """An aborted transfer's file goes when pynetdicom drops it, at the latest."""
        self.discard()

    def _write_pending(self) -> None:
        if not self._pending or self.failed is not None:
            return
        if self._room is not None and not self._room(len(self._pending)):
            self._fail(OSError(errno.ENOSPC, "free space would fall under min_free"))
            return
        self._spilled = True
        try:
            if self._fd is None:
                raise OSError(errno.EBADF, "file is closed")
            while self._pending:
                del self._pending[: os.write(self._fd, self._pending)]
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        """Remember why, and give the disk space back at once."""
        self.failed = exc
        self._pending.clear()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)


def meta_group(uids: MetaUids, provenance: Provenance) -> bytes:
    """Our file meta group (0002) for a received dataset.

    PS3.10 7.1: Source/Sending AE is the calling AE, Receiving AE the called
    AE; the peer's address goes in Sending Presentation Address.  Encoded
    here rather than with pydicom, which took a tenth of the SCP's time per
    small instance (``tests/test_part10.py`` checks the bytes are pydicom's).
    """
    calling = provenance.calling_ae.encode("ascii", "replace")
    return encode_meta(
        [
            (0x00020001, b"OB", b"\x00\x01"),
            (0x00020002, b"UI", uids.sop_class_uid.encode("ascii", "replace")),
            (0x00020003, b"UI", uids.sop_instance_uid.encode("ascii", "replace")),
            (0x00020010, b"UI", uids.transfer_syntax_uid.encode("ascii", "replace")),
            (0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            (0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
            (0x00020016, b"AE", calling),
            (0x00020017, b"AE", calling),
            (0x00020018, b"AE", provenance.called_ae.encode("ascii", "replace")),
            (0x00020027, b"UR", provenance.address.encode("ascii", "replace")),
            (PRIVATE_INFORMATION_CREATOR_UID, b"UI", RECEIVED_LENGTH_UID.encode()),
            (PRIVATE_INFORMATION, b"OB", bytes(_LENGTH_BYTES)),  # filled in by sync()
        ]
    )


def received_length(values: HeaderValues) -> int | None:
    """The data set length our SCP recorded in a file's meta, or None if it did not."""
    elements = values.structure.elements
    creator = elements.get(PRIVATE_INFORMATION_CREATOR_UID)
    value = elements.get(PRIVATE_INFORMATION)
    if creator is None or value is None or len(value.value) != _LENGTH_BYTES:
        return None
    if creator.value.rstrip(b"\x00 ") != RECEIVED_LENGTH_UID.encode():
        return None
    return int.from_bytes(value.value, "little")
