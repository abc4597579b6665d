"""The temporary file a C-STORE dataset streams into, in ``spool/.tmp/``.

pynetdicom's chunked receive writes a Part 10 file: preamble, ``DICM``, a
file meta group (which :mod:`scp.receiving` has it write through
:meth:`IncomingFile.write_meta`, so the group is ours, recording where the
instance came from), then the dataset fragments as they arrive: the dataset
bytes are written once, straight to their file, never held in memory and
never copied.  A write that finds the disk full (ENOSPC, EDQUOT) is not
raised into pynetdicom (which would drop the association without an
answer): the file records the failure, gives its space back and swallows
the rest of the message, so the C-STORE handler can answer 0xA700.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from spool.part10 import encode_meta

# A UID of our own under the 2.25 (UUID) root, PS3.5 Annex B.2.
IMPLEMENTATION_CLASS_UID = "2.25.163359237101938412089463516829934576211"
IMPLEMENTATION_VERSION_NAME = "DICOMADAPTER_1"
_FULL = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class Provenance:
    """Where an instance came from (PS3.10 7.1 Source/Sending/Receiving AE, address)."""

    calling_ae: str
    called_ae: str
    peer_address: str  # "ip:port"


@dataclass(frozen=True)
class MetaUids:
    """What pynetdicom knows for the file meta: the request's UIDs and the context's syntax."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


class IncomingFile:
    """Write-only, unbuffered file for one received dataset.

    Offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``,
    ``write``, ``file.flush`` and ``close``; and :meth:`write_meta`.
    """

    def __init__(self, folder: Path, provenance: Provenance, *, room: bool = True) -> None:
        self.provenance = provenance
        self.name = str(folder / f"{uuid.uuid4().hex}.part")
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.failed: OSError | None = None
        self.published = False
        self.size = 0  # bytes written to the file
        self._fd: int | None = None
        if not room:
            self.failed = OSError(errno.ENOSPC, "free space under min_free")
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
            try:
                self._write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def write_meta(self, uids: MetaUids) -> None:
        """The file meta group, after pynetdicom's preamble and ``DICM``."""
        self.write(meta_group(uids, self.provenance))

    def flush(self) -> None:
        """Writes are unbuffered: nothing to flush."""

    def sync(self) -> None:
        """fsync what was written; the caller renames the file into place next."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and remove, unless published: for a transfer that never finished."""
        self.close()
        if not self.published:
            Path(self.name).unlink(missing_ok=True)

    def __del__(self) -> None:
        """An aborted transfer's file goes when pynetdicom drops it, at the latest."""
        self.discard()

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError(errno.EBADF, "file is closed")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self.size += written
            view = view[written:]

    def _fail(self, exc: OSError) -> None:
        """Remember why, and give the disk space back at once."""
        self.failed = exc
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
            (0x00020027, b"UR", f"dicom://{provenance.peer_address}".encode("ascii", "replace")),
        ]
    )
