"""Reading the raw structure of DICOM Part 10 files, without pydicom's decoding.

The File Meta Information (group 0002) is always explicit VR little endian
(PS3.10 7.1).  Walking its elements, rather than trusting the group length,
also copes with files whose writer left the group length out.  Everything
after it is the dataset exactly as the sender encoded it.
"""

from typing import BinaryIO

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
_FIRST_READ = 4096
_MAX_META = 64 * 1024


def dataset_offset(handle: BinaryIO) -> int:
    """Byte offset of the dataset in the file open as ``handle`` (read from its start).

    Raises
    ------
    ValueError
        No ``DICM`` prefix, or a file meta group longer than 64 KiB or the file.
    """
    handle.seek(0)
    head = handle.read(PREAMBLE + 4 + _FIRST_READ)
    if len(head) == PREAMBLE + 4 + _FIRST_READ:
        head += handle.read(_MAX_META)
    end = meta_end(head, complete=True)
    assert end is not None  # complete: the file's end ends the walk
    return end


def meta_end(head: bytes, *, complete: bool = False) -> int | None:
    """Where the file meta group ends in ``head``, a Part 10 file's first bytes; None if
    ``head`` does not reach that far yet (unless ``complete``: ``head`` is all there is).

    Raises
    ------
    ValueError
        No ``DICM`` prefix, or a file meta group longer than 64 KiB.
    """
    if len(head) < PREAMBLE + 4:
        if complete:
            raise ValueError("no DICM prefix after the 128-byte preamble")
        return None
    if head[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise ValueError("no DICM prefix after the 128-byte preamble")
    offset = PREAMBLE + 4
    while True:
        if len(head) < offset + 12 and not complete:
            return None  # the next element's header may not have arrived
        if len(head) < offset + 8 or head[offset : offset + 2] != b"\x02\x00":
            return offset
        if head[offset + 4 : offset + 6] in _LONG_LENGTH_VRS:
            offset += 12 + int.from_bytes(head[offset + 8 : offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(head[offset + 6 : offset + 8], "little")
        if offset > PREAMBLE + 4 + _MAX_META:
            raise ValueError("file meta group longer than 64 KiB")


def meta_values(head: bytes, end: int) -> dict[int, bytes]:
    """The file meta elements in ``head[132:end]`` (as :func:`meta_end` found them): tag ->
    value bytes, padding left on."""
    values = {}
    offset = PREAMBLE + 4
    while offset + 8 <= end:
        tag = int.from_bytes(head[offset : offset + 2], "little") << 16
        tag |= int.from_bytes(head[offset + 2 : offset + 4], "little")
        if head[offset + 4 : offset + 6] in _LONG_LENGTH_VRS:
            length, start = int.from_bytes(head[offset + 8 : offset + 12], "little"), offset + 12
        else:
            length, start = int.from_bytes(head[offset + 6 : offset + 8], "little"), offset + 8
        values[tag] = head[start : start + length]
        offset = start + length
    return values


def _tag_bytes(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")


def encode_meta(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    """A file meta group of ``(tag, VR, value)`` elements, in that order.

    The group length comes first, as PS3.10 7.1 requires; odd values are
    padded to even length, UIDs and binary with NUL, text with a space
    (PS3.5 6.2).
    """
    body = bytearray()
    for tag, vr, value in elements:
        if len(value) % 2:
            value += b"\x00" if vr in (b"UI", b"OB") else b" "
        body += _tag_bytes(tag) + vr
        if vr in _LONG_LENGTH_VRS:
            body += b"\x00\x00" + len(value).to_bytes(4, "little")
        else:
            body += len(value).to_bytes(2, "little")
        body += value
    group_length = _tag_bytes(0x00020000) + b"UL" + (4).to_bytes(2, "little")
    return group_length + len(body).to_bytes(4, "little") + body


def element_text(value: object) -> str | None:
    """A header value as text without DICOM padding; None when absent or empty."""
    if value is None:
        return None
    text = str(value).strip("\x00 ")
    return text or None
