"""Find where the dataset starts in a DICOM Part 10 file, from the raw bytes.

The File Meta Information (group 0002) is always explicit VR little endian
(PS3.10 7.1).  Walking its elements, rather than trusting the group length,
also copes with files whose writer left the group length out.  Everything
after it is the dataset exactly as the sender encoded it.
"""

from pathlib import Path

PREAMBLE = 128
_LONG_LENGTH_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_MAX_META = 64 * 1024


def dataset_offset(path: Path) -> int:
    """Byte offset of the dataset in ``path``.

    Raises
    ------
    ValueError
        No ``DICM`` prefix, or a file meta group that runs past 64 KiB or the file.
    """
    with open(path, "rb") as handle:
        head = handle.read(PREAMBLE + 4 + _MAX_META)
    if head[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise ValueError("no DICM prefix after the 128-byte preamble")
    offset = PREAMBLE + 4
    while len(head) >= offset + 8 and head[offset : offset + 2] == b"\x02\x00":
        vr = head[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            length = int.from_bytes(head[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            offset += 8 + int.from_bytes(head[offset + 6 : offset + 8], "little")
        if offset > len(head):
            raise ValueError("file meta group runs past the end of what was read")
    return offset
