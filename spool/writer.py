"""Atomic, durable acceptance of one received instance into the spool.

The only thing the SCP does with a C-STORE: write our file meta and the
dataset bytes exactly as received to ``.tmp/``, fsync, rename into the final
place, fsync the folder.  Only after that may the SCP answer Success (cf.
Orthanc ``SyncStorageArea``, dcm4che's ``.part`` files).  A failure removes
the temporary file, so a refused store leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from spool.durable import fsync_dir, make_dirs_durable
from spool.layout import SpoolLayout

if TYPE_CHECKING:
    from config import FreeSpaceRule

# A UID of our own under the 2.25 (UUID) root, PS3.5 Annex B.2.
IMPLEMENTATION_CLASS_UID = "2.25.163359237101938412089463516829934576211"
IMPLEMENTATION_VERSION_NAME = "DICOMADAPTER_1"
_COPY_CHUNK = 8 * 2**20
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


class SpoolFull(OSError):
    """No room: the disk is full or free space is under ``min_free``."""


@dataclass(frozen=True)
class Received:
    """One received instance as the SCP hands it to the spool."""

    source: Path  # file holding the dataset bytes (pynetdicom's chunked temp file)
    dataset_offset: int  # where the dataset starts in ``source``
    called_ae: str
    calling_ae: str
    peer_address: str  # "ip:port" of the peer
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str


class SpoolWriter:
    """Writes received instances into the spool, atomically and durably."""

    def __init__(self, layout: SpoolLayout, min_free: FreeSpaceRule) -> None:
        self.layout = layout
        self.min_free = min_free
        self._naming = threading.Lock()

    def has_room(self) -> bool:
        """False while free space on the spool is under ``min_free``."""
        stats = os.statvfs(self.layout.root)
        free = stats.f_bavail * stats.f_frsize
        return free >= self.min_free.required_bytes(stats.f_blocks * stats.f_frsize)

    def accept(self, item: Received) -> Path:
        """Make ``item`` durable in its final place and return that path.

        Raises
        ------
        SpoolFull
            Out of space (ENOSPC/EDQUOT, or under ``min_free``); nothing is left behind.
        UnsafeName
            A UID or AE title fails validation; nothing is written.
        """
        folder = self.layout.series_folder(
            item.called_ae, item.study_instance_uid, item.series_instance_uid
        )
        self.layout.instance_name(item.sop_instance_uid)  # validates before any write
        if not self.has_room():
            raise SpoolFull(errno.ENOSPC, "free space under min_free")
        temporary = self.layout.tmp / f"{uuid.uuid4().hex}.part"
        try:
            self._write(temporary, item)
            make_dirs_durable(folder, self.layout.root)
            final = self._rename_into(temporary, folder, item.sop_instance_uid)
            fsync_dir(folder)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, str(exc)) from exc
            raise
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return final

    def _write(self, temporary: Path, item: Received) -> None:
        header = _file_header(item)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, header)
            with open(item.source, "rb") as source:
                _copy_from(source.fileno(), item.dataset_offset, fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rename_into(self, temporary: Path, folder: Path, sop_instance_uid: str) -> Path:
        """Rename without replacing an existing copy; the lock covers our own threads."""
        with self._naming:
            copy = 0
            while (final := folder / self.layout.instance_name(sop_instance_uid, copy)).exists():
                copy += 1
            os.rename(temporary, final)
        return final


def _file_header(item: Received) -> bytes:
    """Preamble, ``DICM`` and a file meta group carrying where the instance came from.

    PS3.10 7.1: Source/Sending AE is the calling AE, Receiving AE the called
    AE; the peer's address goes in Sending Presentation Address.
    """
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = item.sop_class_uid
    meta.MediaStorageSOPInstanceUID = item.sop_instance_uid
    meta.TransferSyntaxUID = item.transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = item.calling_ae
    meta.SendingApplicationEntityTitle = item.calling_ae
    meta.ReceivingApplicationEntityTitle = item.called_ae
    meta.SendingPresentationAddress = f"dicom://{item.peer_address}"
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def _copy_from(source_fd: int, offset: int, target_fd: int) -> None:
    """Copy ``source_fd`` from ``offset`` to its end, in the kernel where possible.

    Streaming: never more than one chunk in memory, whatever the instance size.
    """
    try:
        while copied := os.copy_file_range(source_fd, target_fd, _COPY_CHUNK, offset):
            offset += copied
        return
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    os.lseek(source_fd, offset, os.SEEK_SET)
    while chunk := os.read(source_fd, _COPY_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target_fd, view) :]
