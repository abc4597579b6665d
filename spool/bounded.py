"""Parse untrusted Part 10 files with pydicom, but only after :mod:`spool.structure` passed them.

The structure walk bounds what pydicom would otherwise trust (declared
lengths, nesting depth, deflate).  pydicom then reads the header with
``defer_size``, so a large value before Pixel Data is skipped by seeking
rather than read into memory.  A deflated dataset is never handed to
pydicom's inflater: pydicom reads the header the walk already inflated,
within its cap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag

from spool.structure import Structure, survey
from spool.window import Malformed

__all__ = ["Malformed", "read_bounded"]

# Values larger than this are skipped, not read: the adapter only ever needs
# UIDs, IDs and short text from a header.
DEFER_SIZE = 64 * 1024

StopWhen = Callable[[BaseTag, str | None, int], bool]


def _at_pixels(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    # As plain ints: BaseTag's own comparisons convert their operand each call.
    return int(tag) >= 0x7FE00008


def read_bounded(
    handle: BinaryIO, stop_when: StopWhen = _at_pixels
) -> tuple[FileDataset, Structure]:
    """The header of the file open as ``handle``, read by pydicom up to ``stop_when``.

    Raises
    ------
    Malformed
        The structure walk refused the file (a one-line reason).
    Exception
        Whatever pydicom raises on a file that is structurally sound but
        still unreadable.
    """
    structure = survey(handle, os.fstat(handle.fileno()).st_size)
    if structure.inflated is None:
        handle.seek(0)
        return read_partial(handle, stop_when=stop_when, defer_size=DEFER_SIZE), structure
    return _read_inflated(handle, structure, stop_when), structure


def _read_inflated(handle: BinaryIO, structure: Structure, stop_when: StopWhen) -> FileDataset:
    """A deflated file's header from the walk's inflated bytes (Explicit VR Little Endian)."""
    handle.seek(0)
    head = handle.read(structure.dataset_offset)
    meta = read_dataset(BytesIO(head[132:]), is_implicit_VR=False, is_little_endian=True)
    ds = read_dataset(
        BytesIO(structure.inflated or b""),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=stop_when,
        defer_size=DEFER_SIZE,
    )
    file_ds = FileDataset(
        getattr(handle, "name", "<deflated>"),
        ds,
        preamble=head[:128],
        file_meta=FileMetaDataset(meta),
        is_implicit_VR=False,
        is_little_endian=True,
    )
    file_ds.set_original_encoding(False, True, ds._character_set)
    return file_ds
