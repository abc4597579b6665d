"""The temporary file a C-STORE dataset streams into, in ``spool/.tmp/``.

pynetdicom's chunked receive writes a Part 10 file: preamble, ``DICM``, a
file meta group of its own, then the dataset fragments as they arrive.  This
file object takes those writes and swaps pynetdicom's file meta for ours on
the fly, one that records where the instance came from, so the dataset bytes
are written once, straight to their file, never held in memory and never
copied.  A write that finds the disk full (ENOSPC, EDQUOT) is not raised
into pynetdicom (which would drop the association without an answer): the
file records the failure, gives its space back and swallows the rest of the
message, so the C-STORE handler can answer 0xA700.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from spool.part10 import PREAMBLE, encode_meta, meta_values

# A UID of our own under the 2.25 (UUID) root, PS3.5 Annex B.2.
IMPLEMENTATION_CLASS_UID = "2.25.163359237101938412089463516829934576211"
IMPLEMENTATION_VERSION_NAME = "DICOMADAPTER_1"
_FULL = {errno.ENOSPC, errno.EDQUOT}
_META_START = PREAMBLE + 4  # after preamble and "DICM"
_GROUP_LENGTH_END = _META_START + 12
_SOP_CLASS, _SOP_INSTANCE, _SYNTAX = 0x00020002, 0x00020003, 0x00020010
_NEEDED = {
    _SOP_CLASS: "Media Storage SOP Class UID",
    _SOP_INSTANCE: "Media Storage SOP Instance UID",
    _SYNTAX: "Transfer Syntax UID",
}


@dataclass(frozen=True)
class Provenance:
    """Where an instance came from (PS3.10 7.1 Source/Sending/Receiving AE, address)."""

    calling_ae: str
    called_ae: str
    peer_address: str  # "ip:port"


class IncomingFile:
    """Write-only, unbuffered file with the Part 10 header replaced by ours.

    Offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``,
    ``write``, ``file.flush`` and ``close``.
    """

    def __init__(self, folder: Path, provenance: Provenance, *, room: bool = True) -> None:
        self.provenance = provenance
        self.name = str(folder / f"{uuid.uuid4().hex}.part")
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.failed: OSError | None = None
        self.published = False
        self.size = 0  # bytes written to the file
        self._header: bytearray | None = bytearray()
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
                self._accept(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

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

    def __del__(self) -> None:
        """An aborted transfer's file goes when pynetdicom drops it."""
        self.close()
        if not self.published:
            Path(self.name).unlink(missing_ok=True)

    def _accept(self, data: bytes) -> None:
        if self._header is None:
            self._write(data)
            return
        self._header += data
        if len(self._header) < _GROUP_LENGTH_END:
            return
        meta_end = _GROUP_LENGTH_END + int.from_bytes(
            self._header[_GROUP_LENGTH_END - 4 : _GROUP_LENGTH_END], "little"
        )
        if len(self._header) < meta_end:
            return
        theirs, rest = bytes(self._header[:meta_end]), bytes(self._header[meta_end:])
        self._header = None
        self._write(file_header(theirs, self.provenance) + rest)

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


def file_header(theirs: bytes, provenance: Provenance) -> bytes:
    """Preamble, ``DICM`` and our file meta for the dataset pynetdicom described.

    ``theirs`` is the start of pynetdicom's file, through its file meta.
    PS3.10 7.1: Source/Sending AE is the calling AE, Receiving AE the called
    AE; the peer's address goes in Sending Presentation Address.  Encoded
    here rather than by pydicom, which took a third of the SCP's time per
    small instance (``tests/test_part10.py`` checks the bytes are pydicom's).

    Raises
    ------
    ValueError
        pynetdicom's file meta lacks a UID it always writes.
    """
    values = meta_values(theirs)
    if missing := [name for tag, name in _NEEDED.items() if tag not in values]:
        raise ValueError(f"the received file meta has no {', '.join(missing)}")
    uids = [values[tag].rstrip(b"\x00 ") for tag in _NEEDED]
    calling = provenance.calling_ae.encode("ascii", "replace")
    return encode_meta(
        [
            (0x00020001, b"OB", b"\x00\x01"),
            (_SOP_CLASS, b"UI", uids[0]),
            (_SOP_INSTANCE, b"UI", uids[1]),
            (_SYNTAX, b"UI", uids[2]),
            (0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            (0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
            (0x00020016, b"AE", calling),
            (0x00020017, b"AE", calling),
            (0x00020018, b"AE", provenance.called_ae.encode("ascii", "replace")),
            (0x00020027, b"UR", f"dicom://{provenance.peer_address}".encode("ascii", "replace")),
        ]
    )
