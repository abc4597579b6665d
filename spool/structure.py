"""Walk a Part 10 file's structure before pydicom parses it: cheap, iterative, bounded.

pydicom 3.0.2 trusts what a file says (RELIABILITY.md): it allocates a
declared element length before noticing the file is shorter, recurses once
per sequence level, and inflates a deflated dataset whole in memory.  This
walk checks exactly those things first, reading only element headers and
sequence items, never allocating from a declared length and never recursing:
every length must fit in the data, sequences may nest at most
:data:`MAX_DEPTH` deep, and a deflated dataset is inflated with a cap.  A file
that passes is safe to hand to pydicom; one that fails raises
:class:`Malformed` with a one-line reason for the quarantine sidecar.

The walk mirrors pydicom's reading rules (PS3.5 section 7): explicit or
implicit VR as the first element shows, items of an explicit dataset may be
implicit, and an implicit element is a sequence when the data dictionary says
so, or, for private tags, when its value starts with an item.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.datadict import DicomDictionary

from spool.inflate import Inflated, inflate_dataset
from spool.window import FileWindow, Malformed

__all__ = ["MAX_DEPTH", "MAX_ELEMENTS", "Malformed", "Structure", "survey"]

MAX_DEPTH = 64
MAX_ELEMENTS = 500_000
_SKIM_WINDOW = 64 * 1024
_FIRST_PIXEL_TAG = 0x7FE00008  # Float Pixel Data; pydicom stops before any of the three
_PREAMBLE_AND_PREFIX = 132
_MAX_META = 64 * 1024
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
# Kinds of open containers on the walk's stack.
_SEQUENCE, _ITEM_BODY, _FRAGMENTS = 0, 1, 2


@dataclass(frozen=True)
class Structure:
    """What the walk learned: where the dataset starts and where it stopped.

    ``inflated`` holds a deflated file's dataset up to its Pixel Data (bounded
    by :data:`spool.inflate.MAX_HEADER`); pydicom must read that instead of
    inflating the file itself.  ``stopped_at`` is the top-level pixel tag the
    walk stopped at, or None when the dataset has none.
    """

    dataset_offset: int
    transfer_syntax_uid: str
    stopped_at: int | None
    inflated: bytes | None = None


def survey(handle: BinaryIO, size: int) -> Structure:
    """Check ``handle`` (``size`` bytes) up to its Pixel Data; see the module docstring.

    Raises
    ------
    Malformed
        With a one-line reason: empty, truncated, not Part 10, a length past
        the end, nesting deeper than :data:`MAX_DEPTH`, a deflate bomb.
    """
    window = FileWindow(handle, size)
    offset, syntax = _walk_meta(window, size)
    if offset >= size:
        raise Malformed("truncated after the file meta: the file has no dataset")
    if syntax == _DEFLATED:
        inflated = inflate_dataset(handle, offset)
        walk = _Walk(inflated, 0, implicit=False, little=True)
        stopped = walk.run()
        return Structure(offset, syntax, stopped, inflated.header(walk.pos))
    implicit = syntax == _IMPLICIT_LITTLE
    walk = _Walk(window, offset, implicit=implicit, little=syntax != _EXPLICIT_BIG)
    return Structure(offset, syntax, walk.run())


def _walk_meta(window: FileWindow, size: int) -> tuple[int, str]:
    """The dataset offset and Transfer Syntax UID, from the explicit VR LE meta group."""
    if size == 0:
        raise Malformed("not readable as DICOM: empty file (zero bytes)")
    if size < _PREAMBLE_AND_PREFIX:
        raise Malformed(
            f"not readable as DICOM: {size} bytes, shorter than the 128-byte preamble "
            "and DICM prefix (truncated?)"
        )
    if window.get(128, 4, "prefix") != b"DICM":
        raise Malformed("not readable as DICOM: no DICM prefix after the 128-byte preamble")
    offset, syntax = _PREAMBLE_AND_PREFIX, None
    while offset + 8 <= size and window.get(offset, 2, "file meta") == b"\x02\x00":
        head = window.get(offset, 8, "the file meta")
        if head[4:6] in _LONG_VRS:
            length = struct.unpack("<I", window.get(offset + 8, 4, "the file meta"))[0]
            start = offset + 12
        else:
            length, start = struct.unpack("<H", head[6:8])[0], offset + 8
        window.require(start, length, "a file meta element")
        if head[2:4] == b"\x10\x00":  # (0002,0010) Transfer Syntax UID
            syntax = window.get(start, min(length, 64), "the file meta").rstrip(b"\x00 ")
        offset = start + length
        if offset > _PREAMBLE_AND_PREFIX + _MAX_META:
            raise Malformed("file meta group longer than 64 KiB")
    if offset + 8 > size and offset < size:
        raise Malformed("truncated in the file meta")
    if not syntax:
        raise Malformed("file meta has no Transfer Syntax UID (0002,0010)")
    return offset, syntax.decode("ascii", "replace")


class _Walk:
    """One iterative pass over a dataset's elements, a stack instead of recursion."""

    def __init__(self, data: FileWindow | Inflated, start: int, implicit: bool, little: bool):
        self.data, self.pos = data, start
        order = "<" if little else ">"
        self._implicit_header = struct.Struct(order + "HHI").unpack
        self._explicit_header = struct.Struct(order + "HH2sH").unpack
        self._long = struct.Struct(order + "I").unpack
        self._implicit_header_from = struct.Struct(order + "HHI").unpack_from
        self._long_from = struct.Struct(order + "I").unpack_from
        self.little = little
        # Open containers, innermost last: (kind, end offset or None, enclosing VR mode).
        self.stack: list[tuple[int, int | None, bool]] = []
        self.depth = self.elements = 0
        self.implicit = self._detect_implicit(start, implicit)

    def run(self) -> int | None:
        """Walk to the top-level pixel data or the end; return the pixel tag, or None."""
        while True:
            if not self.stack or self.stack[-1][0] == _ITEM_BODY:
                self._skim()
            self._close_finished()
            self.elements += 1
            if self.elements > MAX_ELEMENTS:
                raise Malformed(f"more than {MAX_ELEMENTS} elements before Pixel Data")
            if not self.stack:
                if self.data.at_end(self.pos):
                    return None
                group, element, _ = self._implicit_header(self.data.get(self.pos, 8, "an element"))
                if group << 16 | element >= _FIRST_PIXEL_TAG:
                    self._check_pixel_element()
                    return group << 16 | element
            elif self.stack[-1][0] != _ITEM_BODY:
                self._container_entry()
                continue
            self._element()

    def _skim(self) -> None:
        """The fast path: skip plain elements of the current dataset in the buffered window.

        Most of a header is short values; this loop only reads their headers.
        Anything else (a sequence, an undefined length, the pixel data, the
        window's or item's edge, a bad VR) is left to the general step, which
        also raises on whatever is wrong.
        """
        pos, implicit = self.pos, self.implicit
        buf = self.data.peek(pos, _SKIM_WINDOW)
        base, limit = pos, pos + len(buf)
        if self.stack and self.stack[-1][1] is not None:
            limit = min(limit, self.stack[-1][1])  # the item's own end
        unpack, long, dictionary = self._implicit_header_from, self._long_from, DicomDictionary
        count = 0
        while pos + 12 <= limit:
            group, element, length = unpack(buf, pos - base)
            tag = group << 16 | element
            if tag >= _FIRST_PIXEL_TAG:
                break
            if implicit:
                entry = dictionary.get(tag)
                if length == _UNDEFINED or entry is None or entry[0] == "SQ":
                    break
                end = pos + 8 + length
            else:
                vr = buf[pos - base + 4 : pos - base + 6]
                if vr in _LONG_VRS:
                    length = long(buf, pos - base + 8)[0]
                    if vr == b"SQ" or length == _UNDEFINED:
                        break
                    end = pos + 12 + length
                elif b"AA" <= vr <= b"ZZ":
                    end = pos + 8 + (length >> 16 if self.little else length & 0xFFFF)
                else:
                    break
            if end > limit:
                break
            pos, count = end, count + 1
        self.pos, self.elements = pos, self.elements + count

    def _close_finished(self) -> None:
        """Pop containers of defined length whose end the walk has reached."""
        while self.stack and self.stack[-1][1] is not None and self.pos >= self.stack[-1][1]:
            if self.pos > self.stack[-1][1]:
                raise Malformed(f"an element at offset {self.pos} overruns its sequence")
            self._pop()

    def _pop(self) -> None:
        kind, _end, implicit = self.stack.pop()
        self.implicit = implicit
        if kind == _SEQUENCE:
            self.depth -= 1

    def _container_entry(self) -> None:
        """Inside a sequence or an encapsulated value: an item, or the sequence delimiter."""
        kind, end, _ = self.stack[-1]
        group, element, length = self._implicit_header(self.data.get(self.pos, 8, "an item"))
        tag = group << 16 | element
        self.pos += 8
        if tag == _SEQUENCE_END and end is None:
            self._pop()
        elif tag != _ITEM:
            raise Malformed(
                f"expected an item at offset {self.pos - 8}, found ({group:04X},{element:04X})"
            )
        elif kind == _FRAGMENTS or length == 0:
            self._skip(length, "an item")
        else:
            item_end = None if length == _UNDEFINED else self._fits(length, "an item")
            self.stack.append((_ITEM_BODY, item_end, self.implicit))
            self.implicit = self._detect_implicit(self.pos, self.implicit)

    def _element(self) -> None:
        """One data element: skip its value, or open it as a sequence or fragments."""
        header = self.data.get(self.pos, 8, "an element header")
        group, element, length = self._implicit_header(header)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not self.stack or self.stack[-1][1] is not None:
                raise Malformed(f"item delimiter outside an item at offset {self.pos}")
            self.pos += 8
            self._pop()
            return
        vr = header[4:6]
        if self.implicit or not b"AA" <= vr <= b"ZZ":  # pydicom reads a bad VR as implicit
            self.pos += 8
            sequence = self._implicit_sequence(tag, length)
        elif vr in _LONG_VRS:
            length = self._long(self.data.get(self.pos + 8, 4, "an element header"))[0]
            self.pos += 12
            sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
        else:
            length = self._explicit_header(header)[3]
            self.pos += 8
            sequence = False
        if sequence:
            self._open_sequence(length)
        elif length == _UNDEFINED:  # encapsulated: fragments up to a sequence delimiter
            self.stack.append((_FRAGMENTS, None, self.implicit))
        else:
            self._skip(length, f"element ({group:04X},{element:04X})")

    def _open_sequence(self, length: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH} levels")
        end = None if length == _UNDEFINED else self._fits(length, "a sequence")
        self.stack.append((_SEQUENCE, end, self.implicit))

    def _implicit_sequence(self, tag: int, length: int) -> bool:
        """pydicom's rule: the dictionary's VR; for unknown tags, a value starting with an item."""
        entry = DicomDictionary.get(tag)
        if entry is not None:
            return entry[0] == "SQ"
        if length == 0:
            return False
        first = self.data.peek(self.pos, 4)
        return len(first) == 4 and self._implicit_header(first + bytes(4))[:2] == (0xFFFE, 0xE000)

    def _detect_implicit(self, start: int, assumed: bool) -> bool:
        """Implicit or explicit VR as pydicom decides, from the first element's VR bytes."""
        if assumed and self.stack:
            return True  # items of an implicit dataset stay implicit
        vr = self.data.peek(start + 4, 2)
        if len(vr) < 2:
            return assumed
        return not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)

    def _check_pixel_element(self) -> None:
        """The pixel element's declared length must fit too, though pydicom stops before it."""
        vr = self.data.get(self.pos + 4, 2, "the Pixel Data header")
        implicit = self.implicit or not b"AA" <= vr <= b"ZZ"
        if not implicit and vr not in _LONG_VRS:
            return
        header = 8 if implicit else 12
        length = self._long(self.data.get(self.pos + header - 4, 4, "the Pixel Data header"))[0]
        start = self.pos + header
        if length != _UNDEFINED and start + length > self.data.total():
            raise Malformed(
                f"truncated: Pixel Data needs {length} bytes, the {self.data.noun} has "
                f"{max(0, self.data.total() - start)}"
            )

    def _skip(self, length: int, what: str) -> None:
        self.pos = self._fits(length, what)

    def _fits(self, length: int, what: str) -> int:
        """The end offset of a value of ``length`` bytes at the walk's position, if it fits."""
        self.data.require(self.pos, length, what)
        return self.pos + length
